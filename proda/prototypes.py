"""Class prototypes (docs/method.md §4.2 steps 5, 8, 10 and §6.3): feature-to-prototype distances,
rectification weights and rectified pseudo labels, per-image class mean vectors, the moving
and 'mean' prototype updates, prototype initialisation over a loader, and the HDF5 store.

Everything except `compute_prototypes` and the store is a pure tensor function.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from proda.data.labels import IGNORE_INDEX
from proda.files import atomic_path
from proda.integrity import damaged, one_line

MIN_PIXELS = 10
COUNT_CAP = 3000


# --------------------------------------------------------------------------- distances

_NORM_CHUNK = 16  # channels per step of the squared-norm sum (keeps the temporary cache-sized)


def _distances(x: Tensor, protos: Tensor) -> Tensor:
    """``‖x_p − η_c‖₂`` for x ``[N,D,P]`` and η ``[C,D]`` -> ``[N,C,P]``, by matrix products.

    ``d² = ‖x − c‖² − 2·x·(η − c) + (2·c·(η − c) + ‖η − c‖²)`` with ``c`` the mean prototype
    (distances do not change under a shift; centring keeps the cancellation error of the
    expanded form at the size of the distances instead of the feature norms). One
    ``C×D @ D×P`` product per image, ``‖x − c‖²`` summed over channel chunks (no ``N×D×P``
    temporary), the per-class constant in float64; negative rounding residues clamp to 0.
    """
    n, d, p = x.shape
    centre64 = protos.double().mean(0)
    shifted64 = protos.double() - centre64
    const = (2 * shifted64 @ centre64 + shifted64.square().sum(1)).to(x.dtype)  # [C]
    centre, shifted = centre64.to(x.dtype), shifted64.to(x.dtype)
    sq = x.new_zeros(n, p)
    for i in range(0, d, _NORM_CHUNK):
        part = x[:, i:i + _NORM_CHUNK] - centre[i:i + _NORM_CHUNK, None]
        sq += part.square_().sum(1)
    d2 = torch.matmul(shifted, x).mul_(-2)  # [N, C, P]
    d2 += sq.unsqueeze(1)
    d2 += const.view(1, -1, 1)
    return d2.clamp_min_(0).sqrt_()


class _EuclideanDistance(torch.autograd.Function):
    """``‖x_p − η_c‖₂`` for x ``[N,D,P]`` and η ``[C,D]`` -> ``[N,C,P]``.

    Forward: :func:`_distances` (matrix products). Backward: the exact gradient, also as matrix
    products, ``∂d/∂x = (x − η)/d``, taking 0 where ``d = 0`` (the subgradient ``torch.norm``
    uses), so a feature equal to a prototype gets a finite gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, protos: Tensor) -> Tensor:
        dist = _distances(x, protos)
        ctx.save_for_backward(x, protos, dist)
        return dist

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, protos, dist = ctx.saved_tensors
        weight = torch.where(dist > 0, grad / dist, torch.zeros_like(dist))  # [N,C,P]
        grad_x = grad_p = None
        if ctx.needs_input_grad[0]:  # Σ_c w_c (x − η_c)
            grad_x = torch.matmul(protos.t(), weight).neg_().addcmul_(x, weight.sum(1, keepdim=True))
        if ctx.needs_input_grad[1]:  # Σ_{n,p} w_c (η_c − x)
            grad_p = (protos * weight.sum((0, 2)).unsqueeze(1)
                      - torch.bmm(weight, x.transpose(1, 2)).sum(0))
        return grad_x, grad_p


