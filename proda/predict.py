"""``proda predict``: a trained model's segmentation of your own images (any size, common types).

    proda predict --checkpoint CKPT INPUT... --out DIR [--overlay] [--probs] [--flip]

INPUT is an image file, a folder (searched recursively for :data:`IMAGE_SUFFIXES`) or a glob.

Scale policy: the model sees each image at the scale it was trained for, and its logits are
upsampled (bilinear, align_corners=True, as :func:`proda.evaluate.predict`) to the image's own size.

* default (``size=None``): the reference size ``R`` is the checkpoint's ``proda_meta.target_size``
  when it records one, else 2048×1024 (``data.target.size``: the Cityscapes size every released
  model is trained and evaluated at). An image of ``R``'s aspect ratio (within 1%) is resized to
  exactly ``R``, the evaluation's policy for Cityscapes images; any other image keeps its aspect
  ratio and is scaled to ``R``'s pixel area.
* ``size=(W, H)`` (``--size W H``): every image resized to W×H, as ``proda evaluate --size``.
* ``size="native"`` (``--size native``): no resizing, as ``proda evaluate --root`` without ``--size``.

Outputs per image, at ``DIR/<path relative to its INPUT without suffix>``: ``.png`` the label map
(mode L; Cityscapes trainIds, or labelIds with ``ids="labelids"``), ``_color.png`` the train ids in
the palette of the model's class count (:func:`proda.data.labels.colorize`), with ``overlay``
``_overlay.png`` (the colour map blended over the image) and with ``probs`` ``_conf.npy``
(float16 H×W: the probability of the predicted label). Each file is written atomically; an image
whose outputs all exist is skipped unless ``force``, so an interrupted run resumes.
"""
from __future__ import annotations

import glob
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from proda.data.base import resize_rgb, to_tensor
from proda.data.labels import N_CLASSES, colorize, raw_ids
from proda.evaluate import save_png, upsample_logits
from proda.files import atomic_path
from proda.logs import redirect_output
from proda.models.checkpoint import META_KEY, CheckpointError, build_model
from proda.runtime import Runtime, eval_mode, resolve_device

PathLike = str | os.PathLike
Size = tuple[int, int]  # (W, H)
SizeOption = Size | Sequence[int] | str | None

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
REFERENCE_SIZE: Size = (2048, 1024)
ASPECT_TOLERANCE = 0.01
IDS = ("trainids", "labelids")
PRECISIONS = ("fp32", "bf16")
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class PredictError(ValueError):
    """Input that stops the whole run (no image found, clashing outputs, a bad option)."""


@dataclass(frozen=True)
class Item:
    """One input image and the output stem it writes (relative to the output folder)."""

    source: Path
    rel: Path


@dataclass
class Summary:
    """What a run did: images written, skipped (outputs existed) and unreadable (path, reason)."""

    out_dir: Path
    written: int = 0
    skipped: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.written} written, {self.skipped} skipped (outputs exist), "
                f"{len(self.unreadable)} unreadable -> {self.out_dir}")


# ---------------------------------------------------------------------------- inputs
def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _under(path: Path, folder: Path | None) -> bool:
    return folder is not None and folder.resolve() in path.resolve().parents


def _glob_base(pattern: str) -> Path:
    """The folder part of ``pattern`` before its first wildcard."""
    parts = Path(pattern).parts
    fixed = parts[:next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    return Path(*fixed) if fixed else Path(".")


def _expand(text: str, exclude: Path | None) -> list[Item]:
    """The images of one INPUT: a file, a folder (recursive) or a glob."""
    path = Path(text)
    if path.is_file():
        return [Item(path, Path(path.stem))]
    if path.is_dir():
        inside = exclude if exclude is not None and exclude.resolve() != path.resolve() else None
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_image(p) and not _under(p, inside))
        return [Item(p, p.relative_to(path).with_suffix("")) for p in files]
    if glob.has_magic(text):
        base, items = _glob_base(text), []
        for match in map(Path, sorted(glob.glob(text, recursive=True))):
            prefix = match.relative_to(base)
            if match.is_dir():
                items += [Item(i.source, prefix / i.rel) for i in _expand(str(match), exclude)]
            elif not _under(match, exclude):
                items.append(Item(match, prefix.with_suffix("")))
        return items
    raise PredictError(f"input not found: {text}")


