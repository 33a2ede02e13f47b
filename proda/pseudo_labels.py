"""Soft and hard pseudo labels (reference §6.1, §6.2) and their HDF5 stores.

* soft: ``softmax(out)`` at the native logit resolution (no flip, no upsampling), one float16
  dataset ``[C,h,w]`` per image name; file attrs ``n_class``, ``kind="soft"`` and the caller's
  attrs (e.g. ``checkpoint_sha256``).
* hard: the flip-averaged, upsampled softmax ``P``; per image name a group with ``label`` uint8
  ``[H,W]`` (argmax, never 250) and ``confidence`` float16 ``[H,W]`` (max); ``kind="hard"``.
  The confidence threshold is applied when a label is read (:meth:`HardLabelStore.get`).

Writers go to ``<path>.tmp`` and ``os.replace`` it into place, so a failed run leaves nothing.
Stores open their file lazily in each process, which makes them safe in DataLoader workers.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
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

from proda.data.labels import IGNORE_INDEX, colorize
from proda.files import atomic_path
from proda.runtime import eval_mode

PathLike = str | os.PathLike
_H5_OPTS: dict[str, Any] = {"chunks": True, "compression": "gzip", "compression_opts": 4,
                            "shuffle": True}
_RESERVED_ATTRS = ("n_class", "kind")


class PseudoLabelStoreError(ValueError):
    """A pseudo-label file that is missing, unreadable or of the wrong kind."""


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
    out = model(x)["out"]
    if out.shape[1] != n_class:
        raise ValueError(f"model predicts {out.shape[1]} classes but n_class={n_class}")
    return out


def _check_name(h5: h5py.File, name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"image name {name!r} cannot be an HDF5 key (empty or contains '/')")
    if name in h5:
        raise ValueError(f"duplicate image name {name!r} in the dataset")


@contextmanager
def _atomic_h5(out_path: PathLike, kind: str, n_class: int,
               attrs: Mapping[str, Any] | None) -> Iterator[h5py.File]:
    """Open ``<out>.tmp`` for writing with the file attrs set; rename into place on success."""
    extra = dict(attrs or {})
    if clash := [k for k in _RESERVED_ATTRS if k in extra]:
        raise ValueError(f"attrs may not set the reserved keys {clash}")
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update({"n_class": int(n_class), "kind": kind, **extra})
        yield h5


def generate_soft(model: nn.Module, dataset: Dataset, out_path: PathLike, *, n_class: int,
                  batch_size: int = 4, device: str | torch.device = "cpu", num_workers: int = 0,
                  attrs: Mapping[str, Any] | None = None, progress: bool = True) -> Path:
    """Write ``softmax(out)`` of every image at the native logit resolution (§6.1).

    Full images, eval mode, no flip, no upsampling; stored as float16 ``[C,h,w]`` per image
    name. The model is moved to ``device``. ``attrs`` (e.g. ``checkpoint_sha256``) are added
    to the file attrs. Returns ``out_path``.
    """
    device = torch.device(device)
    model.to(device)
    with eval_mode(model), _atomic_h5(out_path, "soft", n_class, attrs) as h5:
        for x, names in _batches(dataset, batch_size, num_workers, device, progress, "soft labels"):
            probs = _logits(model, x, n_class).softmax(dim=1).half().cpu().numpy()
            for name, p in zip(names, probs):
                _check_name(h5, name)
                h5.create_dataset(name, data=p, **_H5_OPTS)
    return Path(out_path)


def flip_averaged_probs(model: nn.Module, x: Tensor, n_class: int, flip: bool = True) -> Tensor:
    """``P`` of §6.2: softmax, bilinear-AC upsampling to the input size, flip-TTA average.

    ``flip=False`` drops the flipped term (the intended fix of §8 Q10).
    """
    def probs(inp: Tensor) -> Tensor:
        p = _logits(model, inp, n_class).softmax(dim=1)
        return F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=True)

    p = probs(x)
    if flip:
        p = (p + probs(x.flip(-1)).flip(-1)) / 2
    return p


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
                  attrs: Mapping[str, Any] | None = None, progress: bool = True) -> Path:
    """Write hard labels ``argmax P`` and confidences ``max P`` at the input size (§6.2).

    ``P`` is :func:`flip_averaged_probs`. Per image name a group with ``label`` uint8 ``[H,W]``
    and ``confidence`` float16 ``[H,W]``; file attrs ``n_class``, ``kind="hard"``, ``flip`` and
    ``attrs``. ``png_dir`` additionally receives ``<stem>.png`` and ``<stem>_color.png`` per image.
    The model is moved to ``device``. Returns ``out_path``.
    """
    if not 0 < n_class < IGNORE_INDEX:
        raise ValueError(f"n_class must be in 1..{IGNORE_INDEX - 1} for hard labels, got {n_class}")
    device = torch.device(device)
    model.to(device)
    pngs = Path(png_dir) if png_dir is not None else None
    if pngs is not None:
        pngs.mkdir(parents=True, exist_ok=True)
    attrs = {"flip": bool(flip), **(attrs or {})}
    with eval_mode(model), _atomic_h5(out_path, "hard", n_class, attrs) as h5:
        for x, names in _batches(dataset, batch_size, num_workers, device, progress, "hard labels"):
            conf, label = flip_averaged_probs(model, x, n_class, flip).max(dim=1)
            conf, label = conf.half().cpu().numpy(), label.to(torch.uint8).cpu().numpy()
            for name, lab, cf in zip(names, label, conf):
                _check_name(h5, name)
                group = h5.create_group(name)
                group.create_dataset("label", data=lab, **_H5_OPTS)
                group.create_dataset("confidence", data=cf, **_H5_OPTS)
                if pngs is not None:
                    _save_pngs(pngs, name, lab, n_class)
    return Path(out_path)


# ------------------------------------------------------------------------------------ reading
class _Store:
    """Read-only HDF5 store, opened lazily once per process (h5py handles are not fork-safe)."""

    kind = ""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        attrs = dict(self._h5().attrs)
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
            except OSError as e:
                raise PseudoLabelStoreError(f"cannot open {self.path} as HDF5: {e}") from None
            self._pid = os.getpid()
        return self._file

    def _entry(self, name: str) -> h5py.Dataset | h5py.Group:
        h5 = self._h5()
        if "/" in name or name not in h5:
            raise MissingPseudoLabelError(
                f"{self.path} has no {self.kind} pseudo label for image {name!r}")
        return h5[name]

    def names(self) -> list[str]:
        """Image names held by the store (sorted)."""
        return sorted(self._h5().keys())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and "/" not in name and name in self._h5()

    def __len__(self) -> int:
        return len(self._h5())

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, n_class={self.n_class})"


class SoftLabelStore(_Store):
    """Soft pseudo labels: ``get(name)`` → float32 tensor ``[C,h,w]``."""

    kind = "soft"

    def get(self, name: str) -> Tensor:
        return torch.from_numpy(self._entry(name)[()].astype(np.float32))


class HardLabelStore(_Store):
    """Hard pseudo labels with their confidences; thresholded on read."""

    kind = "hard"

    def confidence(self, name: str) -> np.ndarray:
        """The float16 ``[H,W]`` confidence map."""
        return self._entry(name)["confidence"][()]

    def get(self, name: str, threshold: float = -1.0) -> np.ndarray:
        """uint8 ``[H,W]`` label with 250 where ``conf ≤ threshold`` (§6.2, Q16, Q17).

        The comparison is done in float16, as in the official loader, so 0.95 cuts at
        ``float16(0.95) = 0.9501953125``: a stored confidence of 0.9501953125 is dropped.
        Only ``threshold > 0`` reads the confidences (the intended test of Q16); the official
        ``if threshold:`` also reads them for −1, but then drops nothing (conf ≥ 0), so the
        labels are identical.
        """
        group = self._entry(name)
        label = group["label"][()]
        if threshold > 0:
            label[group["confidence"][()] <= np.float16(threshold)] = IGNORE_INDEX
        return label
