"""Peak memory and FLOPs of one step of every stage and pass at the paper preset's shapes, measured
on a CPU without allocating anything (fake tensors), and a CPU-time estimate per stage.

    .venv/bin/python benchmarks/memory.py                  # GTA5 preset (config/gta5_to_cityscapes.yaml)
    .venv/bin/python benchmarks/memory.py --preset config/synthia_to_cityscapes.yaml
    .venv/bin/python benchmarks/memory.py --rate 60e9      # skip the CPU-rate measurement

How: the project's own step code (``WarmupStage.step``, ``Stage1.step``, ``DistillStage.step``,
``generate_soft``'s logits + softmax, ``flip_averaged_probs``, ``evaluate.predict``) runs on
``FakeTensor``s (``torch._subclasses.fake_tensor.FakeTensorMode``: shapes, dtypes and strides, no
data) inside :class:`LiveMemory`, a ``TorchDispatchMode`` that sees every tensor an ATen op returns,
adds its storage's bytes once when the storage first appears and subtracts them when Python's
weakref finalizer of that storage fires (PyTorch keeps one Python object per storage). The peak of
that running sum is the peak of live tensor bytes: what ``torch.cuda.max_memory_allocated`` reports
minus the caching allocator's rounding (512-byte blocks), cuDNN/cuBLAS workspaces and buffers a kernel
allocates and frees inside itself (:func:`allocator_peak` measures that share on the CPU). Models,
optimiser state and inputs are created inside the mode, so they count; each step runs twice and the
second (steady state: SGD momentum / Adam moments exist, gradients are set to None at the start) is
reported. ``.item()`` and other reads of a value return a placeholder (there is no data).

bf16 is ``precision: bf16``: the project's autocast (``torch.autocast("cpu", bfloat16)`` here; the
CUDA op lists are similar) with float32 weights, gradients and optimiser state.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import random
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GIB = 2 ** 30
# (memory in GiB, as torch.cuda reports the card's total (the labels' "GB" are GiB, except the
# H200's 141 GB), what has it); "fits" means peak * 1.20 + 1 GiB <= 98% of it (see fits_on)
GPUS = ((16, "16 GB: V100 16GB, T4"), (24, "24 GB: RTX 3090/4090, A10"), (40, "40 GB: A100 40GB"),
        (48, "48 GB: A6000, L40S"), (80, "80 GB: A100 80GB, H100"), (131, "141 GB: H200"))
HEADROOM, CONTEXT_GIB, USABLE = 1.20, 1.0, 0.98


def fits_on(peak_bytes: float) -> str:
    """The smallest common GPU whose memory (98% of it) holds ``peak * 1.20 + 1 GiB``: kernel-internal
    temporaries the tracker cannot see (up to ~20% of the peak on the CPU, :func:`allocator_peak`),
    cuDNN workspaces, allocator fragmentation and the CUDA context."""
    need = peak_bytes * HEADROOM + CONTEXT_GIB * GIB
    for gib, name in GPUS:
        if need <= gib * GIB * USABLE:
            return name
    return "none (over 141 GB)"


# ---------------------------------------------------------------------------- the tracker
class LiveMemory(TorchDispatchMode):
    """Running sum and peak of the bytes of live tensor storages created by ATen ops in this mode.

    A storage counts once (views and in-place results share it) from the op that first returns it
    until it is freed. Works with real, fake and meta tensors. ``_local_scalar_dense`` (``.item()``,
    ``bool(t)``) returns ``placeholder`` when ``fake`` (fake tensors hold no values)."""

    def __init__(self, fake: bool = False, placeholder: float = 0.5):
        super().__init__()
        self.fake, self.placeholder = fake, placeholder
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}

    def _free(self, key: int, nbytes: int) -> None:
        if self._live.pop(key, None) is not None:
            self.current -= nbytes

    def track(self, *tensors: Any) -> None:
        """Count tensors made outside the mode (e.g. inputs)."""
        for t in tree_flatten(tensors)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)

    def _add(self, t: torch.Tensor) -> None:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. sparse or nested: not produced here
            return
        key = st._cdata
        if key in self._live:
            return
        nbytes = int(st.nbytes())
        self._live[key] = nbytes
        weakref.finalize(st, self._free, key, nbytes)
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def reset_peak(self) -> None:
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.fake and func is torch.ops.aten._local_scalar_dense.default:
            dtype = args[0].dtype
            return (bool(self.placeholder) if dtype is torch.bool else
                    int(self.placeholder * 2) if not dtype.is_floating_point else float(self.placeholder))
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out


@contextlib.contextmanager
def fake_memory() -> Iterator[LiveMemory]:
    """FakeTensorMode with a :class:`LiveMemory` inside it (it sees every op first)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), LiveMemory(fake=True) as mem:
        yield mem


