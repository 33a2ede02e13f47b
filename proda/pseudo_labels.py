"""Soft and hard pseudo labels (docs/method.md §6.1, §6.2) and their HDF5 stores.

* soft: ``softmax(out)`` at the native logit resolution (no flip, no upsampling), one dataset
  ``[C,h,w]`` per image name, float16 by default (``soft_dtype="float32"``: the official
  precision); file attrs ``n_class``, ``kind="soft"``, ``dtype`` and the caller's attrs (e.g.
  ``checkpoint_sha256``).
* hard: the flip-averaged, upsampled softmax ``P``; per image name a group with ``label`` uint8
  ``[H,W]`` (argmax, never 250) and ``level`` uint8 ``[H,W]``: how many of the file's
  ``threshold_levels`` the float16 confidence ``max P`` exceeds. Thresholding at one of those
  levels (:meth:`HardLabelStore.get`) then drops exactly the pixels the official float16
  comparison drops (Q17), at a fraction of the bytes of the float16 confidence map.

Every dataset is one chunk per image (readable alone), gzip level 9 (float data shuffled first)
and has HDF5's Fletcher-32 checksum, so a damaged file fails with a :class:`DamagedStoreError`
(a :class:`PseudoLabelStoreError` and a :class:`~proda.integrity.DamagedArtifactError`), one line
naming the file and the image, instead of returning garbage.

Probabilities are computed in float32 under every precision: the model's forward may run under
the caller's autocast, but its logits leave it, and the softmax, upsampling, flip averaging and
argmax run with autocast disabled.

Writers go to a temporary file renamed into place, so a failed run leaves nothing.
Stores open their file lazily in each process, which makes them safe in DataLoader workers.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from proda.config import THRESHOLD_LEVELS
from proda.data.labels import IGNORE_INDEX, colorize
from proda.files import atomic_path
from proda.integrity import DamagedArtifactError, damaged, one_line
from proda.runtime import eval_mode

PathLike = str | os.PathLike
_RESERVED_ATTRS = ("n_class", "kind", "dtype", "threshold_levels")
SOFT_DTYPES = ("float16", "float32")
#: Default confidence thresholds a hard-label store serves exactly: 0.50, 0.51, ..., 0.99.
DEFAULT_THRESHOLDS: tuple[float, ...] = THRESHOLD_LEVELS


def _h5_opts(data: np.ndarray) -> dict[str, Any]:
    """One chunk per image, gzip 9 (byte-shuffled for multi-byte data), Fletcher-32 checksum."""
    return {"chunks": data.shape, "compression": "gzip", "compression_opts": 9,
            "shuffle": data.dtype.itemsize > 1, "fletcher32": True}


def threshold_levels(thresholds: Sequence[float]) -> np.ndarray:
    """Sorted distinct float16 values of ``thresholds`` (each in (0, 1)), as float16."""
    values = [float(t) for t in thresholds]
    if not values or any(not 0 < t < 1 for t in values):
        raise ValueError(f"hard-label thresholds must be a non-empty list of values in (0, 1), "
                         f"got {list(thresholds)}")
    levels = np.unique(np.asarray(values, dtype=np.float16))
    if not 0 < levels[0] or not levels[-1] < 1:  # 0 < t < 1 can round to 0 or 1 in float16
        raise ValueError(f"hard-label thresholds {values} round to 0 or 1 in float16")
    return levels


class PseudoLabelStoreError(ValueError):
    """A pseudo-label file that is missing, unreadable or of the wrong kind."""


class DamagedStoreError(PseudoLabelStoreError, DamagedArtifactError):
    """A pseudo-label file whose bytes are damaged (checksum failure, truncation, not HDF5)."""


class MissingPseudoLabelError(KeyError):
    """An image name that a pseudo-label store does not hold."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


# ------------------------------------------------------------------------------------ writing
def _collate(items: Sequence[Mapping[str, Any]]) -> tuple[list[Tensor], list[str]]:
    """Keep images as a list: with native sizes a batch may mix shapes."""
    return [item["img"] for item in items], [str(item["name"]) for item in items]


