"""A GPU check, ready to run: the tiny workflow on the GPU, one step of every stage at the paper's
shapes in fp32 / bf16 / bf16 + channels_last, and a 2-process DDP run when two GPUs are visible.

    bash benchmarks/gpu_check.sh                      # on a CUDA machine (sized for < 8 minutes on one H200)
    bash benchmarks/gpu_check.sh --device cpu --tiny  # the same checks at tiny shapes on a CPU (seconds)

1. Workflow: ``snakemake --cores all --configfile config.yaml config/tiny.yaml <device override>`` end
   to end in a temporary ``--directory`` (pass/fail, wall time). ``--skip-workflow`` skips it.
2. Stage steps: warm-up, stage 1 and stage 2 (stage 3 runs the same code as stage 2) built with
   ``proda.steps.build_*`` at the paper preset's shapes: ResNet-101 (the model defaults), batch 4,
   896x512 crops from images resized around 2200 wide, the full 2048x1024 target image as the stage-1
   teacher input. The data is a generated toy-city benchmark with the official image sizes (a few
   images); the upstream artifacts are a random-init warm-up checkpoint and the soft labels,
   prototypes and hard labels computed from it. Stage 2 starts from the warm-up backbone (no SimCLR
   weights here) and keeps every pixel (threshold -1: a random teacher is never 95% sure; the
   arithmetic is the same). Each precision runs ``--warmup-steps`` untimed steps, then the median of
   ``--steps`` timed ones (the batches are loaded before the clock starts; CUDA is synchronised
   before every clock reading), with the peak memory of that configuration: CUDA
   ``max_memory_allocated`` (reset per configuration), or on a CPU the process's peak RSS (VmHWM,
   reset per configuration where Linux allows, else ``ru_maxrss``, the process-wide peak).
3. DDP: with two or more GPUs, ``python -m torch.distributed.run --standalone --nproc_per_node=2
   -m proda.cli warmup ...`` for ``--ddp-iters`` iterations at the same shapes (pass/fail, wall time).

4. Scale table (``--scale-table``): benchmarks/memory.py's modelled steps (warm-up, stage 1 with and
   without the model's ``checkpointing``, stages 2/3, the soft-label, hard-label and evaluation
   passes) on real tensors on the device, in fp32 and bf16: CUDA ``max_memory_allocated`` (on a CPU
   the live-tensor tracker of memory.py) and the bf16 seconds per step, printed as memory.py's table
   (the same columns; the GPU column filled). ``--skip-stages`` skips part 2. Only the scale table:
       bash benchmarks/gpu_check.sh --skip-workflow --skip-stages --skip-ddp --scale-table

``--tiny`` uses tiny shapes (resnet18, base width 8, 32 head channels, 96x48 images, 64x32 crops,
batch 2, as config/tiny.yaml). Prints progress as it goes and one Markdown table at the end (machine,
date, git commit) for benchmarks/README.md. Exits 1 if any part fails.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch
import yaml

STAGES = ("warmup", "stage1", "stage2")
# (label, precision, channels_last)
VARIANTS = (("fp32", "fp32", False), ("bf16", "bf16", False), ("bf16+channels_last", "bf16", True))

# The paper preset's shapes (config/gta5_to_cityscapes.yaml: every data/model key at its default),
# on a few generated images of the official sizes.
PAPER = {"toycity": {"seed": 0, "n_source": 4, "n_target_train": 4, "n_target_val": 1,
                     "source_size": [1914, 1052], "target_size": [2048, 1024]},
         "data": {"batch_size": 4, "resize": 2200, "crop": [896, 512],
                  "source": {"size": [1914, 1052]}, "target": {"size": [2048, 1024]}},
         "model": {}}
# config/tiny.yaml's shapes.
TINY = {"toycity": {"seed": 0, "n_source": 4, "n_target_train": 4, "n_target_val": 1,
                    "source_size": [96, 48], "target_size": [96, 48]},
        "data": {"batch_size": 2, "resize": 96, "crop": [64, 32],
                 "source": {"size": [96, 48]}, "target": {"size": [96, 48]}},
        "model": {"backbone": "resnet18", "base_width": 8, "head_channels": 32}}


class TimeLimit(BaseException):
    """SIGTERM (the wrapper's ``timeout``): stop, and still print the table of what ran."""


def _stop(signum: int, frame: Any) -> None:
    raise TimeLimit()


def say(*parts: Any) -> None:
    print("[gpu_check]", *parts, flush=True)


def first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# ---------------------------------------------------------------------------- machine
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit() -> str:
    head = _git("rev-parse", "--short=12", "HEAD")
    if head is None:
        return "unknown (no git checkout)"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def machine(device: str) -> str:
    torch_part = f"torch {torch.__version__}"
    if device == "cuda" and torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        gpus = f"{len(names)}x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
        driver = "?"
        if shutil.which("nvidia-smi"):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                     check=False, capture_output=True, text=True, timeout=30).stdout.split()
                driver = out[0] if out else "?"
            except (OSError, subprocess.SubprocessError):
                pass
        cudnn = torch.backends.cudnn.version()
        return (f"{gpus}, driver {driver}, CUDA {torch.version.cuda}, cuDNN {cudnn}, {torch_part}, "
                f"{os.cpu_count()} CPU cores")
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {torch.get_num_threads()} torch threads), {torch_part}"


