"""Checkpoints in the official ProDA layout (docs/method.md §1.8) and pretrained-weight loading (§1.5).

Layout: ``{"ResNet101": {"model_state", "objective_vectors"}, "iter", "best_iou"}`` plus our
``"proda_meta"`` (architecture, versions, caller metadata); released files load unchanged and
their architecture is inferred from the state dict.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

import proda
from proda.files import atomic_path
from proda.integrity import ADVICE, DamagedArtifactError, verify_archive
from proda.models.deeplabv2 import BACKBONES, DeepLabV2

NET_KEY = "ResNet101"
META_KEY = "proda_meta"
RESERVED_KEYS = (NET_KEY, "iter", "best_iou", META_KEY)
_MAX_LISTED = 8

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint or weight file is missing, unreadable or does not fit the model."""


class DamagedCheckpointError(CheckpointError, DamagedArtifactError):
    """A checkpoint or weight file whose bytes are damaged (zip CRC failure, truncation)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def strip_module_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop a leading ``module.`` (DataParallel) from every key that has one."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


# numpy scalar dtypes weights_only loading may rebuild (numeric only, never the object dtype).
_NUMPY_DTYPES = ("Float64DType", "Float32DType", "Int64DType", "Int32DType")


def _safe_globals() -> list[Any]:
    """The globals ``weights_only`` loading accepts beyond torch's defaults.

    * the official ``best_iou``, a ``numpy.float64`` (the official metrics return
      ``np.nanmean(...)``): it pickles as ``numpy._core.multiarray.scalar(numpy.dtype('f8'),
      bytes)`` (``numpy.core.multiarray`` when written with numpy 1.x, as the released files
      were), and rebuilding the dtype needs its class. Only numeric dtypes are listed: an object
      dtype (which could carry arbitrary objects) stays refused.
    * ``torch.torch_version.TorchVersion``, a ``str`` subclass: our checkpoints written before
      ``proda_meta.torch_version`` was stored as a plain ``str`` hold one.
    """
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    allowed: list[Any] = [(scalar, "numpy._core.multiarray.scalar"),
                          (scalar, "numpy.core.multiarray.scalar"), np.dtype,
                          torch.torch_version.TorchVersion]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
    if dtypes is not None:
        allowed += [getattr(dtypes, name) for name in _NUMPY_DTYPES if hasattr(dtypes, name)]
    return allowed


# How a caller opts into full unpickling; one place, so that the message names the real switch.
OPT_IN_HINT = ("if you trust the file, set the config key unsafe_pickle: true "
               "(--allow-pickle on the command line, allow_pickle=True in Python)")
_REFUSED = (re.compile(r"Unsupported global: GLOBAL (\S+)"),
            re.compile(r"unsupported GLOBAL (\S+) whose module"),
            re.compile(r"Can only (?:build|create new object)[^\n]*?got (<class '[^']+'>|\S+)"))


def _first_line(exc: BaseException) -> str:
    """The informative line of a load error (torch wraps weights-only errors in a long preface)."""
    text = str(exc).strip()
    match = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if match:
        return match.group(1).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refused_globals(path: Path, exc: BaseException) -> list[str]:
    """The globals that made ``weights_only`` refuse ``path``; empty when it failed otherwise."""
    for pattern in _REFUSED:
        match = pattern.search(str(exc))
        if match:
            break
    else:
        return []
    try:  # the full list, for files in torch.save's zip format
        with torch.serialization.safe_globals(_safe_globals()):
            names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - legacy format: the one global named by the error
        names = []
    return names or [match.group(1)]


def _torch_load(path: PathLike, what: str, *, allow_pickle: bool = False) -> Any:
    """``torch.load`` on CPU with ``weights_only=True``; errors are one line naming the file.

    Tensors, containers and plain values load; so do the numpy scalars of official files
    (:func:`_safe_globals`). A file that needs any other global is refused unless
    ``allow_pickle`` (the explicit opt-in for trusted files), which then unpickles it fully.

    A zip-format file (everything ``torch.save`` writes) is first checked member by member against
    its CRC-32s, which ``torch.load`` does not do: damaged bytes raise a one-line
    :class:`DamagedCheckpointError` instead of loading as garbage weights. Legacy (non-zip)
    pickles, such as the released official files, cannot be checked and load as before.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    verify_archive(path, what, DamagedCheckpointError,
                   ADVICE if what == "checkpoint" else "replace it with an intact copy")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unreadable file
        refused = _refused_globals(path, exc)
        if not refused:
            raise CheckpointError(f"cannot read {what} {path}: {_first_line(exc)}") from exc
        if not allow_pickle:
            raise CheckpointError(
                f"refusing to load {what} {path}: it holds objects only full unpickling can "
                f"build ({', '.join(refused)}), which can run arbitrary code; {OPT_IN_HINT}"
            ) from None
    try:  # the explicit opt-in: a trusted file with arbitrary pickled objects
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read {what} {path}: {_first_line(exc)}") from exc