def _batches(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device,
             progress: bool, desc: str) -> Iterator[tuple[Tensor, list[str]]]:
    """Yield ``(N×3×H×W tensor on device, names)``, splitting each loader batch by image size."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate)
    for imgs, names in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(imgs):
            groups.setdefault(tuple(img.shape), []).append(i)
        for idx in groups.values():
            x = torch.stack([imgs[i] for i in idx]).to(device, torch.float32)
            yield x, [names[i] for i in idx]


def _logits(model: nn.Module, x: Tensor, n_class: int) -> Tensor:
    """The model's logits (its forward under the caller's autocast, if any) as float32."""
    out = model(x)["out"]
    if out.shape[1] != n_class:
        raise ValueError(f"model predicts {out.shape[1]} classes but n_class={n_class}")
    return out.float()


@contextmanager
def _float32(device: torch.device) -> Iterator[None]:
    """Autocast disabled: the caller's autocast must not lower the precision of probabilities."""
    with torch.autocast(device.type, enabled=False):
        yield


def _check_name(h5: h5py.File, name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"image name {name!r} cannot be an HDF5 key (empty or contains '/')")
    if name in h5:
        raise ValueError(f"duplicate image name {name!r} in the dataset")


@contextmanager
def _atomic_h5(out_path: PathLike, kind: str, n_class: int, attrs: Mapping[str, Any] | None,
               own: Mapping[str, Any]) -> Iterator[h5py.File]:
    """Open a temporary file for writing with the file attrs set; rename into place on success."""
    extra = dict(attrs or {})
    if clash := [k for k in _RESERVED_ATTRS if k in extra]:
        raise ValueError(f"attrs may not set the reserved keys {clash}")
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update({"n_class": int(n_class), "kind": kind, **own, **extra})
        yield h5


def generate_soft(model: nn.Module, dataset: Dataset, out_path: PathLike, *, n_class: int,
                  batch_size: int = 4, device: str | torch.device = "cpu", num_workers: int = 0,
                  attrs: Mapping[str, Any] | None = None, progress: bool = True,
                  soft_dtype: str = "float16") -> Path:
    """Write ``softmax(out)`` of every image at the native logit resolution (§6.1).

    Full images, eval mode, no flip, no upsampling; stored as ``soft_dtype`` ``[C,h,w]`` per
    image name: ``"float16"`` (default, about a third of the official float32 ``.npy`` bytes)
    or ``"float32"`` (the official precision, for parity runs). The model is moved to
    ``device``. ``attrs`` (e.g. ``checkpoint_sha256``) are added to the file attrs. Returns
    ``out_path``.
    """
    if soft_dtype not in SOFT_DTYPES:
        raise ValueError(f"soft_dtype must be one of {SOFT_DTYPES}, got {soft_dtype!r}")
    device = torch.device(device)
    model.to(device)
    dtype = getattr(torch, soft_dtype)
    with eval_mode(model), _atomic_h5(out_path, "soft", n_class, attrs, {"dtype": soft_dtype}) as h5:
        for x, names in _batches(dataset, batch_size, num_workers, device, progress, "soft labels"):
            logits = _logits(model, x, n_class)
            with _float32(logits.device):
                probs = logits.softmax(dim=1).to(dtype).cpu().numpy()
            for name, p in zip(names, probs):
                _check_name(h5, name)
                h5.create_dataset(name, data=p, **_h5_opts(p))
    return Path(out_path)


def flip_averaged_probs(model: nn.Module, x: Tensor, n_class: int, flip: bool = True) -> Tensor:
    """``P`` of §6.2: softmax, bilinear-AC upsampling to the input size, flip-TTA average.

    ``flip=False`` drops the flipped term (the intended fix of §8 Q10). The forwards may run under
    the caller's autocast; everything after them is float32 with autocast disabled.
    """
    def probs(inp: Tensor) -> Tensor:
        logits = _logits(model, inp, n_class)
        with _float32(logits.device):
            p = logits.softmax(dim=1)
            return F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=True)

    p = probs(x)
    if flip:
        flipped = probs(x.flip(-1))
        with _float32(p.device):
            p = (p + flipped.flip(-1)) / 2
    return p


