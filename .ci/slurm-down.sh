#!/usr/bin/env bash
alive() { [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat")" != Z ]; }
pids=""
for f in /run/slurmctld.pid /run/slurmd.pid /run/munge/munged.pid; do
  [ -f "$f" ] && pids="$pids $(cat "$f")"
done
scontrol shutdown 2>/dev/null || true
[ -f /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
left=""
for _ in $(seq 1 80); do
  left=""; for p in $pids; do alive "$p" && left="$left $p"; done
  [ -z "$left" ] && break; sleep 0.25
done
for p in $left; do kill -9 "$p" 2>/dev/null || true; done
