"""Builders from a config: datasets, training views, batch streams, students."""
from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn
from torch.utils.data import Dataset

from proda.data import build_dataset
from proda.data.training import TrainingDataset, collate
from proda.models import DeepLabV2
from proda.train.batches import BatchStream
from proda.runtime import Runtime


def _size(section: Mapping[str, Any]) -> tuple[int, int] | None:
    size = section.get("size")
    return tuple(size) if size else None


def source_dataset(cfg: Mapping[str, Any]) -> Dataset:
    src = cfg["data"]["source"]
    return build_dataset(src["dataset"], src["root"], split="train", n_class=cfg["data"]["n_class"],
                         size=_size(src))


def target_dataset(cfg: Mapping[str, Any], split: str = "train", labels: bool = True) -> Dataset:
    tgt = cfg["data"]["target"]
    return build_dataset(tgt["dataset"], tgt["root"], split=split, n_class=cfg["data"]["n_class"],
                         size=_size(tgt), labels=labels)


def check_crop(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """The (W, H) crop; both must be multiples of 8 (output stride) for the 1/4-resolution losses."""
    cw, ch = cfg["data"]["crop"]
    if cw % 8 or ch % 8:
        raise ValueError(f"config key 'data.crop' must hold multiples of 8, got {[cw, ch]}")
    return cw, ch


def training_view(dataset: Dataset, cfg: Mapping[str, Any], *, seed: int, strong: bool = False,
                  full_image: bool = False, soft_labels=None, hard_labels=None) -> TrainingDataset:
    """Weak (and optionally strong) augmented view of ``dataset`` with the config's sizes."""
    data = cfg["data"]
    return TrainingDataset(dataset, resize_base=data["resize"], crop_wh=check_crop(cfg),
                           scale_range=tuple(data["scale_range"]), hflip=data["hflip"], strong=strong,
                           full_image=full_image, soft_labels=soft_labels, hard_labels=hard_labels, seed=seed)


def stream(dataset: Dataset, cfg: Mapping[str, Any], runtime: Runtime, *, seed: int,
           drop_last: bool = True) -> BatchStream:
    """An endless shuffled batch stream (global batch ``data.batch_size``)."""
    data = cfg["data"]
    return BatchStream(dataset, data["batch_size"], shuffle=True, drop_last=drop_last, seed=seed,
                       num_workers=data["num_workers"], collate=collate, rank=runtime.rank,
                       world_size=runtime.world_size, pin_memory=runtime.device.type == "cuda")


def new_model(cfg: Mapping[str, Any], bn_clr: bool = False) -> DeepLabV2:
    """A freshly initialised DeepLabV2 with the config's architecture."""
    m = cfg["model"]
    return DeepLabV2(cfg["data"]["n_class"], backbone=m["backbone"], bn_clr=bn_clr,
                     head_channels=m["head_channels"], base_width=m["base_width"])


def freeze_batchnorm(model: nn.Module) -> None:
    """``--freeze_bn``: every BatchNorm in eval mode with frozen affine parameters."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)


def to_device(batch: Mapping[str, Any], runtime: Runtime) -> dict[str, Any]:
    """Move the tensors of a collated batch to the runtime's device."""
    nb = runtime.device.type == "cuda"
    return {k: v.to(runtime.device, non_blocking=nb) if isinstance(v, Tensor) else v for k, v in batch.items()}