def save_checkpoint(path: PathLike, model: nn.Module, *, prototypes: Tensor | None = None,
                    iteration: int = 0, best_iou: float = 0.0,
                    meta: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (unwrapped, CPU tensors) in the official layout; atomic via ``os.replace``."""
    net = unwrap(model)
    if not isinstance(net, DeepLabV2):
        raise TypeError(f"save_checkpoint expects a DeepLabV2, got {type(net).__name__}")
    shape = (net.num_classes, net.feat_dim)
    if prototypes is None:
        prototypes = torch.zeros(shape)
    elif tuple(prototypes.shape) != shape:
        raise ValueError(f"prototypes must have shape {list(shape)}, got {list(prototypes.shape)}")
    clash = sorted(set(extra or {}) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra entries may not replace reserved keys {clash}")
    ckpt: dict[str, Any] = {
        NET_KEY: {"model_state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                  "objective_vectors": prototypes.detach().float().cpu()},
        "iter": int(iteration),
        "best_iou": float(best_iou),
        META_KEY: {**dict(meta or {}),  # the architecture entries below always win
                   "n_class": net.num_classes, "backbone": net.backbone, "base_width": net.base_width,
                   "head_channels": net.head_channels, "bn_clr": net.bn_clr,
                   "torch_version": str(torch.__version__),  # plain str, not TorchVersion
                   "proda_version": str(proda.__version__)},
        **dict(extra or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def load_checkpoint(path: PathLike, *, allow_pickle: bool = False) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; it must hold ``ckpt["ResNet101"]["model_state"]``.

    Read with ``weights_only=True``; ``allow_pickle`` is the opt-in for trusted files that hold
    other Python objects (see :func:`_torch_load`).
    """
    ckpt = _torch_load(path, "checkpoint", allow_pickle=allow_pickle)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get(NET_KEY), dict) \
            or "model_state" not in ckpt[NET_KEY]:
        raise CheckpointError(f"checkpoint {path} has no '{NET_KEY}'/'model_state' entry")
    return ckpt