# ---------------------------------------------------------------------------- memory
def _vmhwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Memory:
    """Peak memory of one configuration: CUDA allocated, or the process's peak resident memory."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.resettable = False
        if not cuda:  # Linux >= 4.0 resets VmHWM on writing 5 to clear_refs
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.resettable = _vmhwm_mib() is not None
            except OSError:
                self.resettable = False
        self.kind = ("CUDA max allocated" if cuda else
                     "peak RSS" if self.resettable else "process peak RSS so far (ru_maxrss)")

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self.resettable:
            Path("/proc/self/clear_refs").write_text("5")

    def peak_mib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        if self.resettable:
            return _vmhwm_mib() or 0.0
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------- configs
def overrides(shapes: dict, roots: dict[str, Path], device: str, precision: str, channels_last: bool,
              num_workers: int) -> dict:
    """The config of one measured configuration (merged over the schema defaults)."""
    data = shapes["data"]
    return {"experiment": "gpu_check", "device": device, "precision": precision, "channels_last": channels_last,
            "data": {"batch_size": data["batch_size"], "resize": data["resize"], "crop": data["crop"],
                     "num_workers": num_workers,
                     "source": {"root": str(roots["source"]), "size": data["source"]["size"]},
                     "target": {"root": str(roots["target"]), "size": data["target"]["size"]}},
            "model": dict(shapes["model"]),
            "train": {"log_every": 1},
            "stage2": {"student_init": "warmup_backbone", "threshold": -1}}


def prepare(cfg: dict, work: Path) -> dict[str, Path]:
    """A random-init warm-up checkpoint and the soft labels, prototypes and hard labels from it."""
    from proda import steps
    from proda.models import save_checkpoint
    from proda.runtime import seed_everything
    from proda.train.builders import new_model

    seed_everything(cfg["seed"])
    paths = {"warmup": work / "warmup.pt", "soft": work / "soft.h5", "protos": work / "protos.h5",
             "hard": work / "hard.h5"}
    save_checkpoint(paths["warmup"], new_model(cfg), meta={"stage": "warmup", "note": "gpu_check random init"})
    steps.soft_labels(cfg, paths["warmup"], paths["soft"])
    steps.prototypes(cfg, paths["warmup"], paths["protos"])
    steps.hard_labels(cfg, paths["warmup"], paths["hard"])
    return paths


def build(stage: str, cfg: dict, inputs: dict[str, Path]):
    from proda import steps

    if stage == "warmup":
        return steps.build_warmup(cfg)
    if stage == "stage1":
        return steps.build_stage1(cfg, inputs["warmup"], inputs["soft"], inputs["protos"])
    # stage 2 (stage 3 is the same DistillStage): the random warm-up model as the teacher
    return steps.build_distill(cfg, stage, inputs["warmup"], inputs["hard"], inputs["warmup"])


def measure(stage: str, label: str, cfg: dict, inputs: dict[str, Path], warmup_steps: int, steps_: int,
            memory: Memory) -> dict:
    """Untimed then timed steps of one stage in one precision: median seconds and peak memory."""
    cuda = memory.cuda
    job = build(stage, cfg, inputs)
    source, target = job.streams(cfg)
    memory.reset()
    times: list[float] = []
    for i in range(warmup_steps + steps_):
        src, tgt = next(source), next(target)  # loading is not timed
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        losses = job.stage.step(src, tgt, i + 1)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        timed = i >= warmup_steps
        if timed:
            times.append(seconds)
        bad = [k for k, v in (losses or {}).items() if isinstance(v, float) and math.isnan(v)]
        say(f"  {stage:7s} {label:18s} step {i + 1}/{warmup_steps + steps_} "
            f"{'timed' if timed else 'untimed'}: {seconds:.3f} s" + (f" (NaN: {', '.join(bad)})" if bad else ""))
    peak = memory.peak_mib()
    del job, source, target
    return {"sec": statistics.median(times), "peak": peak}


def release(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- workflow and DDP
def run_logged(cmd: list[str], log: Path, timeout: int, env: dict | None = None,
               cwd: Path | None = None) -> tuple[bool, float, str]:
    """Run ``cmd`` with its output in ``log``: (success, seconds, a one-line reason on failure)."""
    say("running:", " ".join(cmd))
    start = time.perf_counter()
    try:
        with open(log, "w") as fh:
            proc = subprocess.run(cmd, check=False, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                  timeout=timeout)
        ok, why = proc.returncode == 0, f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired:
        ok, why = False, f"timed out after {timeout} s"
    seconds = time.perf_counter() - start
    if not ok:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        say(f"FAILED ({why}); last lines of {log}:")
        for line in tail:
            print("    " + line, flush=True)
    return ok, seconds, "" if ok else why


def workflow(device: str, work: Path, timeout: int) -> tuple[bool, float, str]:
    """The tiny workflow end to end on ``device`` in a temporary directory."""
    folder = work / "workflow"
    folder.mkdir(parents=True, exist_ok=True)
    override = folder / "device.yaml"
    override.write_text(yaml.safe_dump({"device": device}))
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(folder),
           "--cores", "all", "--configfile", str(REPO / "config.yaml"), str(REPO / "config" / "tiny.yaml"),
           str(override)]
    ok, seconds, why = run_logged(cmd, folder / "snakemake.log", timeout, env=env)
    summary = folder / "results" / "tiny" / "report" / "summary.csv"
    if ok and not summary.is_file():
        ok, why = False, f"no {summary.relative_to(folder)}"
        say("FAILED:", why)
    return ok, seconds, why


def ddp(cfg_overrides: dict, work: Path, iterations: int, timeout: int) -> tuple[bool, float, str]:
    """``torchrun --standalone --nproc_per_node=2 -m proda.cli warmup`` for a few iterations."""
    folder = work / "ddp"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(cfg_overrides, device="cuda", warmup={"iterations": iterations},
               train={"log_every": 1, "checkpoint_every": max(1, iterations)})
    cfg["data"] = dict(cfg["data"], num_workers=2)
    config = folder / "ddp.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = folder / "warmup" / "model.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "proda.cli", "warmup", "--config", str(config), "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2))))
    ok, seconds, why = run_logged(cmd, folder / "torchrun.log", timeout, env=env, cwd=REPO)
    if ok and not out.is_file():
        ok, why = False, "no model written"
        say("FAILED:", why)
    return ok, seconds, why


def stage_checks(args: argparse.Namespace, shapes: dict, work: Path, cuda: bool, rows: list[dict]
                 ) -> tuple[bool, dict[str, Path] | None]:
    """Part 2, its table rows appended to ``rows`` as they finish: (whether anything failed, the
    dataset roots or None)."""
    from proda.config import resolve
    from proda.data.toycity import generate

    data = shapes["data"]
    say(f"part 2: stage steps at {'tiny' if args.tiny else 'paper'} shapes (batch {data['batch_size']}, "
        f"crop {data['crop']}, target images {data['target']['size']}, {shapes['model'] or 'ResNet-101'})")
    try:
        t0 = time.perf_counter()
        roots = generate(work / "toycity", **shapes["toycity"])
        say(f"  generated the toy-city data in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        base = resolve(overrides(shapes, roots, args.device, "fp32", False, args.num_workers))
        inputs = prepare(base, work)
        say(f"  prepared the warm-up checkpoint, soft labels, prototypes and hard labels in "
            f"{time.perf_counter() - t0:.1f} s")
    except Exception as exc:  # noqa: BLE001 (reported in the table)
        traceback.print_exc()
        say(f"  preparing the stage inputs: FAIL ({first_line(exc)})")
        rows.append({"check": "preparing the stage inputs", "result": f"FAIL ({first_line(exc)})"})
        return True, None
    finally:
        release(cuda)
    memory, failed = Memory(cuda), False
    for stage in STAGES:
        for label, precision, channels_last in VARIANTS:
            row: dict[str, Any] = {"check": stage, "precision": label}
            try:
                cfg = resolve(overrides(shapes, roots, args.device, precision, channels_last, args.num_workers))
                result = measure(stage, label, cfg, inputs, args.warmup_steps, args.steps, memory)
                row.update(sec=result["sec"], ips=cfg["data"]["batch_size"] / result["sec"], peak=result["peak"],
                           result="pass")
                say(f"  {stage} {label}: {result['sec']:.3f} s / iteration, peak {result['peak']:,.0f} MiB "
                    f"({memory.kind})")
            except Exception as exc:  # noqa: BLE001 (reported in the table)
                traceback.print_exc()
                failed = True
                row["result"] = f"FAIL ({first_line(exc)})"
                say(f"  {stage} {label}: FAIL ({first_line(exc)})")
            rows.append(row)
            release(cuda)
    return failed, roots


# ---------------------------------------------------------------------------- scale table
def scale_table(args: argparse.Namespace, shapes: dict) -> tuple[bool, str]:
    """Part 4: memory.py's rows measured on this device: (no configuration failed, the table)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import memory

    data = shapes["data"]
    cfg = memory.preset(None, data={"batch_size": data["batch_size"], "resize": data["resize"], "crop": data["crop"],
                                    "source": {"size": data["source"]["size"]},
                                    "target": {"size": data["target"]["size"]}},
                        model=dict(shapes["model"]), eval={"batch_size": data["batch_size"]})
    say(f"part 4: scale table on {args.device} ({memory.shapes_of(cfg)})")
    measured, secs = memory.measure_device(cfg, args.device, warmup=max(args.warmup_steps, 1), steps=args.steps,
                                           say=lambda line: say(line))
    ok = all(r[p] == r[p] for r in measured for p in ("fp32", "bf16"))  # NaN: failed
    say(f"part 4: {'pass' if ok else 'FAIL'}")
    return ok, memory.table(measured, cfg, rate=None, gpu=secs)