def prototype_distance(feat: Tensor, prototypes: Tensor) -> Tensor:
    """Euclidean distance of every feature vector to every prototype.

    ``feat`` ``N×D×H×W``, ``prototypes`` ``C×D`` -> ``N×C×H×W`` (float32, or float64 for
    float64 input). Plain broadcasting over the batch (no hard-coded batch of 4, Q15).

    Computed by matrix products (:func:`_distances`), about 60× faster on a CPU than a loop
    over classes of ``‖feat − η_k‖``. Error against float64: ``|d − d₆₄| ≲ u·(‖f − c‖² +
    2‖f‖·‖η − c‖)/d`` (u = 2⁻²⁴ for float32, c = the mean prototype); on GroupNorm-like
    features (values of size 1–10, ``‖f‖`` up to 50, d from 14 to 50) it stays below 3e-5, as
    the float32 class loop does, i.e. a relative error below 2e-6 (tested in
    tests/test_prototypes.py).
    """
    if feat.dim() != 4 or prototypes.dim() != 2 or feat.shape[1] != prototypes.shape[1]:
        raise ValueError(f"prototype_distance: feat {tuple(feat.shape)} (N×D×H×W) does not match "
                         f"prototypes {tuple(prototypes.shape)} (C×D)")
    n, d, h, w = feat.shape
    dtype = torch.promote_types(feat.dtype, torch.float32)
    x = feat.to(dtype).reshape(n, d, h * w)
    protos = prototypes.to(device=feat.device, dtype=dtype)
    with torch.autocast(feat.device.type, enabled=False):  # never a float16 matrix product
        return _EuclideanDistance.apply(x, protos).reshape(n, -1, h, w)


def rectification_weights(feat: Tensor, prototypes: Tensor, temperature: float) -> Tensor:
    """``ω_k = softmax_k(−T·(d_k − min_j d_j))`` over classes, ``N×C×H×W`` (§4.2 step 5)."""
    return weights_from_distances(prototype_distance(feat, prototypes), temperature)


def weights_from_distances(dist: Tensor, temperature: float) -> Tensor:
    """:func:`rectification_weights` from distances ``N×C×H×W`` already computed.

    Stage 1 needs the same distances for the rectification (step 5) and as the consistency
    teacher (step 8): computing them once saves one :func:`prototype_distance` per step.
    """
    return F.softmax(-temperature * (dist - dist.amin(dim=1, keepdim=True)), dim=1)