def confidence_levels(conf: Tensor, levels: np.ndarray) -> np.ndarray:
    """How many of ``levels`` (sorted float16) each float16 ``conf`` exceeds: uint8 (uint16
    for more than 255 levels).

    ``level ≤ j`` exactly where ``conf ≤ levels[j]``: the official float16 test (Q17) for the
    threshold ``levels[j]``. Float16 values are exact in float32, so the comparison is too.
    """
    bounds = torch.from_numpy(levels.astype(np.float32)).to(conf.device)
    code = torch.bucketize(conf.half().float(), bounds, right=False)  # #levels < conf
    return code.cpu().numpy().astype(np.uint8 if len(levels) < 256 else np.uint16)


def _save_pngs(png_dir: Path, name: str, label: np.ndarray, n_class: int) -> None:
    """``<stem>.png`` (mode L label) and ``<stem>_color.png`` (palette), each renamed into place."""
    stem = name[:-4] if name.endswith(".png") else name
    color = colorize(label, n_class)
    for fname, img in ((f"{stem}.png", Image.fromarray(label, mode="L")),
                       (f"{stem}_color.png", Image.fromarray(color, mode="RGB"))):
        with atomic_path(png_dir / fname) as tmp:
            img.save(tmp, format="PNG")


def generate_hard(model: nn.Module, dataset: Dataset, out_path: PathLike, *, n_class: int,
                  flip: bool = True, batch_size: int = 4, device: str | torch.device = "cpu",
                  num_workers: int = 0, png_dir: PathLike | None = None,
                  attrs: Mapping[str, Any] | None = None, progress: bool = True,
                  thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Path:
    """Write hard labels ``argmax P`` and their confidence levels at the input size (§6.2).

    ``P`` is :func:`flip_averaged_probs`. Per image name a group with ``label`` uint8 ``[H,W]``
    and ``level`` ``[H,W]`` (:func:`confidence_levels` of ``max P`` in float16 against
    ``thresholds``; uint8 up to 255 thresholds, else uint16). File attrs ``n_class``, ``kind="hard"``,
    ``flip``, ``threshold_levels`` (the float16 thresholds, ascending) and ``attrs``. The store
    serves exactly these thresholds (and ``≤ 0``: none); default 0.50, 0.51, ..., 0.99.
    ``png_dir`` additionally receives ``<stem>.png`` and ``<stem>_color.png`` per image.
    The model is moved to ``device``. Returns ``out_path``.
    """
    if not 0 < n_class < IGNORE_INDEX:
        raise ValueError(f"n_class must be in 1..{IGNORE_INDEX - 1} for hard labels, got {n_class}")
    levels = threshold_levels(thresholds)
    device = torch.device(device)
    model.to(device)
    pngs = Path(png_dir) if png_dir is not None else None
    if pngs is not None:
        pngs.mkdir(parents=True, exist_ok=True)
    own = {"flip": bool(flip), "threshold_levels": levels.astype(np.float64)}
    with eval_mode(model), _atomic_h5(out_path, "hard", n_class, attrs, own) as h5:
        for x, names in _batches(dataset, batch_size, num_workers, device, progress, "hard labels"):
            probs = flip_averaged_probs(model, x, n_class, flip)
            with _float32(probs.device):
                conf, label = probs.max(dim=1)
            level = confidence_levels(conf, levels)
            label = label.to(torch.uint8).cpu().numpy()
            for name, lab, lev in zip(names, label, level):
                _check_name(h5, name)
                group = h5.create_group(name)
                group.create_dataset("label", data=lab, **_h5_opts(lab))
                group.create_dataset("level", data=lev, **_h5_opts(lev))
                if pngs is not None:
                    _save_pngs(pngs, name, lab, n_class)
    return Path(out_path)


# ------------------------------------------------------------------------------------ reading
class _Store:
    """Read-only HDF5 store, opened lazily once per process (h5py handles are not fork-safe).

    Every read error (a damaged or truncated file, random bytes, not an HDF5 file: HDF5 checksum
    and I/O errors) becomes a one-line :class:`DamagedStoreError` naming the file (and the image).
    """

    kind = ""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        try:
            with self._reading(what="its attributes"):
                attrs = {key: _plain(value) for key, value in self._h5().attrs.items()}
        finally:
            self.close()  # validated; reopened on first access in whichever process reads
        if attrs.get("kind") != self.kind or "n_class" not in attrs:
            raise PseudoLabelStoreError(
                f"{self.path} is not a {self.kind} pseudo-label store (kind={attrs.get('kind')!r})")
        self.n_class = int(attrs["n_class"])
        self.attrs: dict[str, Any] = attrs

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            if not self.path.is_file():
                raise PseudoLabelStoreError(f"pseudo-label store {self.path} does not exist")
            try:
                self._file = h5py.File(self.path, "r")
            except Exception as e:  # noqa: BLE001 - not HDF5, or damaged beyond opening
                raise damaged(self.path, f"cannot open it as HDF5: {one_line(e)}", "pseudo-label store",
                              DamagedStoreError) from None
            self._pid = os.getpid()
        return self._file

    @contextmanager
    def _reading(self, name: str | None = None, what: str = "") -> Iterator[None]:
        """Turn h5py/OS errors inside the block into one :class:`DamagedStoreError` line naming
        the file and the image ``name`` (or ``what`` was read)."""
        try:
            yield
        except (PseudoLabelStoreError, MissingPseudoLabelError):
            raise
        except Exception as err:  # noqa: BLE001 - damaged bytes surface as many h5py error types
            what = f"image {name!r}" if name is not None else what or "its index"
            raise damaged(self.path, f"cannot read {what}: {one_line(err)}", "pseudo-label store",
                          DamagedStoreError) from None

    def _entry(self, name: str) -> h5py.Dataset | h5py.Group:
        with self._reading(name):
            h5 = self._h5()
            present = "/" not in name and name in h5
            if present:
                return h5[name]
        raise MissingPseudoLabelError(
            f"{self.path} has no {self.kind} pseudo label for image {name!r}")

    def _read(self, name: str, entry: h5py.Dataset | h5py.Group, key: str | None = None) -> np.ndarray:
        """The array of ``entry`` (or of its member ``key``), read errors as one line."""
        with self._reading(name):
            return (entry if key is None else entry[key])[()]

    def names(self) -> list[str]:
        """Image names held by the store (sorted)."""
        with self._reading():
            return sorted(self._h5().keys())

    def check_names(self, expected: Iterable[str]) -> None:
        """Raise :class:`PseudoLabelStoreError` unless the store holds exactly ``expected``.

        One line naming the file, the counts and the first missing and the first extra name
        (sorted), e.g. before training on a split the store was not made from.
        """
        want, have = set(map(str, expected)), set(self.names())
        if want == have:
            return
        missing, extra = sorted(want - have), sorted(have - want)
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the {len(want)} expected images missing "
                         f"(first: {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} images not in the split (first: {extra[0]!r})")
        raise PseudoLabelStoreError(
            f"{self.kind} pseudo-label store {self.path} ({len(have)} images) does not match the "
            f"target split: {'; '.join(parts)}; regenerate it for this split")

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or "/" in name:
            return False
        with self._reading(name):
            return name in self._h5()

    def __len__(self) -> int:
        with self._reading():
            return len(self._h5())

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, n_class={self.n_class})"


