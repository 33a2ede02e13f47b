"""Stages 2 and 3: self-training on hard pseudo labels + distillation from a frozen teacher (§4.3)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from proda.data.labels import IGNORE_INDEX
from proda.data.transforms import label_strong_T
from proda.losses import cross_entropy, distillation_kl, symmetric_ce
from proda.models import build_model, is_backbone_key, load_checkpoint, load_imagenet, load_simclr
from proda.runtime import Runtime
from proda.train.loop import Stage
from proda.train.optim import finetune_groups, make_sgd, single_group
from proda.train.builders import new_model, to_device
from proda.resize import up

STUDENT_INITS = ("simclr", "imagenet", "scratch", "warmup_backbone", "resume")


def build_teacher(cfg: Mapping[str, Any], stage: str, teacher_ckpt: str) -> nn.Module:
    """The frozen teacher restored from ``teacher_ckpt``; its bn_pretrain must match ``<stage>.ema_bn``."""
    teacher, _ = build_model(teacher_ckpt)
    if teacher.bn_clr != bool(cfg[stage]["ema_bn"]):
        raise ValueError(f"config key '{stage}.ema_bn' is {cfg[stage]['ema_bn']} but the teacher checkpoint "
                         f"{teacher_ckpt} {'has' if teacher.bn_clr else 'lacks'} bn_pretrain")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def build_student(cfg: Mapping[str, Any], stage: str, teacher_ckpt: str, init_ckpt: str | None) -> nn.Module:
    """The student, initialised as ``<stage>.student_init`` says (docs/method.md §4.3, §1.5)."""
    s = cfg[stage]
    kind = s["student_init"]
    if kind == "resume":
        model, _ = build_model(teacher_ckpt)
        return model
    if kind == "simclr":
        if not cfg["model"]["simclr"]:
            raise ValueError(f"config key 'model.simclr' must name a file for {stage}.student_init: simclr")
        model = new_model(cfg, bn_clr=bool(s["bn_clr"]))
        load_simclr(model, cfg["model"]["simclr"], allow_pickle=cfg["unsafe_pickle"])
        return model
    if kind == "imagenet":  # the official code honours bn_clr only with SimCLR
        if not cfg["model"]["imagenet"]:
            raise ValueError(f"config key 'model.imagenet' must name a file for {stage}.student_init: imagenet")
        model = new_model(cfg, bn_clr=False)
        load_imagenet(model, cfg["model"]["imagenet"], allow_pickle=cfg["unsafe_pickle"])
        return model
    if kind == "scratch":
        return new_model(cfg, bn_clr=bool(s["bn_clr"]))
    if kind == "warmup_backbone":
        if init_ckpt is None:
            raise ValueError(f"{stage}.student_init: warmup_backbone needs the warm-up checkpoint")
        model = new_model(cfg, bn_clr=bool(s["bn_clr"]))
        state = load_checkpoint(init_ckpt)["ResNet101"]["model_state"]
        own = model.state_dict()
        own.update({k: v for k, v in state.items() if is_backbone_key(k) and k in own})
        model.load_state_dict(own)
        return model
    raise ValueError(f"config key '{stage}.student_init' must be one of {', '.join(STUDENT_INITS)}, got {kind!r}")


def teacher_view(target: dict, student_view: Tensor, parity: bool) -> Tensor:
    """The teacher's input: the student's own view (intended); always the strong view in parity (Q8)."""
    return target["img_strong"] if parity else student_view


class DistillStage(Stage):
    """Student trained on thresholded hard pseudo labels, distilled from the previous stage's model."""

    def __init__(self, cfg: Mapping[str, Any], runtime: Runtime, stage: str, teacher_ckpt: str,
                 init_ckpt: str | None = None):
        super().__init__(cfg, runtime)
        self.name, self.s, self.parity = stage, cfg[stage], bool(cfg["parity"])
        self.teacher = runtime.place(build_teacher(cfg, stage, teacher_ckpt))
        model = runtime.place(build_student(cfg, stage, teacher_ckpt, init_ckpt))
        train = cfg["train"]
        groups = (finetune_groups(model, self.s["lr"], self.s["head_lr_mult"], self.parity)
                  if self.s["finetune"] else single_group(model, self.s["lr"]))
        model.checkpointing = bool(cfg["train"]["activation_checkpointing"])  # memory for compute
        self.student = runtime.wrap(model)
        self.optimizers = {"G": make_sgd(groups, momentum=train["momentum"],
                                         weight_decay=train["weight_decay"], parity=self.parity)}

    def _pl_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        ddp = self.runtime.distributed
        if self.s["rce"]:
            return symmetric_ce(logits, labels, self.s["rce_alpha"], self.s["rce_beta"], ignore_index=IGNORE_INDEX,
                                ddp=ddp)
        return cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, ddp=ddp)

    def step(self, source: dict, target: dict, iteration: int) -> dict[str, float]:
        src, tgt = to_device(source, self.runtime), to_device(target, self.runtime)
        G, s = self.student, self.s
        loss_src = self.source_step(src)

        h4, w4 = tgt["img"].shape[-2] // 4, tgt["img"].shape[-1] // 4
        labels = tgt["lp"][:, ::4, ::4]  # nearest x0.25: picks pixel (4i, 4j)
        if s["S_pseudo"] > 0:
            labels = label_strong_T(labels[:, None].float(), tgt["strong_params"], padding=IGNORE_INDEX, scale=4,
                                    parity=self.parity)[:, 0].round().long()
            x = tgt["img_strong"]
        else:
            x = tgt["img"]
        with self.runtime.autocast():
            z = G(x)["out"]
        z = up(z.float(), (h4, w4))  # upsampled and reduced in float32
        loss = self._pl_loss(z, labels)
        loss_kd = torch.zeros((), device=z.device)
        if s["distillation"] > 0:
            with torch.no_grad(), self.runtime.autocast():
                t = self.teacher(teacher_view(tgt, x, self.parity))["out"]
            t = up(t.float(), (h4, w4))
            loss_kd = distillation_kl(z, t, parity=self.parity)
            loss = loss + s["distillation"] * loss_kd
        loss.backward()
        self.optimizers["G"].step()
        return {"loss_src": loss_src.item(), "loss": loss.item(), "loss_kd": loss_kd.item()}