def output_paths(out_dir: PathLike, item: Item, *, overlay: bool = False,
                 probs: bool = False) -> dict[str, Path]:
    """The files one image writes: ``label``, ``color`` and, when asked, ``overlay``, ``probs``."""
    stem = Path(out_dir) / item.rel
    names = {"label": ".png", "color": "_color.png"}
    names |= {"overlay": "_overlay.png"} if overlay else {}
    names |= {"probs": "_conf.npy"} if probs else {}
    return {key: stem.with_name(stem.name + suffix) for key, suffix in names.items()}


def find_images(inputs: Sequence[PathLike], exclude: PathLike | None = None) -> list[Item]:
    """Every image of ``inputs`` once (first occurrence wins), outside ``exclude`` (the output
    folder, when it lies inside an input folder); an input that does not exist, or no image at
    all, is a PredictError."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    seen: dict[Path, Item] = {}
    for text in inputs:
        for item in _expand(str(text), Path(exclude) if exclude is not None else None):
            seen.setdefault(item.source.resolve(), item)
    if not seen:
        raise PredictError(f"no images found in {', '.join(map(str, inputs)) or 'the input'} "
                           f"(looked for {', '.join(IMAGE_SUFFIXES)})")
    items = list(seen.values())
    _check_clashes(items)
    return items


def _check_clashes(items: Sequence[Item]) -> None:
    """Two images whose outputs would overwrite each other (e.g. ``a.png`` and ``a.jpg``)."""
    owner: dict[Path, Item] = {}
    for item in items:
        for path in output_paths(".", item, overlay=True, probs=True).values():
            other = owner.setdefault(path, item)
            if other is not item:
                raise PredictError(f"{other.source} and {item.source} would both write {path}; "
                                   f"rename one or predict them into separate --out folders")


def _check_not_inputs(items: Sequence[Item], paths: Sequence[Mapping[str, Path]]) -> None:
    """An output that would overwrite an input image (e.g. ``--out`` the input folder itself)."""
    sources = {item.source.resolve(): item.source for item in items}
    for files in paths:
        for path in files.values():
            if path.resolve() in sources:
                raise PredictError(f"the output {path} would overwrite the input image "
                                   f"{sources[path.resolve()]}; choose another --out folder")


# ---------------------------------------------------------------------------- scale and reading
def parse_size(value: SizeOption) -> Size | str | None:
    """``None`` (auto), ``"native"`` or a (W, H) of positive ints; anything else is a PredictError."""
    if value is None or value == "native":
        return value
    if isinstance(value, str):
        value = value.replace("x", " ").split()
    try:
        w, h = (int(v) for v in value)
    except (TypeError, ValueError):
        raise PredictError(f"size must be W H (two positive integers) or 'native', got {value!r}") from None
    if w < 1 or h < 1:
        raise PredictError(f"size must be W H (two positive integers) or 'native', got {value!r}")
    return w, h


def model_input_size(native: Size, size: Size | str | None, reference: Size = REFERENCE_SIZE) -> Size:
    """The (W, H) the model sees for an image of ``native`` (W, H); see the module docstring."""
    if size == "native":
        return native
    if size is not None:
        return size
    (w, h), (rw, rh) = native, reference
    if abs((w / h) / (rw / rh) - 1) <= ASPECT_TOLERANCE:
        return reference
    scale = math.sqrt(rw * rh / (w * h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def load_image(path: PathLike) -> Image.Image:
    """An image file as upright RGB (EXIF orientation applied; 16-bit grey scaled to 8 bits,
    alpha dropped); unreadable files raise what PIL raises."""
    with Image.open(path) as im:
        im.load()
        return _to_rgb(ImageOps.exif_transpose(im))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I;16"):
        im = Image.fromarray((np.asarray(im, dtype=np.uint32) // 257).astype(np.uint8))
    elif im.mode in ("I", "F"):
        im = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8))
    return im.convert("RGB")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class _Images(Dataset):
    """Items ``{"index", "x", "rgb"}`` (``x``: the model input; ``rgb``: the native uint8 image,
    only for overlays) or ``{"index", "error"}`` for an unreadable file."""

    def __init__(self, items: Sequence[Item], size: Size | str | None, reference: Size,
                 keep_rgb: bool) -> None:
        self.items, self.size, self.reference, self.keep_rgb = list(items), size, reference, keep_rgb

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            img = load_image(self.items[i].source)
        except _READ_ERRORS as exc:
            return {"index": i, "error": _reason(exc)}
        x = to_tensor(resize_rgb(img, model_input_size(img.size, self.size, self.reference)))
        rgb = np.asarray(img) if self.keep_rgb else None
        return {"index": i, "x": x, "native": (img.height, img.width), "rgb": rgb}


def _batches(loader: DataLoader) -> Iterator[list[dict[str, Any]]]:
    """Loader batches split into groups of one model-input size (errors alone)."""
    for batch in loader:
        groups: dict[Any, list[dict[str, Any]]] = {}
        for entry in batch:
            groups.setdefault(tuple(entry["x"].shape) if "x" in entry else ("error", entry["index"]),
                              []).append(entry)
        yield from groups.values()


# ---------------------------------------------------------------------------- prediction
def label_and_confidence(logits: Tensor, flipped: Tensor | None, size: Sequence[int],
                         need_conf: bool) -> tuple[Tensor, Tensor | None]:
    """Train ids H×W and (when ``need_conf`` or flip TTA) the probability of that label.

    Logits 1×C×h×w are upsampled to ``size`` (H, W) before anything else; without flip the label
    is their argmax (exactly :func:`proda.evaluate.predict`), with flip the argmax of the mean of
    the softmax and the flipped input's flipped-back softmax (``flipped``)."""
    up = upsample_logits(logits, size)
    if flipped is None:
        label = up.argmax(dim=1)[0]
        conf = up.softmax(dim=1).amax(dim=1)[0] if need_conf else None
        return label, conf
    probs = (up.softmax(dim=1) + upsample_logits(flipped, size).flip(-1).softmax(dim=1)) / 2
    conf, label = probs.max(dim=1)
    return label[0], conf[0]


