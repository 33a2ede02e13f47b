"""Side by side with the official formulation, measured in one run.

    .venv/bin/python benchmarks/side_by_side.py [--quick] [--reps 3] [--steps 2] [--threads 1]

Prints a Markdown table (machine, date, torch version, git commit, then three sections):

(a) Prototype maths at the official stage-1 shapes (features 4×256×128×224, 19 prototypes):
    :func:`proda.prototypes.prototype_distance` (forward, and forward + backward),
    ``class_mean_vectors`` and ``moving_update`` against a per-class loop written like the
    official code (contained in this file: the norm of ``feat − η_k`` per class; masks per sample
    and class for the mean vectors; one sequential update per vector). Runs alternate between
    the two, the table gives medians and their ratio, and the results are asserted equal.
(b) Pseudo-label bytes per image: our soft-label store against float32 ``.npy`` files
    (C×129×257) and our hard-label store against a label PNG + colour PNG + float16 ``.npy``
    confidence (1024×2048), all written by this script from generated softmax maps (smooth random
    logit fields, about as confident as a warm-up model: mean max probability 0.85), plus the
    effect of float16 soft labels on stage 1's labels.
(c) One stage-1 step built from the library's pieces (DeepLabV2 ResNet-101, batch 4, crops
    128×256, teacher input 256×512; random tensors, no dataset), split into teacher forward,
    student forwards, backward, prototype work and the rest; the loop formulation of the
    prototype work is timed on the same tensors for comparison.

``--quick`` uses tiny shapes and a ResNet-18 model of width 16 (a smoke test, seconds); the full
run takes about 6 minutes on 2 CPU cores. Both sides run with the same ``--threads`` (default 1:
with 2 threads on a machine other jobs share, a descheduled worker thread stalls every parallel
kernel and the timings become noise). Targets: prototype maths ≥ 20× the loop, pseudo labels
≤ 20 % of the official bytes.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from proda.data.labels import IGNORE_INDEX, colorize  # noqa: E402
from proda.data.transforms import WeakParams, full2weak, label_strong_T, sample_strong_params  # noqa: E402
from proda.ema import ema_update, make_ema  # noqa: E402
from proda.losses import prototype_consistency, symmetric_ce, cross_entropy  # noqa: E402
from proda.models import DeepLabV2  # noqa: E402
from proda.prototypes import (class_mean_vectors, moving_update, prototype_distance,  # noqa: E402
                              rectification_weights, rectify_pseudo_labels)
from proda.pseudo_labels import generate_hard, generate_soft  # noqa: E402
from proda.train.optim import make_sgd, single_group  # noqa: E402
from proda.resize import up  # noqa: E402

FULL = {"proto": dict(n=4, d=256, h=128, w=224, c=19),
        "soft": dict(c=19, h=129, w=257, images=3),
        "hard": dict(c=19, h=1024, w=2048, images=2),
        "step": dict(backbone="resnet101", base_width=64, head_channels=256, batch=4,
                     crop=(128, 256), full=(256, 512), c=19)}
QUICK = {"proto": dict(n=2, d=32, h=32, w=48, c=19),
         "soft": dict(c=19, h=17, w=33, images=2),
         "hard": dict(c=19, h=64, w=128, images=2),
         "step": dict(backbone="resnet18", base_width=16, head_channels=32, batch=2,
                      crop=(32, 64), full=(64, 128), c=19)}
MOMENTUM = 1e-4


# ------------------------------------------------------------------ the official-style baseline
def loop_distance(feat: Tensor, protos: Tensor) -> Tensor:
    """Per class, the norm of ``η_k − feat`` over channels (the official distance)."""
    n, _, h, w = feat.shape
    out = -torch.ones(n, protos.shape[0], h, w, dtype=feat.dtype)
    for k in range(protos.shape[0]):
        out[:, k] = torch.norm(protos[k].reshape(-1, 1, 1).expand(-1, h, w) - feat, 2, dim=1)
    return out


def loop_class_means(feat: Tensor, logits: Tensor, min_pixels: int = 10) -> tuple[list[Tensor], list[int]]:
    """Per sample and class, masked average pooling of the features (the official mean vectors)."""
    probs = F.softmax(logits, dim=1)
    pred = F.one_hot(probs.argmax(dim=1), logits.shape[1]).permute(0, 3, 1, 2).float()
    scale = F.adaptive_avg_pool2d(pred, 1)
    vectors, ids = [], []
    for n in range(feat.shape[0]):
        for k in range(logits.shape[1]):
            if scale[n, k].item() == 0 or (pred[n, k] > 0).sum() < min_pixels:
                continue
            v = F.adaptive_avg_pool2d(feat[n] * pred[n, k], 1) / scale[n, k]
            vectors.append(v.flatten())
            ids.append(k)
    return vectors, ids


def loop_moving_update(protos: Tensor, vectors: list[Tensor], ids: list[int], momentum: float) -> Tensor:
    """One update per vector, in order, skipping vectors that sum to 0 (the official update)."""
    protos = protos.clone()
    for v, k in zip(vectors, ids):
        if v.sum().item() == 0:
            continue
        protos[k] = protos[k] * (1 - momentum) + momentum * v
    return protos


# ------------------------------------------------------------------ generated inputs
def groupnorm_features(n: int, d: int, h: int, w: int, c: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Features like DeepLabV2's ``feat`` (GroupNorm + affine, values of size 1-10) with class
    blobs; the prototypes are the class means; logits prefer each blob's class."""
    g = torch.Generator().manual_seed(seed)
    cells = (n, max(h // 8, 1), max(w // 8, 1))
    coarse = (torch.randperm(int(np.prod(cells)), generator=g) % c).view(n, 1, *cells[1:]).float()
    labels = F.interpolate(coarse, size=(h, w), mode="nearest")[:, 0].long()
    x = (torch.randn(c, d, generator=g) * 1.5)[labels].permute(0, 3, 1, 2)
    x = F.group_norm(x + torch.randn(n, d, h, w, generator=g), min(32, d))
    x = x * (torch.rand(d, generator=g) * 2.5 + 0.5).view(1, -1, 1, 1) + (torch.randn(d, generator=g) * 2).view(1, -1, 1, 1)
    flat = x.permute(0, 2, 3, 1)
    protos = torch.stack([flat[labels == k].mean(0) for k in range(c)])
    logits = F.one_hot(labels, c).permute(0, 3, 1, 2).float() * 4 + torch.randn(n, c, h, w, generator=g) * 1.5
    return x.contiguous(), protos, logits


def logit_field(c: int, h: int, w: int, seed: int) -> Tensor:
    """A smooth random logit field: coarse noise (×10), bicubic upsampling, fine noise (0.5).

    Its softmax has a mean max probability of about 0.85 (47 % of pixels above 0.95)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, c, max(h // 8, 2), max(w // 8, 2), generator=g) * 10
    z = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0]
    return z + 0.5 * torch.randn(z.shape, generator=g)


class StandIn(nn.Module):
    """A stand-in network for the label writers: image ``i`` carries ``i + 1`` in its first
    pixel and ``−(i + 1)`` in its last, so a flipped input is recognised; the output is the
    pre-generated logit field (its flipped, slightly perturbed twin for a flipped input)."""

    def __init__(self, fields: list[Tensor], flipped: list[Tensor]) -> None:
        super().__init__()
        self.fields, self.flipped = fields, flipped

    @staticmethod
    def image(i: int, h: int, w: int) -> Tensor:
        img = torch.zeros(1, h, w)
        img[0, 0, 0], img[0, -1, -1] = i + 1, -(i + 1)
        return img

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outs = []
        for img in x:
            first = float(img[0, 0, 0])
            if first > 0:
                outs.append(self.fields[int(first) - 1])
            else:  # flipped input: the first pixel holds −(i + 1)
                outs.append(self.flipped[int(-first) - 1].flip(-1))
        out = torch.stack(outs)
        return {"feat": out, "out": out}


# ------------------------------------------------------------------ timing helpers
def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def alternate(pairs: dict[str, tuple[Callable[[], Any], Callable[[], Any]]], reps: int) -> dict[str, tuple[float, float]]:
    """Median seconds of (baseline, ours) per row, one warm-up call each, runs alternating."""
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in pairs}
    for base, ours in pairs.values():
        base(), ours()
    for _ in range(reps):
        for name, fns in pairs.items():
            for slot, fn in enumerate(fns):
                _sync()
                start = time.perf_counter()
                fn()
                _sync()
                times[name][slot].append(time.perf_counter() - start)
    return {k: (statistics.median(b), statistics.median(o)) for k, (b, o) in times.items()}


class Clock:
    """Accumulates wall time per part: ``with clock("backward"): ...``."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        _sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.parts[part] += time.perf_counter() - start


# ------------------------------------------------------------------ (a) prototype maths
def prototype_section(shape: dict, reps: int) -> tuple[list[str], float]:
    n, d, h, w, c = (shape[k] for k in ("n", "d", "h", "w", "c"))
    feat, protos, logits = groupnorm_features(n, d, h, w, c)
    feat_g = feat.clone().requires_grad_(True)
    upstream = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(1))

    # equal results first (and the inputs of the update rows)
    ours_d, base_d = prototype_distance(feat, protos), loop_distance(feat, protos)
    ref = loop_distance(feat.double(), protos.double())
    err_ours, err_base = ((x.double() - ref).abs().max().item() for x in (ours_d, base_d))
    assert err_ours < 1e-4 and torch.equal(ours_d.argmin(1), ref.argmin(1)), err_ours
    torch.testing.assert_close(ours_d, base_d, atol=1e-4, rtol=1e-5)
    vec, ids = class_mean_vectors(feat, logits)
    base_vec, base_ids = loop_class_means(feat, logits)
    assert ids.tolist() == base_ids and len(base_ids) > 0
    torch.testing.assert_close(vec, torch.stack(base_vec), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moving_update(protos, vec, ids, MOMENTUM),
                               loop_moving_update(protos, base_vec, base_ids, MOMENTUM), atol=1e-6, rtol=1e-6)

    def fwd_bwd(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[], None]:
        def run() -> None:
            feat_g.grad = None
            (fn(feat_g, protos) * upstream).sum().backward()
        return run

    def grads() -> tuple[Tensor, Tensor]:
        out = []
        for fn in (loop_distance, prototype_distance):
            fwd_bwd(fn)()
            out.append(feat_g.grad.clone())
        return out[0], out[1]

    g_base, g_ours = grads()
    torch.testing.assert_close(g_ours, g_base, atol=1e-4, rtol=1e-4)

    rows = alternate({
        "distance (forward)": (lambda: _nograd(loop_distance, feat, protos),
                               lambda: _nograd(prototype_distance, feat, protos)),
        "distance (forward + backward)": (fwd_bwd(loop_distance), fwd_bwd(prototype_distance)),
        "class mean vectors": (lambda: _nograd(loop_class_means, feat, logits),
                               lambda: _nograd(class_mean_vectors, feat, logits)),
        "moving update": (lambda: loop_moving_update(protos, base_vec, base_ids, MOMENTUM),
                          lambda: moving_update(protos, vec, ids, MOMENTUM)),
    }, reps)
    # a stage-1 step: rectification weights + consistency teacher (2 forwards), the student's
    # distances with backward, the mean vectors of the batch and their updates
    weights = {"distance (forward)": 2, "distance (forward + backward)": 1, "class mean vectors": 1,
               "moving update": 1}
    step_base = sum(weights[k] * rows[k][0] for k in rows)
    step_ours = sum(weights[k] * rows[k][1] for k in rows)
    lines = [f"### (a) Prototype maths: features {n}×{d}×{h}×{w}, {c} prototypes "
             f"(median of {reps} alternating runs)", "",
             "| operation | per-class loop (ms) | ours (ms) | speed-up |", "|---|---:|---:|---:|"]
    for name, (b, o) in rows.items():
        lines.append(f"| {name} | {b * 1e3:.1f} | {o * 1e3:.1f} | {b / o:.1f}× |")
    lines.append(f"| **per stage-1 step** (2 distances, 1 distance + backward, mean vectors, update) | "
                 f"{step_base * 1e3:.1f} | {step_ours * 1e3:.1f} | **{step_base / step_ours:.1f}×** |")
    lines += ["", f"Equal results asserted. Largest distance error against float64: ours {err_ours:.1e}, "
              f"loop {err_base:.1e}; identical argmin.", ""]
    return lines, step_base / step_ours


def _nograd(fn: Callable, *args: Any) -> Any:
    with torch.no_grad():
        return fn(*args)


# ------------------------------------------------------------------ (b) pseudo-label bytes
def _npy_bytes(array: np.ndarray) -> int:
    buf = io.BytesIO()
    np.save(buf, array)
    return len(buf.getvalue())


def _png_bytes(img: Image.Image) -> int:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return len(buf.getvalue())


def _stage1_labels(q: Tensor, dist: Tensor | None, size: tuple[int, int]) -> Tensor:
    """Stage 1's label path: bilinear-AC up to the image size, ×0.25, argmax of ω·q (or of q)."""
    big = up(q[None], size)
    q4 = up(big, (size[0] // 4, size[1] // 4))
    if dist is None:
        return q4.argmax(1)
    weights = torch.softmax(-(dist - dist.amin(1, keepdim=True)), dim=1)
    return (weights * q4).argmax(1)


def bytes_section(soft: dict, hard: dict, work: Path) -> tuple[list[str], float]:
    c, h, w, k = soft["c"], soft["h"], soft["w"], soft["images"]
    fields = [logit_field(c, h, w, seed=i) for i in range(k)]
    official_soft = statistics.mean(_npy_bytes(z.softmax(0).numpy()) for z in fields)
    model = StandIn(fields, fields)
    items = [{"img": StandIn.image(i, 1, 2), "name": f"img{i}_leftImg8bit.png"} for i in range(k)]
    ours_soft = {}
    for dtype in ("float16", "float32"):
        path = generate_soft(model, items, work / f"soft_{dtype}.h5", n_class=c, progress=False, soft_dtype=dtype)
        ours_soft[dtype] = path.stat().st_size / k

    # float16 against float32 soft labels in stage 1 (synthetic distances that follow the logits)
    size = (h * 8 - 8, w * 8 - 8)  # 1024×2048 for the official 129×257
    changed_rect, changed_plain, max_err = [], [], 0.0
    for i, z in enumerate(fields[:2]):
        q32 = z.softmax(0)
        q16 = q32.half().float()
        max_err = max(max_err, (q32 - q16).abs().max().item())
        g = torch.Generator().manual_seed(100 + i)
        noise = up(torch.randn(1, c, max(h // 8, 2), max(w // 8, 2), generator=g).abs() * 4,
                   (size[0] // 4, size[1] // 4))
        zq = up(z[None], (size[0] // 4, size[1] // 4))
        dist = 0.5 * (zq.amax(1, keepdim=True) - zq) + noise
        for out, d in ((changed_rect, dist), (changed_plain, None)):
            a, b = _stage1_labels(q32, d, size), _stage1_labels(q16, d, size)
            out.append((a != b).float().mean().item())

    ch, hh, hw, hk = hard["c"], hard["h"], hard["w"], hard["images"]
    lh, lw = hh // 8 + 1, hw // 8 + 1
    hfields = [logit_field(ch, lh, lw, seed=10 + i) for i in range(hk)]
    flipped = [z + 0.3 * torch.randn(z.shape, generator=torch.Generator().manual_seed(20 + i))
               for i, z in enumerate(hfields)]
    official_hard = []
    for z, zf in zip(hfields, flipped):
        p = (up(z.softmax(0)[None], (hh, hw)) + up(zf.softmax(0)[None], (hh, hw)))[0] / 2
        conf, label = p.max(0)
        label = label.to(torch.uint8).numpy()
        official_hard.append(_png_bytes(Image.fromarray(label, mode="L"))
                             + _png_bytes(Image.fromarray(colorize(label, ch), mode="RGB"))
                             + _npy_bytes(conf.half().numpy()))
    items = [{"img": StandIn.image(i, hh, hw), "name": f"img{i}_leftImg8bit.png"} for i in range(hk)]
    path = generate_hard(StandIn(hfields, flipped), items, work / "hard.h5", n_class=ch, progress=False)
    ours_hard = path.stat().st_size / hk
    official_hard_mean = statistics.mean(official_hard)

    run_official = official_soft + 2 * official_hard_mean
    run_ours = ours_soft["float16"] + 2 * ours_hard
    pct = lambda a, b: f"{100 * a / b:.1f} %"  # noqa: E731
    lines = ["### (b) Pseudo-label bytes per image (generated softmax maps, mean of "
             f"{k} soft / {hk} hard images)", "",
             "| pseudo label | official | bytes | ours | bytes | ours / official |", "|---|---|---:|---|---:|---:|",
             f"| soft {c}×{h}×{w} | float32 `.npy` | {official_soft:,.0f} | float16 HDF5 (default) | "
             f"{ours_soft['float16']:,.0f} | {pct(ours_soft['float16'], official_soft)} |",
             f"| soft, `soft_dtype=\"float32\"` (parity) | float32 `.npy` | {official_soft:,.0f} | float32 HDF5 | "
             f"{ours_soft['float32']:,.0f} | {pct(ours_soft['float32'], official_soft)} |",
             f"| hard {hh}×{hw} | label PNG + colour PNG + float16 `.npy` | {official_hard_mean:,.0f} | "
             f"label + confidence levels HDF5 | {ours_hard:,.0f} | {pct(ours_hard, official_hard_mean)} |",
             f"| **per target image of a run** (1 soft + 2 hard) | | {run_official:,.0f} | | {run_ours:,.0f} | "
             f"**{pct(run_ours, run_official)}** |", "",
             f"float16 soft labels against float32: max |Δq| {max_err:.1e}; stage-1 labels changed "
             f"(synthetic distances): rectified {100 * statistics.mean(changed_rect):.3f} %, "
             f"unrectified {100 * statistics.mean(changed_plain):.4f} % of pixels.", ""]
    return lines, run_ours / run_official


# ------------------------------------------------------------------ (c) a stage-1 step
def step_section(cfg: dict, steps: int) -> list[str]:
    torch.manual_seed(0)
    c, batch = cfg["c"], cfg["batch"]
    (h, w), (fh, fw) = cfg["crop"], cfg["full"]
    h4, w4, full4 = h // 4, w // 4, (fh // 4, fw // 4)
    student = DeepLabV2(c, backbone=cfg["backbone"], base_width=cfg["base_width"],
                        head_channels=cfg["head_channels"])
    ema = make_ema(student)
    ema.train()  # the official teacher runs in train mode
    opt = make_sgd(single_group(student, 1e-4), momentum=0.9, weight_decay=2e-4, parity=False)
    rng, np_rng = random.Random(0), np.random.RandomState(0)
    protos = torch.randn(c, student.feat_dim) * 0.1

    def batch_data() -> dict[str, Any]:
        wps = []
        for _ in range(batch):  # crops of the full image, no rescaling
            y1, x1 = rng.randint(0, fh - h), rng.randint(0, fw - w)
            wps.append(WeakParams(resized_hw=(fh, fw), crop=(y1, y1 + h, x1, x1 + w), flip=rng.random() < 0.5))
        return {"src": torch.randn(batch, 3, h, w), "src_label": torch.randint(0, c, (batch, h, w)),
                "img": torch.randn(batch, 3, h, w), "strong": torch.randn(batch, 3, h, w),
                "full": torch.randn(batch, 3, fh, fw), "lpsoft": torch.rand(batch, c, h, w).softmax(1),
                "wp": wps, "sp": [sample_strong_params(rng, np_rng, (w, h)) for _ in range(batch)]}

    def one_step(clock: Clock, loops: Clock) -> None:
        nonlocal protos
        b = batch_data()
        student.train()
        opt.zero_grad(set_to_none=True)
        with clock("student forwards (3)"):
            out = student(b["src"])["out"]
        with clock("rest"):
            loss_src = cross_entropy(up(out, (h, w)), b["src_label"])
        with clock("backward (2)"):
            loss_src.backward()
        with clock("teacher forward"), torch.no_grad():
            e = ema(b["full"])
        with clock("rest"):
            e_feat, e_out = up(e["feat"], full4), up(e["out"], full4)
            weak_feat = full2weak(e_feat, b["wp"], scale=4)
        with clock("student forwards (3)"):
            z = student(b["img"])["out"]
        with clock("rest"):
            z = up(z, (h4, w4))
            q4 = up(b["lpsoft"], (h4, w4))
        with clock("prototype work"):
            weights = rectification_weights(weak_feat, protos, 1.0)
            labels, _ = rectify_pseudo_labels(q4, weights, ignore_index=IGNORE_INDEX)
            dist_weak = prototype_distance(weak_feat, protos)
        with clock("rest"):
            loss_tgt = symmetric_ce(z, labels, 0.1, 1.0, ignore_index=IGNORE_INDEX)
            dist_strong = label_strong_T(dist_weak, b["sp"], padding=IGNORE_INDEX, scale=4)
            mask = dist_strong != IGNORE_INDEX
        with clock("student forwards (3)"):
            g_feat = student(b["strong"])["feat"]
        with clock("rest"):
            g_feat = up(g_feat, (h4, w4))
        with clock("prototype work"):
            dist_g = prototype_distance(g_feat, protos)
        with clock("rest"):
            loss = 10 * prototype_consistency(dist_strong, dist_g, mask, 1.0) + loss_tgt
        with clock("backward (2)"):
            loss.backward()
        with clock("rest"):
            opt.step()
        with clock("prototype work"):
            vectors, ids = class_mean_vectors(e_feat, e_out)
            new_protos = moving_update(protos, vectors, ids, MOMENTUM)
        # the same prototype work (forward) in the loop formulation, on the same tensors, not
        # part of the step; the distances' backward is inside "backward (2)" (compared in (a))
        with torch.no_grad(), loops("prototype work"):
            ref_d = loop_distance(weak_feat, protos)
            loop_w = torch.softmax(-(ref_d - ref_d.amin(1, keepdim=True)), dim=1)
            rectify_pseudo_labels(q4, loop_w, ignore_index=IGNORE_INDEX)
            loop_distance(weak_feat, protos)
            loop_distance(g_feat.detach(), protos)
            bv, bi = loop_class_means(e_feat, e_out)
            loop_protos = loop_moving_update(protos, bv, bi, MOMENTUM)
        torch.testing.assert_close(dist_weak, ref_d, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(new_protos, loop_protos, atol=1e-6, rtol=1e-6)
        protos = new_protos
        with clock("rest"):
            ema_update(ema, student, 0.999)

    timed = []
    for i in range(steps):
        clock, loops = Clock(), Clock()
        one_step(clock, loops)
        if i > 0 or steps == 1:  # the first of several steps is a warm-up
            timed.append((clock.parts, loops.parts["prototype work"]))
    parts = ("teacher forward", "student forwards (3)", "backward (2)", "prototype work", "rest")
    med = {p: statistics.median(t[0][p] for t in timed) for p in parts}
    loop_proto = statistics.median(t[1] for t in timed)
    total = sum(med.values())
    total_loop = total - med["prototype work"] + loop_proto
    lines = [f"### (c) One stage-1 step: DeepLabV2 {cfg['backbone']} (width {cfg['base_width']}), batch {batch}, "
             f"crops {h}×{w}, teacher input {fh}×{fw} (median of {len(timed)} timed step(s))", "",
             "| part | ours (s) | share | with the loop prototype maths (s) |", "|---|---:|---:|---:|"]
    for p in parts:
        alt = loop_proto if p == "prototype work" else med[p]
        lines.append(f"| {p} | {med[p]:.3f} | {100 * med[p] / total:.1f} % | {alt:.3f} |")
    lines += [f"| **step** | **{total:.3f}** | 100 % | {total_loop:.3f} |", ""]
    return lines


# ------------------------------------------------------------------ header and main
def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()})"


def commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes and a ResNet-18 width-16 model")
    parser.add_argument("--reps", type=int, default=None, help="alternating runs per row in (a) (3; quick 2)")
    parser.add_argument("--steps", type=int, default=2, help="stage-1 steps in (c), the first a warm-up (2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both sides (1: steady on a shared machine; 0: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    shapes = QUICK if args.quick else FULL
    reps = args.reps or (2 if args.quick else 3)
    start = time.perf_counter()
    lines = [f"## Side by side with the official formulation{' (--quick)' if args.quick else ''}", "",
             "| | |", "|---|---|", f"| machine | {machine()} |",
             f"| date | {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} |",
             f"| torch | {torch.__version__} |", f"| commit | {commit()} |", ""]
    proto_lines, speedup = prototype_section(shapes["proto"], reps)
    with tempfile.TemporaryDirectory() as tmp:
        byte_lines, share = bytes_section(shapes["soft"], shapes["hard"], Path(tmp))
    step_lines = step_section(shapes["step"], max(args.steps, 1))
    lines += proto_lines + byte_lines + step_lines
    lines += [f"Targets: prototype maths ≥ 20× the loop: {speedup:.1f}× "
              f"({'met' if speedup >= 20 else 'not met'}); pseudo labels ≤ 20 % of the official bytes: "
              f"{100 * share:.1f} % ({'met' if share <= 0.2 else 'not met'}). "
              f"Benchmark time {time.perf_counter() - start:.0f} s.", ""]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