# ---------------------------------------------------------------------------- shapes
def preset(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """The effective config of a preset (default: the GTA5 one), without file checks."""
    from proda.config import deep_merge, resolve

    base = resolve(*( [str(path)] if path else [str(REPO / "config" / "gta5_to_cityscapes.yaml")]), checks="schema")
    return deep_merge(base, overrides) if overrides else base


def shapes_of(cfg: Mapping[str, Any]) -> dict[str, Any]:
    d, m = cfg["data"], cfg["model"]
    return {"batch": d["batch_size"], "crop_wh": tuple(d["crop"]), "source_wh": tuple(d["source"]["size"]),
            "target_wh": tuple(d["target"]["size"]), "resize": d["resize"], "n_class": d["n_class"],
            "eval_batch": cfg["eval"]["batch_size"],
            "model": {"backbone": m["backbone"], "base_width": m["base_width"], "head_channels": m["head_channels"]}}


def _model(cfg: Mapping[str, Any], bn_clr: bool = False, checkpointing: bool = False):
    from proda.models import DeepLabV2

    return DeepLabV2(cfg["data"]["n_class"], bn_clr=bn_clr, checkpointing=checkpointing,
                     **shapes_of(cfg)["model"])


def _runtime(precision: str):
    """CPU, or (on a real device) the device new tensors go to (``with torch.device(...)``)."""
    from proda.runtime import Runtime

    return Runtime(device=torch.empty(0).device, precision=precision)


def _batches(cfg: Mapping[str, Any], kind: str, seed: int = 0) -> tuple[dict, dict]:
    """Source and target batches of the shapes a stage's streams deliver (random values)."""
    from proda.data.transforms import sample_strong_params, sample_weak_params

    sh = shapes_of(cfg)
    n, (cw, ch), C = sh["batch"], sh["crop_wh"], sh["n_class"]
    rng, np_rng = random.Random(seed), np.random.RandomState(seed)
    src = {"img": torch.randn(n, 3, ch, cw), "label": torch.randint(0, C, (n, ch, cw))}
    tgt: dict[str, Any] = {"img": torch.randn(n, 3, ch, cw)}
    tgt["weak_params"] = [sample_weak_params(rng, sh["target_wh"], sh["resize"], (cw, ch),
                                             tuple(cfg["data"]["scale_range"])) for _ in range(n)]
    tgt["img_strong"] = torch.randn(n, 3, ch, cw)
    tgt["strong_params"] = [sample_strong_params(rng, np_rng, (cw, ch)) for _ in range(n)]
    if kind == "stage1":
        tw, th = sh["target_wh"]
        tgt["img_full"] = torch.randn(n, 3, th, tw)
        tgt["lpsoft"] = torch.rand(n, C, ch, cw)
    elif kind == "distill":
        tgt["lp"] = torch.randint(0, C, (n, ch, cw))
    return src, tgt


# ---------------------------------------------------------------------------- stage steps
def warmup_stage(cfg: Mapping[str, Any], precision: str, checkpointing: bool = False):
    """``WarmupStage`` with the config's networks and optimisers (random init, no files)."""
    from proda.losses import lsgan_loss, vanilla_gan_loss
    from proda.models import FCDiscriminator
    from proda.train.optim import finetune_groups, make_sgd
    from proda.train.builders import freeze_batchnorm
    from proda.train.warmup import WarmupStage

    w, train = cfg["warmup"], cfg["train"]
    st = WarmupStage.__new__(WarmupStage)
    st.cfg, st.runtime = cfg, _runtime(precision)
    model = _model(cfg, checkpointing=checkpointing)
    st.freeze_bn = bool(w["freeze_bn"])
    if st.freeze_bn:
        freeze_batchnorm(model)
    st.student = model
    st.discriminator = FCDiscriminator(cfg["data"]["n_class"], ndf=w["d_width"])
    st.optimizers = {"G": make_sgd(finetune_groups(model, w["lr"], w["head_lr_mult"], False),
                                   momentum=train["momentum"], weight_decay=train["weight_decay"], parity=False),
                     "D": torch.optim.Adam(st.discriminator.parameters(), lr=w["d_lr"], betas=tuple(w["d_betas"]))}
    st.gan = lsgan_loss if w["gan"] == "LS" else vanilla_gan_loss
    st.adv = float(w["adv"])
    return st


def stage1_stage(cfg: Mapping[str, Any], precision: str, checkpointing: bool = False):
    """``Stage1``: the student, its EMA teacher (train mode, as configured), prototypes, SGD."""
    from proda.train.optim import make_sgd, single_group
    from proda.train.stage1 import Stage1

    s, train = cfg["stage1"], cfg["train"]
    st = Stage1.__new__(Stage1)
    # the moving prototype update (after backward and the optimiser step, on the teacher's maps that
    # are live anyway) picks pixels per class with data-dependent shapes: left out, it adds little
    st.cfg, st.runtime, st.s, st.parity = cfg, _runtime(precision), dict(s, moving_prototype=False), False
    model = _model(cfg, checkpointing=checkpointing)
    ema = _model(cfg)
    for p in ema.parameters():
        p.requires_grad_(False)
    ema.train(not s["ema_eval"])
    st.ema, st.student = ema, model
    st.prototypes_ = torch.randn(cfg["data"]["n_class"], model.feat_dim)
    st.optimizers = {"G": make_sgd(single_group(model, s["lr"]), momentum=train["momentum"],
                                   weight_decay=train["weight_decay"], parity=False)}
    return st


def distill_stage(cfg: Mapping[str, Any], precision: str, checkpointing: bool = False, stage: str = "stage2"):
    """``DistillStage``: the frozen teacher (eval mode) and the student, SGD."""
    from proda.train.distill import DistillStage
    from proda.train.optim import make_sgd, single_group

    s, train = cfg[stage], cfg["train"]
    st = DistillStage.__new__(DistillStage)
    st.cfg, st.runtime, st.name, st.s, st.parity = cfg, _runtime(precision), stage, dict(s), False
    teacher = _model(cfg, bn_clr=bool(s["ema_bn"]))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    st.teacher = teacher
    model = _model(cfg, bn_clr=bool(s["bn_clr"]), checkpointing=checkpointing)
    st.student = model
    st.optimizers = {"G": make_sgd(single_group(model, s["lr"]), momentum=train["momentum"],
                                   weight_decay=train["weight_decay"], parity=False)}
    return st


STAGES: dict[str, tuple[Callable, str]] = {"warmup": (warmup_stage, "warmup"), "stage1": (stage1_stage, "stage1"),
                                           "stage2": (distill_stage, "distill")}


def stage_step(stage: str, cfg: Mapping[str, Any], precision: str, checkpointing: bool = False
               ) -> Callable[[], Callable[[], Any]]:
    """A builder (run inside the measuring mode) returning one training step of ``stage``."""
    build, kind = STAGES[stage]

    def make() -> Callable[[], Any]:
        st = build(cfg, precision, checkpointing)
        src, tgt = _batches(cfg, kind)
        it = iter(range(1, 1 << 30))
        return lambda: st.step(src, tgt, next(it))
    return make


# ---------------------------------------------------------------------------- inference passes
def pass_step(kind: str, cfg: Mapping[str, Any], precision: str) -> Callable[[], Callable[[], Any]]:
    """Soft labels (softmax at logit resolution, float16 out), hard labels (flip-TTA average upsampled
    to the image) or evaluation (logits upsampled to the label, argmax): a batch of full target images."""
    from proda.evaluate import predict
    from proda.pseudo_labels import _logits, flip_averaged_probs

    sh = shapes_of(cfg)
    tw, th = sh["target_wh"]
    C = sh["n_class"]

    def make() -> Callable[[], Any]:
        model = _model(cfg).eval()
        rt = _runtime(precision)
        n = sh["eval_batch"] if kind == "evaluate" else sh["batch"]
        x = torch.randn(n, 3, th, tw)

        def run() -> Any:
            with torch.no_grad(), rt.autocast():
                if kind == "soft_labels":
                    return _logits(model, x, C).float().softmax(dim=1).to(torch.float16)
                if kind == "hard_labels":
                    return flip_averaged_probs(model, x, C, bool(cfg["hard_labels"]["flip"])).max(dim=1)
                return predict(model, x, size=(th, tw))
        return run
    return make


PASSES = ("soft_labels", "hard_labels", "evaluate")


# ---------------------------------------------------------------------------- measuring
def peak_bytes(make: Callable[[], Callable[[], Any]], fake: bool = True, repeats: int = 2) -> int:
    """Peak live bytes of the last of ``repeats`` calls of the step ``make()`` returns (everything
    ``make`` creates counts as live memory)."""
    ctx = fake_memory() if fake else LiveMemory()
    with ctx as mem:
        step = make()
        for _ in range(repeats):
            mem.reset_peak()
            out = step()
            del out
        return mem.peak


def allocator_peak(make: Callable[[], Callable[[], Any]]) -> tuple[int, int]:
    """Ground truth for :class:`LiveMemory` on real CPU tensors: (the tracker's peak, the peak of the
    CPU allocator's own record of allocations and frees from ``torch.profiler``'s memory timeline),
    both above the memory live before the step (a steady-state step after an untimed one). The
    allocator also sees buffers a kernel allocates internally and frees before returning."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with LiveMemory() as mem:
        step = make()
        step()
        base = mem.current
        mem.reset_peak()
        step()
        tracked = mem.peak - base
    step = make()
    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        step()
    current = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            current += size
        elif action == Action.DESTROY:
            current -= size
        peak = max(peak, current)
    return tracked, peak


def flops(make: Callable[[], Callable[[], Any]], fake: bool = True) -> int:
    """FLOPs of one call of the step (``FlopCounterMode``: convolutions and matrix products,
    forward and backward; element-wise ops are not counted)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    outer = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    with outer, LiveMemory(fake=fake):
        step = make()
        counter = FlopCounterMode(display=False)
        with counter:
            step()
    return counter.get_total_flops()


def cpu_rate(cfg: Mapping[str, Any], scale: int = 4, iters: int = 3, threads: int | None = None) -> dict[str, float]:
    """Achieved FLOP/s of this CPU on real stage-1-like work: the preset's model, one crop of 1/``scale``
    the preset's size, forward + backward + SGD step, median of ``iters`` timed steps after one untimed."""
    from torch.utils.flop_counter import FlopCounterMode

    if threads:
        torch.set_num_threads(threads)
    sh = shapes_of(cfg)
    cw, ch = (v // scale // 8 * 8 for v in sh["crop_wh"])
    torch.manual_seed(0)
    model = _model(cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x = torch.randn(1, 3, ch, cw)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        (out["out"].float().square().mean() + out["feat"].float().mean()).backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    n = counter.get_total_flops()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    return {"flops": float(n), "sec": sec, "rate": n / sec, "crop": f"{cw}x{ch}", "threads": torch.get_num_threads()}


ROWS = (("warmup", "warm-up step (G on source + target crops, D twice)", False),
        ("stage1", "stage-1 step (EMA teacher on full image, student on weak + strong crops)", False),
        ("stage1", "stage-1 step, model checkpointing=True", True),
        ("stage2", "stage-2/3 step (student on source + strong crops, teacher no-grad)", False),
        ("stage2", "stage-2/3 step, model checkpointing=True", True),
        ("soft_labels", "soft-label pass (batch of full images)", False),
        ("hard_labels", "hard-label pass (flip TTA, batch of full images)", False),
        ("evaluate", "evaluation pass (batch of full images)", False))
def device_step(make: Callable[[], Callable[[], Any]], device: str, warmup: int = 1, steps: int = 2
                ) -> dict[str, float]:
    """The same step on real tensors on ``device`` ("cuda": ``torch.cuda.max_memory_allocated``
    over the timed steps, after the untimed ones; "cpu": :class:`LiveMemory` on real tensors) and
    the median seconds of ``steps`` timed steps (CUDA synchronised around each)."""
    cuda = device.startswith("cuda")
    mem = contextlib.nullcontext() if cuda else LiveMemory()
    with torch.device(device), mem as tracker:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        step = make()
        times = []
        for i in range(warmup + steps):
            if i == warmup:
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                else:
                    tracker.reset_peak()
            t0 = time.perf_counter()
            out = step()
            if cuda:
                torch.cuda.synchronize()
            del out
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() if cuda else tracker.peak
        del step
    return {"peak": float(peak), "sec": float(np.median(times))}


def measure_device(cfg: Mapping[str, Any], device: str, rows=ROWS, warmup: int = 1, steps: int = 2,
                   say: Callable[[str], None] = print) -> tuple[list[dict], dict[str, dict]]:
    """:func:`measure_all` on a real device: rows for :func:`table` (peaks measured there) and the
    bf16 seconds per step for its GPU column. A configuration that fails (e.g. out of memory) gets
    NaN and its error is printed."""
    import gc

    out, secs = [], {}
    for key, label, ckpt in rows:
        row: dict[str, Any] = {"key": key, "label": label, "checkpointing": ckpt}
        for precision in ("fp32", "bf16"):
            make = stage_step(key, cfg, precision, ckpt) if key in STAGES else pass_step(key, cfg, precision)
            try:
                r = device_step(make, device, warmup, steps)
                row[precision] = r["peak"]
                if precision == "bf16":
                    secs[label] = {"sec": r["sec"]}
                say(f"  {label} {precision}: peak {r['peak'] / GIB:.2f} GiB, {r['sec']:.3f} s / step")
            except Exception as exc:  # noqa: BLE001 (reported, the table goes on)
                row[precision] = float("nan")
                say(f"  {label} {precision}: FAIL ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        make = stage_step(key, cfg, "fp32", ckpt) if key in STAGES else pass_step(key, cfg, "fp32")
        row["flops"] = flops(make, fake=True)
        out.append(row)
    return out, secs


# ---------------------------------------------------------------------------- the table
ITER_KEYS = {"warmup": "warmup", "stage1": "stage1", "stage2": "stage2"}


def measure_all(cfg: Mapping[str, Any], rows=ROWS, say: Callable[[str], None] = print) -> list[dict]:
    out = []
    for key, label, ckpt in rows:
        row: dict[str, Any] = {"key": key, "label": label, "checkpointing": ckpt}
        for precision in ("fp32", "bf16"):
            make = (stage_step(key, cfg, precision, ckpt) if key in STAGES else pass_step(key, cfg, precision))
            t0 = time.perf_counter()
            row[precision] = peak_bytes(make)
            say(f"  {label} {precision}: peak {row[precision] / GIB:.2f} GiB ({time.perf_counter() - t0:.1f} s)")
        make = stage_step(key, cfg, "fp32", ckpt) if key in STAGES else pass_step(key, cfg, "fp32")
        row["flops"] = flops(make, fake=True)
        say(f"  {label}: {row['flops'] / 1e12:.2f} TFLOP per step")
        out.append(row)
    return out


def iterations(cfg: Mapping[str, Any], key: str) -> int | None:
    return int(cfg[ITER_KEYS[key]]["iterations"]) if key in ITER_KEYS else None


def images(cfg: Mapping[str, Any], key: str) -> int | None:
    """Images a pass reads: Cityscapes train 2975 (soft, hard labels), val 500 (evaluation)."""
    return {"soft_labels": 2975, "hard_labels": 2975, "evaluate": 500}.get(key)


def table(rows: list[dict], cfg: Mapping[str, Any], rate: float | None, gpu: Mapping[str, dict] | None = None) -> str:
    """The Markdown table: peaks, the smallest GPU, FLOPs, the CPU-time estimate, a GPU column."""
    sh = shapes_of(cfg)
    lines = ["| stage / pass | fp32 GiB | bf16 GiB | smallest GPU (bf16) | smallest GPU (fp32) | TFLOP / step | "
             "steps | CPU days (est.) | GPU bf16 s / step, days (gpu_check) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        steps = iterations(cfg, r["key"])
        if steps is None:
            steps = -(-images(cfg, r["key"]) // (sh["eval_batch"] if r["key"] == "evaluate" else sh["batch"]))
        days = "" if not rate else f"{r['flops'] * steps / rate / 86400:,.1f}"
        g = (gpu or {}).get(r["label"])
        gpu_cell = "" if not g else f"{g['sec']:.3f} s, {g['sec'] * steps / 86400:,.1f} d"
        lines.append(f"| {r['label']} | {r['fp32'] / GIB:.2f} | {r['bf16'] / GIB:.2f} | {_fits(r['bf16'])} | "
                     f"{_fits(r['fp32'])} | {r['flops'] / 1e12:.2f} | {steps:,} | {days} | "
                     f"{gpu_cell} |")
    return "\n".join(lines)


def _fits(peak: float) -> str:
    return "(failed)" if peak != peak else fits_on(peak)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=False, timeout=20).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=str(REPO / "config" / "gta5_to_cityscapes.yaml"))
    p.add_argument("--rate", type=float, help="CPU FLOP/s to use instead of measuring it")
    p.add_argument("--threads", type=int, default=0, help="torch threads for the CPU-rate measurement")
    p.add_argument("--only", nargs="*", help="row keys to measure (default: all)")
    args = p.parse_args(argv)
    cfg = preset(args.preset)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"memory.py: preset {Path(args.preset).name}; shapes {shapes_of(cfg)}; torch {torch.__version__}; "
          f"{date}; commit {commit()}", flush=True)
    rate = args.rate
    if rate is None:
        r = cpu_rate(cfg, threads=args.threads or None)
        rate = r["rate"]
        print(f"CPU rate: {r['flops'] / 1e9:.1f} GFLOP per step of 1 crop {r['crop']}, {r['sec']:.2f} s "
              f"-> {rate / 1e9:.1f} GFLOP/s ({r['threads']} threads)", flush=True)
    rows = [r for r in ROWS if not args.only or r[0] in args.only]
    measured = measure_all(cfg, rows, say=lambda s: print(s, flush=True))
    print()
    print(table(measured, cfg, rate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