def _shortest(value: np.float16) -> str:
    """The shortest decimal that rounds to the float16 ``value`` (0.51, not 0.509765625)."""
    for digits in range(1, 8):
        if np.float16(round(float(value), digits)) == value:
            return f"{round(float(value), digits):g}"
    return f"{float(value):g}"


def _plain(value: Any) -> Any:
    """HDF5 attribute value -> plain Python (numpy scalars, bytes, str)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


class SoftLabelStore(_Store):
    """Soft pseudo labels: ``get(name)`` → float32 tensor ``[C,h,w]``."""

    kind = "soft"

    def get(self, name: str) -> Tensor:
        entry = self._entry(name)
        return torch.from_numpy(self._read(name, entry).astype(np.float32))


class HardLabelStore(_Store):
    """Hard pseudo labels with their confidence levels; thresholded on read.

    ``levels`` are the float16 thresholds the file serves exactly (attr ``threshold_levels``).
    A store written before levels existed (``confidence`` float16 per image) is read too, and
    then serves any threshold. ``threshold``: what :meth:`get` applies by default (``≤ 0``: none),
    checked against the levels when the store is opened.
    """

    kind = "hard"

    def __init__(self, path: PathLike, threshold: float = -1.0) -> None:
        super().__init__(path)
        raw = self.attrs.get("threshold_levels")
        self.levels: np.ndarray | None = (None if raw is None
                                          else np.asarray(raw, dtype=np.float64).astype(np.float16))
        self.check_threshold(threshold)
        self.threshold = float(threshold)

    def check_threshold(self, threshold: float) -> int | None:
        """Index of ``threshold`` among :attr:`levels` (compared in float16), None for ``≤ 0``.

        Raises :class:`PseudoLabelStoreError` (one line, naming the file and the config keys
        ``stage2.threshold`` / ``stage3.threshold``) for any other threshold.
        """
        if threshold <= 0 or self.levels is None:
            return None
        hits = np.flatnonzero(self.levels == np.float16(threshold))
        if not hits.size:
            values = [_shortest(v) for v in self.levels]
            shown = ", ".join(values if len(values) <= 6 else values[:2] + ["...", values[-1]])
            shown += f" ({len(values)} levels)" if len(values) > 6 else ""
            raise PseudoLabelStoreError(
                f"{self.path} serves the confidence thresholds {shown} (compared in float16) "
                f"or <= 0 (none), not {threshold:g}: set stage2.threshold / stage3.threshold to "
                f"one of them or regenerate the hard labels with that threshold")
        return int(hits[0])

    def confidence(self, name: str) -> np.ndarray:
        """float16 ``[H,W]`` confidence, rounded up to the next threshold level (1.0 above all).

        ``confidence(name) <= float16(t)`` holds exactly where the float16 confidence itself is
        ``<= float16(t)`` for every level ``t``. Legacy stores return the float16 map itself.
        """
        group = self._entry(name)
        if self.levels is None:
            return self._read(name, group, "confidence")
        ceiling = np.append(self.levels, np.float16(1.0))
        return ceiling[self._read(name, group, "level")]

    def get(self, name: str, threshold: float | None = None) -> np.ndarray:
        """uint8 ``[H,W]`` label with 250 where ``conf ≤ threshold`` (default: the store's own;
        §6.2, Q16, Q17).

        The comparison is the official float16 one, so 0.95 cuts at ``float16(0.95) =
        0.9501953125``: a confidence of 0.9501953125 is dropped. ``threshold`` must be one of
        :attr:`levels` (see :meth:`check_threshold`); ``≤ 0`` drops nothing (the official
        ``if threshold:`` also reads the confidences for −1, but then drops nothing either).
        """
        threshold = self.threshold if threshold is None else threshold
        index = self.check_threshold(threshold)
        group = self._entry(name)
        label = self._read(name, group, "label")
        if threshold > 0 and self.levels is None:
            label[self._read(name, group, "confidence") <= np.float16(threshold)] = IGNORE_INDEX
        elif index is not None:
            label[self._read(name, group, "level") <= index] = IGNORE_INDEX
        return label