# ---------------------------------------------------------------------------- table
def table(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| check | precision | s / iteration | images / s | peak memory (MiB) | result |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        sec, ips, peak = r.get("sec"), r.get("ips"), r.get("peak")
        lines.append(f"| {r['check']} | {r.get('precision', '')} | {'' if sec is None else f'{sec:.3f}'} | "
                     f"{'' if ips is None else f'{ips:.2f}'} | {'' if peak is None else f'{peak:,.0f}'} | "
                     f"{r['result']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where to run (default: cuda)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (config/tiny.yaml) instead of the paper's")
    p.add_argument("--skip-workflow", action="store_true", help="skip part 1 (the tiny workflow end to end)")
    p.add_argument("--skip-ddp", action="store_true", help="skip part 3 even with two GPUs")
    p.add_argument("--skip-stages", action="store_true", help="skip part 2 (the stage steps; DDP then skips too)")
    p.add_argument("--scale-table", action="store_true",
                   help="part 4: memory.py's per-stage peak memory and step time on this device")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps per configuration (default 2)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (default 3)")
    p.add_argument("--ddp-iters", type=int, default=4, help="iterations of the DDP run (default 4)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the stage steps (default 0)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--workflow-timeout", type=int, default=300, help="seconds (default 300)")
    p.add_argument("--ddp-timeout", type=int, default=240, help="seconds (default 240)")
    p.add_argument("--work", help="working folder (default: a temporary one, removed afterwards)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup_steps < 0:
        p.error("--steps must be >= 1 and --warmup-steps >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        say("FAILED: --device cuda but torch sees no CUDA device (use --device cpu for a CPU run)")
        return 1
    cuda = args.device == "cuda"
    shapes = TINY if args.tiny else PAPER
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"GPU check ({'tiny' if args.tiny else 'paper'} shapes, device {args.device}): "
              f"{machine(args.device)}; {date}; commit {commit()}")
    say(header)
    mem_kind = Memory(cuda).kind
    keep = args.work is not None
    work = Path(args.work) if keep else Path(tempfile.mkdtemp(prefix="proda-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    failed = False
    scale = ""
    signal.signal(signal.SIGTERM, _stop)
    try:
        # 1. the tiny workflow end to end
        if args.skip_workflow:
            say("part 1 (workflow): skipped (--skip-workflow)")
        else:
            say(f"part 1: the tiny workflow end to end on {args.device}")
            ok, seconds, why = workflow(args.device, work, args.workflow_timeout)
            failed |= not ok
            rows.append({"check": f"workflow: config.yaml + config/tiny.yaml, device {args.device}",
                         "precision": "fp32",
                         "result": f"{'pass' if ok else 'FAIL (' + why + ')'}, {seconds:.1f} s"})
            say(f"part 1: {'pass' if ok else 'FAIL'} in {seconds:.1f} s")

        # 2. one step of every stage in every precision
        if args.skip_stages:
            say("part 2 (stage steps): skipped (--skip-stages)")
            roots = None
        else:
            stage_failed, roots = stage_checks(args, shapes, work, cuda, rows)
            failed |= stage_failed

        # 3. DDP on two GPUs
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if args.skip_ddp or args.skip_stages:
            say("part 3 (DDP): skipped (--skip-ddp)" if args.skip_ddp else "part 3 (DDP): skipped (--skip-stages)")
        elif roots is None:
            failed = True
            rows.append({"check": "DDP (2 processes)", "result": "FAIL (no data: see part 2)"})
        elif gpus < 2:
            say(f"part 3 (DDP): skipped ({gpus} GPU{'' if gpus == 1 else 's'} visible, 2 needed)")
            rows.append({"check": "DDP (2 processes)", "result": f"skipped ({gpus} GPU{'' if gpus == 1 else 's'})"})
        else:
            say(f"part 3: DDP warm-up, 2 processes on 2 of {gpus} GPUs, {args.ddp_iters} iterations")
            ok, seconds, why = ddp(overrides(shapes, roots, "cuda", "bf16", False, 0), work, args.ddp_iters,
                                   args.ddp_timeout)
            failed |= not ok
            rows.append({"check": f"DDP: torchrun 2 processes, warmup {args.ddp_iters} iterations",
                         "precision": "bf16",
                         "result": f"{'pass' if ok else 'FAIL (' + why + ')'}, {seconds:.1f} s"})
            say(f"part 3: {'pass' if ok else 'FAIL'} in {seconds:.1f} s")

        # 4. the scale table
        if args.scale_table:
            try:
                ok, scale = scale_table(args, shapes)
            except Exception as exc:  # noqa: BLE001 (reported in the table)
                traceback.print_exc()
                ok = False
                say(f"part 4: FAIL ({first_line(exc)})")
            failed |= not ok
            rows.append({"check": "scale table (part 4)", "precision": "fp32, bf16",
                         "result": "pass" if ok else "FAIL (see part 4)"})
    except TimeLimit:
        failed = True
        say("stopped by SIGTERM (the time limit): the table holds what finished")
        rows.append({"check": "time limit", "result": "FAIL (stopped by SIGTERM before the end)"})
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

    say(f"done in {time.perf_counter() - started:.1f} s: {'FAILED' if failed else 'all passed'}")
    print()
    print(table(rows, f"{header}; s / iteration: median of {args.steps} timed steps after "
                      f"{args.warmup_steps} untimed; peak memory: {mem_kind}"))
    print(flush=True)
    if scale:
        kind = "CUDA max allocated" if cuda else "live tensors (memory.py tracker)"
        print(f"{header}; scale table: peak memory {kind} per configuration, bf16 s / step: median of "
              f"{args.steps} after {args.warmup_steps} untimed")
        print()
        print(scale)
        print(flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