def rectify_pseudo_labels(soft: Tensor, weights: Tensor, threshold: float = 0.0,
                          ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Rectified pseudo labels: ``r = ω·q``, ``ŷ = argmax r``, ``conf = max r / Σ r``.

    Pixels with ``conf < threshold`` get ``ignore_index``. Returns ``(labels N×H×W int64,
    conf N×H×W)``; a pixel whose ``r`` sums to 0 gets ``conf = 0`` (the official code would
    give NaN and keep the label).
    """
    if soft.shape != weights.shape:
        raise ValueError(f"rectify_pseudo_labels: soft labels {tuple(soft.shape)} and weights "
                         f"{tuple(weights.shape)} differ in shape")
    rect = weights * soft
    top, labels = rect.max(dim=1)
    total = rect.sum(dim=1)
    conf = torch.where(total > 0, top / total, torch.zeros_like(total))
    labels = labels.masked_fill(conf < threshold, ignore_index)
    return labels, conf


# --------------------------------------------------------------------------- class means

def _first_argmax(probs: Tensor) -> Tensor:
    """``probs.argmax(dim=1)`` (the first maximum on ties), reduced over a contiguous last axis:
    measured 1.6× faster on a 2-core CPU than the reduction over the strided class dimension
    (4×19×256×512: 61 ms against 99 ms), without a per-class loop."""
    return probs.movedim(1, -1).contiguous().argmax(dim=-1)


def class_mean_vectors(feat: Tensor, logits: Tensor, labels: Tensor | None = None,
                       min_pixels: int = MIN_PIXELS) -> tuple[Tensor, Tensor]:
    """Per image and class, the mean feature over the pixels predicted as that class.

    A pixel belongs to class k when ``argmax softmax(logits) = k`` (and ``labels = k`` when
    labels are given: the ``--source`` variant of §6.3, 250 never matches). Classes with fewer
    than ``min_pixels`` pixels (or none) are skipped, and so is a vector whose elements sum
    exactly to 0 (the official update ignores those). Returns ``(vectors K×D float32,
    class ids K int64)`` in the official order: sample-major, then ascending class.

    All samples and classes at once: a one-hot membership ``N×C×HW`` times the features
    ``N×HW×D`` (one batched matrix product) gives the per-class sums.
    """
    n, d, h, w = feat.shape
    if logits.dim() != 4 or logits.shape[0] != n or logits.shape[2:] != feat.shape[2:]:
        raise ValueError(f"class_mean_vectors: logits {tuple(logits.shape)} do not match feat "
                         f"{tuple(feat.shape)} (same N, H, W expected)")
    n_class = logits.shape[1]
    pred = _first_argmax(F.softmax(logits.float(), dim=1)).reshape(n, 1, h * w)
    member = torch.zeros(n, n_class, h * w, device=feat.device).scatter_(1, pred, 1.0)
    if labels is not None:
        if labels.numel() != n * h * w:
            raise ValueError(f"class_mean_vectors: labels {tuple(labels.shape)} must be N×H×W = {(n, h, w)}")
        classes = torch.arange(n_class, device=feat.device).view(1, n_class, 1)
        member = member * (labels.reshape(n, 1, h * w).to(feat.device) == classes)
    counts = member.sum(dim=2)  # [N, C]
    sums = torch.bmm(member, feat.float().reshape(n, d, h * w).transpose(1, 2))  # [N, C, D]
    means = sums / counts.clamp(min=1).unsqueeze(2)
    keep = (counts >= max(min_pixels, 1)) & (means.sum(dim=2) != 0)
    ids = torch.arange(n_class, device=feat.device).expand(n, n_class)[keep]
    return means[keep], ids


# --------------------------------------------------------------------------- updates

def _check_update(prototypes: Tensor, vectors: Tensor, ids: Tensor) -> None:
    """Shape / range checks shared by the two update rules."""
    if vectors.dim() != 2 or vectors.shape[1] != prototypes.shape[1] or ids.shape != vectors.shape[:1]:
        raise ValueError(f"prototype update: vectors {tuple(vectors.shape)} / ids {tuple(ids.shape)} "
                         f"do not fit prototypes {tuple(prototypes.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= prototypes.shape[0]):
        raise ValueError(f"prototype update: class ids must lie in [0, {prototypes.shape[0]})")


def _ranks(ids: Tensor, n_class: int) -> tuple[Tensor, Tensor]:
    """For each update, how many earlier updates hit the same class; and per-class totals."""
    onehot = F.one_hot(ids, n_class)
    rank = (onehot.cumsum(0) - onehot).gather(1, ids.unsqueeze(1)).squeeze(1)
    return rank, onehot.sum(0)


def _ema_sequence(base: Tensor, vectors: Tensor, ids: Tensor, pos: Tensor, steps: Tensor,
                  momentum: float) -> Tensor:
    """Closed form of ``steps[k]`` sequential updates ``η_k ← (1−m)η_k + m·v`` per class.

    ``pos`` is each vector's 0-based position among its class's updates (float64 maths).
    """
    decay = 1.0 - momentum
    weight = momentum * torch.pow(decay, (steps[ids] - 1 - pos).double())
    added = torch.zeros_like(base).index_add_(0, ids, weight.unsqueeze(1) * vectors)
    return base * torch.pow(decay, steps.double()).unsqueeze(1) + added


def moving_update(prototypes: Tensor, vectors: Tensor, ids: Tensor, momentum: float) -> Tensor:
    """The official moving average ``η_k ← (1−m)·η_k + m·v``, applied in the order given.

    Vectorised closed form: a class receiving ``v_1..v_j`` ends at
    ``(1−m)^j η + Σ_i m(1−m)^(j−i) v_i`` (computed in float64). Returns new prototypes.
    """
    _check_update(prototypes, vectors, ids)
    if ids.numel() == 0:
        return prototypes.clone()
    ids = ids.to(prototypes.device, torch.long)
    rank, total = _ranks(ids, prototypes.shape[0])
    new = _ema_sequence(prototypes.double(), vectors.to(prototypes.device, torch.float64),
                        ids, rank, total, momentum)
    return new.to(prototypes.dtype)


def mean_update(prototypes: Tensor, counts: Tensor, vectors: Tensor, ids: Tensor,
                cap: int = COUNT_CAP) -> tuple[Tensor, Tensor]:
    """The official 'mean' update of §6.3, applied in order, in closed form.

    Sequentially: ``η_k ← (η_k·c_k + v)/(c_k+1)``, ``c_k ← min(c_k+1, cap)``. While ``c_k <
    cap`` this is an exact running mean; once a class sits at the cap every further update is
    an EMA with weight ``1/(cap+1)``. Both phases are summed in closed form per class (no
    per-vector loop). Returns ``(prototypes, counts)``.
    """
    _check_update(prototypes, vectors, ids)
    if counts.shape != prototypes.shape[:1] or bool((counts > cap).any()):
        raise ValueError(f"mean_update: counts {tuple(counts.shape)} must be one per class and <= cap={cap}")
    if ids.numel() == 0:
        return prototypes.clone(), counts.clone()
    device = prototypes.device
    ids = ids.to(device, torch.long)
    vecs = vectors.to(device, torch.float64)
    count0 = counts.to(device, torch.long)
    rank, total = _ranks(ids, prototypes.shape[0])
    room = cap - count0                        # updates before the cap is reached
    n_mean = torch.minimum(total, room)        # running-mean updates per class
    in_mean = rank < room[ids]
    mean_sum = torch.zeros_like(prototypes, dtype=torch.float64).index_add_(
        0, ids[in_mean], vecs[in_mean])
    eta = prototypes.double()
    stepped = (eta * count0.unsqueeze(1) + mean_sum) / (count0 + n_mean).clamp(min=1).unsqueeze(1)
    eta = torch.where((n_mean > 0).unsqueeze(1), stepped, eta)
    late = ~in_mean
    eta = _ema_sequence(eta, vecs[late], ids[late], (rank - room[ids])[late], total - n_mean,
                        1.0 / (cap + 1))
    new_counts = torch.minimum(count0 + total, torch.full_like(count0, cap))
    return eta.to(prototypes.dtype), new_counts.to(counts.dtype).to(counts.device)


class PrototypeAccumulator:
    """Accumulates class mean vectors into initial prototypes (§6.3).

    Intended (``parity=False``): the exact mean of all vectors of a class (running sums in
    float64). ``parity=True`` (Q11): the official capped 'mean' update. Classes never seen
    keep the zero vector (and count 0).
    """

    def __init__(self, n_class: int, dim: int, parity: bool = False, cap: int = COUNT_CAP):
        self.n_class, self.parity, self.cap = n_class, parity, cap
        self._state = torch.zeros(n_class, dim, dtype=torch.float64)  # sums, or means (parity)
        self._counts = torch.zeros(n_class, dtype=torch.int64)

    def add(self, vectors: Tensor, ids: Tensor) -> None:
        """Add one batch of ``(vectors K×D, ids K)`` in their order."""
        vectors = vectors.detach().to("cpu", torch.float64)
        ids = ids.detach().to("cpu", torch.long)
        if self.parity:
            self._state, self._counts = mean_update(self._state, self._counts, vectors, ids, self.cap)
            return
        _check_update(self._state, vectors, ids)
        self._state.index_add_(0, ids, vectors)
        self._counts += torch.bincount(ids, minlength=self.n_class)

    def result(self) -> tuple[Tensor, Tensor]:
        """``(prototypes C×D float32, counts C int64)``."""
        if self.parity:
            return self._state.float(), self._counts.clone()
        means = self._state / self._counts.clamp(min=1).unsqueeze(1)
        return means.float(), self._counts.clone()


# --------------------------------------------------------------------------- initialisation

def _labels_at(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour downsampling of ``N×H×W`` labels to ``size`` (h, w)."""
    resized = F.interpolate(labels.unsqueeze(1).float(), size=size, mode="nearest")
    return resized.squeeze(1).long()


def compute_prototypes(model: torch.nn.Module, loader: Iterable[Mapping[str, Any]], n_class: int, *,
                       passes: int = 1, parity: bool = False, source: bool = False,
                       device: str | torch.device = "cpu", progress: bool = True,
                       min_pixels: int = MIN_PIXELS, cap: int = COUNT_CAP) -> tuple[Tensor, Tensor]:
    """Initial prototypes from a model's predictions over ``loader`` (§6.3).

    Eval mode, no grad; each batch gives ``class_mean_vectors(feat, out)`` (with the labels,
    nearest-downsampled to the feature size, when ``source``). ``passes`` repeats the loader
    (the official run uses 4, with ``parity``). Returns ``(prototypes C×D, counts C)``.
    """
    from tqdm import tqdm

    from proda.runtime import eval_mode

    acc: PrototypeAccumulator | None = None
    total = passes * len(loader) if hasattr(loader, "__len__") else None
    with eval_mode(model), tqdm(total=total, desc="prototypes", disable=not progress) as bar:
        for _ in range(passes):
            for batch in loader:
                out = model(batch["img"].to(device))
                feat, logits = out["feat"], out["out"]
                if logits.shape[1] != n_class:
                    raise ValueError(f"compute_prototypes: model predicts {logits.shape[1]} "
                                     f"classes, expected n_class={n_class}")
                labels = _labels_at(batch["label"].to(device), feat.shape[2:]) if source else None
                vectors, ids = class_mean_vectors(feat, logits, labels, min_pixels)
                if acc is None:
                    acc = PrototypeAccumulator(n_class, feat.shape[1], parity, cap)
                acc.add(vectors, ids)
                bar.update(1)
    if acc is None:
        raise ValueError("compute_prototypes: the loader yielded no batches")
    return acc.result()


# --------------------------------------------------------------------------- HDF5 store

def _checksummed(data: np.ndarray) -> dict[str, Any]:
    """Dataset options: one chunk (the arrays are a few KiB) with HDF5's Fletcher-32 checksum."""
    return {"data": data, "chunks": data.shape if data.size else None, "fletcher32": True}


def save_prototypes(path: str | os.PathLike, prototypes: Tensor, counts: Tensor,
                    attrs: Mapping[str, Any] | None = None) -> None:
    """Write ``prototypes`` (float32 C×D), ``counts`` (int64 C) and file attrs to HDF5.

    Both datasets carry a Fletcher-32 checksum, so that damaged bytes fail on reading
    (:func:`load_prototypes`). Written to a temporary file renamed into place.
    """
    path = Path(path)
    if prototypes.dim() != 2 or counts.shape != prototypes.shape[:1]:
        raise ValueError(f"{path}: prototypes {tuple(prototypes.shape)} must be C×D with one count "
                         f"per class (got counts {tuple(counts.shape)})")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
        fh.create_dataset("prototypes", **_checksummed(prototypes.detach().cpu().float().numpy()))
        fh.create_dataset("counts", **_checksummed(counts.detach().cpu().long().numpy()))
        for key, value in (attrs or {}).items():
            try:
                fh.attrs[key] = value
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}: attribute {key!r} = {value!r} cannot be stored "
                                 f"in HDF5 ({err})") from None


