"""``proda prune``: the run folders under ``<results>/runs`` that no manifest uses, listed or removed.

A folder is used when any ``manifest.yaml`` anywhere under the results directory (an experiment's,
a study seed's ``<experiment>/seed-<s>/``, a bound's or an ablation's ``<experiment>/<run>/``)
names it, or anything inside it, under ``stages`` or ``artifacts``; its parents are used too.
A folder a running job holds (:func:`proda.files.job_lock` on it or on anything inside it) is
never removed, whatever the manifests say.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from proda.files import LOCK_SUFFIX, LockedError, job_lock, lock_holder
from proda.registry import STAGES

PathLike = str | os.PathLike
RUN_PREFIXES = STAGES  # model folders: <stage>-<digest>


def _entries(manifest: Path) -> Iterator[str]:
    """Every path a manifest names: its ``artifacts`` and each stage's files."""
    try:
        data: Any = yaml.safe_load(manifest.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read manifest {manifest} ({' '.join(str(exc).split())}); "
                         f"nothing is pruned while a manifest is unreadable") from None
    if not isinstance(data, dict):
        raise ValueError(f"manifest {manifest} is not a mapping; nothing is pruned")
    yield from (str(a) for a in data.get("artifacts") or [])
    for entry in (data.get("stages") or {}).values():
        yield from (str(v) for v in (entry.values() if isinstance(entry, dict) else [entry]))


def used_paths(root: Path, manifests: Iterable[Path]) -> set[Path]:
    """The paths manifests name and all their parents (absolute, normalised).

    Manifests name paths relative to the results directory; an entry is also read relative to
    the folder above the manifest's folder (how manifests of seed folders were once written), so
    either convention keeps its folders.
    """
    used: set[Path] = set()
    for manifest in manifests:
        for entry in _entries(manifest):
            for base in (root, manifest.parent.parent):
                path = Path(os.path.normpath(base / entry))
                used |= {path, *path.parents}
    return used


def _run_folders(runs: Path) -> list[Path]:
    """Model folders under ``runs`` (named ``<stage>-...``), parents before children."""
    return sorted(p for p in runs.rglob("*") if p.is_dir() and p.name.split("-")[0] in RUN_PREFIXES)


def _artifact(lock: Path) -> Path:
    """The artifact a lock file belongs to (``<path>.lock`` -> ``<path>``)."""
    return lock.with_name(lock.name[:-len(LOCK_SUFFIX)])


def _inner_holder(folder: Path) -> str | None:
    """The pid holding a job lock on anything inside ``folder``; None when none."""
    return next((held for lock in folder.rglob(f"*{LOCK_SUFFIX}")
                 if (held := lock_holder(_artifact(lock))) is not None), None)


def _holder(folder: Path) -> str | None:
    """The pid holding a job lock on ``folder`` or on anything inside it; None when none."""
    return lock_holder(folder) or _inner_holder(folder)


def _remove(folder: Path) -> bool:
    """Remove ``folder`` and its lock file while holding its lock (a job starting on it meanwhile
    fails instead of writing into a folder being deleted). False when a job holds it."""
    try:
        with job_lock(folder) as lock:
            if _inner_holder(folder) is not None:
                return False
            shutil.rmtree(folder)
            lock.unlink()
    except LockedError:
        return False
    return True


def _remove_stale_locks(runs: Path) -> None:
    """Remove the lock files under ``runs`` whose artifact is gone and that nobody holds."""
    for lock in runs.rglob(f"*{LOCK_SUFFIX}"):
        artifact = _artifact(lock)
        if artifact.exists() or not lock.is_file():
            continue
        try:
            with job_lock(artifact):
                if not artifact.exists():
                    lock.unlink()
        except LockedError:
            continue


def prune(results: PathLike, delete: bool = False) -> list[Path]:
    """Top-level model folders under ``<results>/runs`` that no manifest uses (listed; removed
    with ``delete``). Folders a running job holds are reported and kept. Returns the folders
    listed (removed, with ``delete``).

    Raises ``FileNotFoundError`` for a missing results directory and ``ValueError`` when a
    manifest is unreadable or, with ``delete``, when there is no manifest at all (nothing would
    tell which folders are in use).
    """
    root = Path(os.path.abspath(results))
    if not root.is_dir():
        raise FileNotFoundError(f"results directory {root} does not exist")
    manifests = sorted(root.rglob("manifest.yaml"))
    if delete and not manifests:
        raise ValueError(f"no manifest.yaml under {root}: refusing to delete run folders that "
                         f"nothing records as used")
    used, runs = used_paths(root, manifests), root / "runs"
    unused = [f for f in _run_folders(runs) if f not in used and (f.parent in used or f.parent == runs)]
    listed: list[Path] = []
    for folder in unused:
        holder = _holder(folder)
        if holder is not None or (delete and not _remove(folder)):
            print(f"kept (a running job holds it, pid {holder or 'unknown'}): {folder}")
            continue
        print(f"{'removed' if delete else 'unused'}: {folder}")
        listed.append(folder)
    if delete and runs.is_dir():
        _remove_stale_locks(runs)
    if not unused:
        print(f"every run folder under {runs} is used by a manifest")
    return listed