def _forward(model: nn.Module, x: Tensor, flip: bool, runtime: Runtime) -> tuple[Tensor, Tensor | None]:
    """Logits of ``x`` (and of ``x`` flipped left-right) in one forward, as float32."""
    with runtime.autocast():
        out = model(torch.cat([x, x.flip(-1)]) if flip else x)["out"].float()
    return (out[:len(x)], out[len(x):]) if flip else (out, None)


def overlay_image(rgb: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``color`` blended over ``rgb`` (both H×W×3 uint8) with weight ``alpha``."""
    mixed = rgb.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _predict_group(model: nn.Module, group: Sequence[dict[str, Any]], runtime: Runtime, flip: bool,
                   need_conf: bool) -> Iterator[tuple[dict[str, Any], np.ndarray, np.ndarray | None]]:
    """``(entry, uint8 train ids, confidence or None)`` at each entry's native size."""
    logits, flipped = _forward(model, torch.stack([e["x"] for e in group]).to(runtime.device), flip, runtime)
    for k, entry in enumerate(group):
        label, conf = label_and_confidence(logits[k:k + 1], None if flipped is None else flipped[k:k + 1],
                                           entry["native"], need_conf)
        yield entry, label.to(torch.uint8).cpu().numpy(), None if conf is None else conf.cpu().numpy()


@dataclass(frozen=True)
class _Writer:
    """Turns one prediction into its files: label map (train or label ids), colours, extras."""

    n_class: int
    id_lut: np.ndarray | None  # train id -> Cityscapes labelId, for ids="labelids"
    alpha: float

    def __call__(self, paths: Mapping[str, Path], label: np.ndarray, conf: np.ndarray | None,
                 rgb: np.ndarray | None) -> None:
        color = colorize(label, self.n_class)
        if "overlay" in paths:
            save_png(overlay_image(rgb, color, self.alpha), paths["overlay"])
        if "probs" in paths:
            with atomic_path(paths["probs"]) as tmp, open(tmp, "wb") as fh:
                np.save(fh, conf.astype(np.float16))
        save_png(color, paths["color"])
        save_png(label if self.id_lut is None else self.id_lut[label], paths["label"])


def load_predictor(checkpoint: PathLike, *, allow_pickle: bool = False) -> tuple[nn.Module, Size]:
    """The checkpoint's model and its reference size; errors are one line naming the file."""
    try:
        model, ckpt = build_model(checkpoint, allow_pickle=allow_pickle)
    except CheckpointError as exc:
        text = str(exc)
        raise PredictError(text if str(checkpoint) in text else
                           f"checkpoint {checkpoint} is not a ProDA DeepLabV2 checkpoint: {text}") from None
    if model.num_classes not in N_CLASSES:
        raise PredictError(f"checkpoint {checkpoint} has {model.num_classes} classes; "
                           f"predict knows the palettes of {', '.join(map(str, N_CLASSES))}")
    meta = ckpt.get(META_KEY)
    reference = meta.get("target_size") if isinstance(meta, Mapping) else None
    return model, tuple(reference) if reference else REFERENCE_SIZE


def _runtime(device: str | torch.device, precision: str) -> Runtime:
    if precision not in PRECISIONS:
        raise PredictError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    try:
        return Runtime(device=resolve_device(device), precision=precision)
    except RuntimeError as exc:
        raise PredictError(str(exc)) from None


def _check_options(ids: str, batch_size: int, alpha: float) -> None:
    if ids not in IDS:
        raise PredictError(f"ids must be one of {', '.join(IDS)}, got {ids!r}")
    if batch_size < 1 or not 0 <= alpha <= 1:
        raise PredictError(f"need batch_size >= 1 and 0 <= alpha <= 1, got {batch_size}, {alpha}")


def _skip_unreadable(summary: Summary, source: Path, reason: str) -> None:
    summary.unreadable.append((str(source), reason))
    tqdm.write(f"proda predict: skipping unreadable {source}: {reason}", file=sys.stderr)


def predict_images(checkpoint: PathLike, inputs: Sequence[PathLike] | PathLike, out_dir: PathLike, *,
                   size: SizeOption = None, ids: str = "trainids", flip: bool = False,
                   overlay: bool = False, probs: bool = False, batch_size: int = 1,
                   device: str | torch.device = "auto", precision: str = "fp32", force: bool = False,
                   allow_pickle: bool = False, progress: bool = True, alpha: float = 0.5,
                   num_workers: int = 0) -> Summary:
    """Predict every image of ``inputs`` into ``out_dir`` (module docstring: scale and outputs).

    An unreadable file is reported on stderr, counted in the summary and skipped; no image at
    all, a bad option or an unusable checkpoint raises :class:`PredictError`.
    """
    _check_options(ids, batch_size, alpha)
    size, out = parse_size(size), Path(out_dir)
    items = find_images(inputs, exclude=out)
    runtime = _runtime(device, precision)
    model, reference = load_predictor(checkpoint, allow_pickle=allow_pickle)
    model.to(runtime.device)
    lut = np.array(raw_ids("cityscapes", model.num_classes), dtype=np.uint8) if ids == "labelids" else None
    write = _Writer(model.num_classes, lut, alpha)
    paths = [output_paths(out, item, overlay=overlay, probs=probs) for item in items]
    _check_not_inputs(items, paths)
    todo = [i for i, p in enumerate(paths) if force or not all(f.is_file() for f in p.values())]
    summary = Summary(out, skipped=len(items) - len(todo))
    data = _Images([items[i] for i in todo], size, reference, keep_rgb=overlay)
    loader = DataLoader(data, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    with eval_mode(model), tqdm(total=len(todo), desc="predict", unit="img", disable=not progress) as bar:
        for group in _batches(loader):
            if "error" in group[0]:
                _skip_unreadable(summary, data.items[group[0]["index"]].source, group[0]["error"])
            else:
                for entry, label, conf in _predict_group(model, group, runtime, flip, probs):
                    write(paths[todo[entry["index"]]], label, conf, entry["rgb"])
                    summary.written += 1
            bar.update(len(group))
    return summary


# ---------------------------------------------------------------------------- workflow
def report_items(images: PathLike, count: int) -> list[Item]:
    """``count`` readable images of the folder ``images``, evenly spaced through it, for the report."""
    items = find_images([images])
    chosen: list[Item] = []
    for start in np.linspace(0, len(items), num=min(count, len(items)), endpoint=False).astype(int):
        for item in items[start:] + items[:start]:
            if item not in chosen and _readable(item.source):
                chosen.append(item)
                break
    return chosen


def _readable(path: Path) -> bool:
    try:
        load_image(path)
    except _READ_ERRORS:
        return False
    return True


def report_name(item: Item) -> str:
    """A flat file name for ``item``'s overlay in the report."""
    return "__".join(item.rel.parts) + "_overlay.png"


def predict_job(*, checkpoint: PathLike, images: PathLike, out_dir: PathLike,
                report_pngs: Sequence[PathLike], size: SizeOption, flip: bool, batch_size: int,
                device: str, precision: str, threads: int = 1, log: PathLike | None = None) -> Summary:
    """Rule predict: overlays of every image of ``images``, then copies of those the report shows
    (``report_pngs``: ``<dir>/<report_name(item)>``). Output goes to ``log``; a known error is
    one line and exit status 2."""
    if log is not None:
        redirect_output(log)
    try:
        torch.set_num_threads(max(1, int(threads)))
        summary = predict_images(checkpoint, [images], out_dir, size=size, flip=flip, overlay=True,
                                 batch_size=batch_size, device=device, precision=precision,
                                 force=True, progress=False)
        by_name = {report_name(item): item for item in find_images([images])}
        for png in map(Path, report_pngs):
            if png.name not in by_name:
                raise PredictError(f"the report's {png.name} has no image in {images} any more")
            with atomic_path(png) as tmp:
                shutil.copyfile(output_paths(out_dir, by_name[png.name], overlay=True)["overlay"], tmp)
    except (ValueError, OSError) as exc:
        print(f"proda predict: error: {_reason(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    print(f"proda predict: {summary.line()}", flush=True)
    return summary


# ---------------------------------------------------------------------------- command line
def run(args: Any) -> int:
    """``proda predict``: predict, print the summary; 0, 1 when some files were unreadable, 2 on
    an error (one line on stderr)."""
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        summary = predict_images(
            args.checkpoint, args.inputs, args.out, size=_size_arg(args.size), ids=args.ids, flip=args.flip,
            overlay=args.overlay, probs=args.probs, batch_size=args.batch_size, device=args.device,
            precision="bf16" if args.bf16 else "fp32", force=args.force, allow_pickle=args.allow_pickle,
            progress=not args.quiet, alpha=args.alpha, num_workers=args.workers)
    except (ValueError, OSError) as exc:
        print(f"proda predict: error: {_reason(exc)}", file=sys.stderr, flush=True)
        return 2
    print(f"proda predict: {summary.line()}", flush=True)
    return 1 if summary.unreadable else 0


def _size_arg(values: Sequence[str] | None) -> SizeOption:
    if values is None:
        return None
    return "native" if list(values) == ["native"] else values