def _plain(value: Any) -> Any:
    """HDF5 attribute value -> plain Python (numpy scalars, bytes, small arrays)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


_DATASETS = ("prototypes", "counts")


def _read_h5(path: Path) -> tuple[dict[str, np.ndarray | None], dict[str, Any]]:
    """The datasets (None where absent) and attrs of a prototype file; h5py errors pass through."""
    with h5py.File(path, "r") as fh:
        arrays = {name: np.asarray(fh[name]) if isinstance(fh.get(name), h5py.Dataset) else None
                  for name in _DATASETS}
        return arrays, {key: _plain(value) for key, value in fh.attrs.items()}


def load_prototypes(path: str | os.PathLike) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Read a prototype file: ``(prototypes C×D float32, counts C int64, attrs)``.

    Damaged bytes (a Fletcher-32 checksum failure, truncation, not an HDF5 file) raise a one-line
    :class:`~proda.integrity.DamagedArtifactError` naming the file; non-finite prototypes a
    ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prototype file not found")
    try:
        arrays, attrs = _read_h5(path)
    except Exception as err:  # noqa: BLE001 - damaged bytes surface as many h5py error types
        raise damaged(path, one_line(err), "prototype file") from None
    for name, array in arrays.items():
        if array is None:
            raise ValueError(f"{path}: missing dataset {name!r}")
    protos = torch.from_numpy(arrays["prototypes"].astype(np.float32))
    counts = torch.from_numpy(arrays["counts"].astype(np.int64))
    if not bool(torch.isfinite(protos).all()):
        raise ValueError(f"{path}: the prototypes hold NaN or infinite values (computed by a "
                         f"diverged model?); recompute them")
    if protos.dim() != 2 or counts.shape != protos.shape[:1]:
        raise ValueError(f"{path}: dataset 'prototypes' {tuple(protos.shape)} must be C×D and "
                         f"'counts' {tuple(counts.shape)} must have C entries")
    return protos, counts, attrs
