"""Warm-up: source-only training plus AdaptSegNet-style output-space adversarial alignment (§4.1)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from proda.losses import cross_entropy, lsgan_loss, vanilla_gan_loss
from proda.models import FCDiscriminator, load_imagenet, unwrap
from proda.runtime import Runtime
from proda.train.loop import Stage
from proda.train.optim import finetune_groups, make_sgd
from proda.train.builders import freeze_batchnorm, new_model, to_device
from proda.resize import up

SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0


class WarmupStage(Stage):
    """Student G (ImageNet backbone, random head) and discriminator D trained jointly."""

    name = "warmup"

    def __init__(self, cfg: Mapping[str, Any], runtime: Runtime):
        super().__init__(cfg, runtime)
        w = cfg["warmup"]
        model = new_model(cfg)
        if cfg["model"]["imagenet"]:
            load_imagenet(model, cfg["model"]["imagenet"], allow_pickle=cfg["unsafe_pickle"])
        self.freeze_bn = bool(w["freeze_bn"])
        if self.freeze_bn:
            freeze_batchnorm(model)
        runtime.place(model)
        groups = finetune_groups(model, w["lr"], w["head_lr_mult"], bool(cfg["parity"]))
        model.checkpointing = bool(cfg["train"]["activation_checkpointing"])  # memory for compute
        self.student = runtime.wrap(model)
        self.discriminator = runtime.wrap(runtime.place(FCDiscriminator(cfg["data"]["n_class"], ndf=w["d_width"])))
        train = cfg["train"]
        self.optimizers = {
            "G": make_sgd(groups, momentum=train["momentum"], weight_decay=train["weight_decay"],
                          parity=bool(cfg["parity"])),
            "D": torch.optim.Adam(self.discriminator.parameters(), lr=w["d_lr"], betas=tuple(w["d_betas"])),
        }
        self.gan = lsgan_loss if w["gan"] == "LS" else vanilla_gan_loss
        self.adv = float(w["adv"])

    def modules(self) -> dict[str, Any]:
        return {"student": self.student, "discriminator": self.discriminator}

    def export_extra(self) -> dict[str, Any]:
        return {"FCDiscriminator": {"model_state": unwrap(self.discriminator).state_dict()}}

    def _set_d_grad(self, flag: bool) -> None:
        for p in self.discriminator.parameters():
            p.requires_grad_(flag)

    def _judge(self, probs: torch.Tensor) -> torch.Tensor:
        """The discriminator's output map (forward under autocast, returned in float32)."""
        with self.runtime.autocast():
            out = self.discriminator(probs)
        return out.float()

    def step(self, source: dict, target: dict, iteration: int) -> dict[str, float]:
        src, tgt = to_device(source, self.runtime), to_device(target, self.runtime)
        G, D = self.student, self.discriminator
        G.train()
        D.train()
        if self.freeze_bn:
            freeze_batchnorm(G)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        crop = tuple(src["img"].shape[-2:])

        self._set_d_grad(False)
        with self.runtime.autocast():
            out_s, out_t = G(src["img"])["out"], G(tgt["img"])["out"]
        # logits leave autocast and are upsampled, softmaxed and reduced in float32
        z_s, z_t = up(out_s.float(), crop), up(out_t.float(), crop)
        loss_src = cross_entropy(z_s, src["label"], ddp=self.runtime.distributed)
        loss_adv = self.gan(self._judge(F.softmax(z_t, dim=1)), SOURCE_LABEL) * self.adv
        (loss_src + loss_adv).backward()
        self.optimizers["G"].step()

        self._set_d_grad(True)
        loss_d = (self.gan(self._judge(F.softmax(z_s, dim=1).detach()), SOURCE_LABEL)
                  + self.gan(self._judge(F.softmax(z_t, dim=1).detach()), TARGET_LABEL))
        loss_d.backward()
        self.optimizers["D"].step()
        return {"loss_src": loss_src.item(), "loss_adv": loss_adv.item(), "loss_D": loss_d.item()}