def _net_state(ckpt_or_path: Mapping[str, Any] | PathLike, *,
               allow_pickle: bool = False) -> dict[str, Tensor]:
    ckpt = ckpt_or_path if isinstance(ckpt_or_path, Mapping) \
        else load_checkpoint(ckpt_or_path, allow_pickle=allow_pickle)
    try:
        return strip_module_prefix(ckpt[NET_KEY]["model_state"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint dict has no '{NET_KEY}'/'model_state' entry") from exc


def _listing(label: str, items: list[str]) -> str:
    more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{label} ({len(items)}): {', '.join(items[:_MAX_LISTED])}{more}"


def load_model_state(model: nn.Module, ckpt_or_path: Mapping[str, Any] | PathLike, *,
                     allow_pickle: bool = False) -> None:
    """Strictly load ``ckpt["ResNet101"]["model_state"]``; mismatches raise one CheckpointError."""
    net = unwrap(model)
    state = _net_state(ckpt_or_path, allow_pickle=allow_pickle)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs model {list(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [_listing(lbl, items) for lbl, items in
                 (("missing keys", missing), ("unexpected keys", unexpected),
                  ("shape mismatches", shapes)) if items]
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(parts))
    net.load_state_dict(state, strict=True)


def _block_counts(state: Mapping[str, Tensor]) -> tuple[int, ...]:
    counts = []
    for layer in range(1, 5):
        ids = {int(m.group(1)) for k in state if (m := re.match(rf"layer{layer}\.(\d+)\.", k))}
        counts.append(max(ids) + 1 if ids else 0)
    return tuple(counts)


def infer_model_kwargs(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """DeepLabV2 kwargs of a state dict: classes/widths from shapes, backbone from block layout."""
    state = strip_module_prefix(state)
    for key in ("conv1.weight", "layer5.head.1.weight"):
        if key not in state:
            raise CheckpointError(f"cannot infer the architecture: state dict lacks {key!r}")
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    counts = _block_counts(state)
    names = [name for name, spec in BACKBONES.items() if spec == (kind, counts)]
    if not names:
        raise CheckpointError(f"cannot infer the architecture: {kind} blocks {list(counts)} "
                              f"match no backbone in {sorted(BACKBONES)}")
    head = state["layer5.head.1.weight"]
    return {"num_classes": int(head.shape[0]), "backbone": names[0],
            "bn_clr": any(k.startswith("bn_pretrain.") for k in state),
            "head_channels": int(head.shape[1]), "base_width": int(state["conv1.weight"].shape[0])}


def model_kwargs(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """DeepLabV2 kwargs from our ``proda_meta``, else inferred from the state dict (official files)."""
    meta = ckpt.get(META_KEY)
    if isinstance(meta, Mapping):
        return {"num_classes": int(meta["n_class"]), "backbone": meta["backbone"],
                "bn_clr": bool(meta["bn_clr"]), "head_channels": int(meta["head_channels"]),
                "base_width": int(meta["base_width"])}
    return infer_model_kwargs(_net_state(ckpt))


def build_model(path_or_ckpt: Mapping[str, Any] | PathLike, *, allow_pickle: bool = False,
                **overrides: Any) -> tuple[DeepLabV2, Mapping[str, Any]]:
    """Build the checkpoint's architecture (``overrides`` win) and strictly load its weights.

    A path is read by :func:`load_checkpoint` (``allow_pickle`` is its opt-in).
    """
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, Mapping) \
        else load_checkpoint(path_or_ckpt, allow_pickle=allow_pickle)
    model = DeepLabV2(**{**model_kwargs(ckpt), **overrides})
    load_model_state(model, ckpt)
    return model, ckpt


def _load_filtered(model: nn.Module, state: Any, path: PathLike, what: str) -> list[str]:
    """§1.5 key filtering: keep the file's entries whose key the model has; strict full load."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{what} {path} is not a state dict")
    net = unwrap(model)
    own = net.state_dict()
    kept = {k: v for k, v in strip_module_prefix(state).items() if k in own}
    if not kept:
        raise CheckpointError(f"{what} {path} has no key in common with the model")
    for k, v in kept.items():
        if not isinstance(v, Tensor) or v.shape != own[k].shape:
            got = list(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise CheckpointError(f"{what} {path}: {k} has shape {got}, "
                                  f"model has {list(own[k].shape)}")
    own.update(kept)
    net.load_state_dict(own, strict=True)
    return list(kept)


def load_imagenet(model: nn.Module, path: PathLike, *, allow_pickle: bool = False) -> list[str]:
    """Load torchvision-format ResNet weights into the backbone; returns the loaded keys.

    Read with ``weights_only=True`` (``allow_pickle``: the opt-in for trusted pickles).
    """
    obj = _torch_load(path, "ImageNet weights", allow_pickle=allow_pickle)
    return _load_filtered(model, obj, path, "ImageNet weights")


def load_simclr(model: nn.Module, path: PathLike, *, allow_pickle: bool = False) -> list[str]:
    """Load SimCLR weights (``torch.load(path)['state_dict']`` or a bare state dict).

    Read with ``weights_only=True`` (``allow_pickle``: the opt-in for trusted pickles).
    """
    obj = _torch_load(path, "SimCLR weights", allow_pickle=allow_pickle)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    return _load_filtered(model, obj, path, "SimCLR weights")
