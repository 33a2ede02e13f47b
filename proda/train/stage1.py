"""Stage 1: prototypical pseudo-label denoising + target structure learning (docs/method.md §4.2)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from proda.data.labels import IGNORE_INDEX
from proda.data.transforms import full2weak, label_strong_T
from proda.ema import ema_update, make_ema
from proda.losses import cross_entropy, prototype_consistency, regulariser, symmetric_ce
from proda.models import build_model
from proda.prototypes import (class_mean_vectors, moving_update, prototype_distance,
                              rectify_pseudo_labels, weights_from_distances)
from proda.runtime import Runtime
from proda.train.loop import Stage
from proda.train.optim import make_sgd, single_group
from proda.train.builders import to_device
from proda.resize import up


def gather_vectors(vectors: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate every rank's class vectors in rank (= global sample) order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return vectors, ids
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (vectors.cpu(), ids.cpu()))
    return (torch.cat([v for v, _ in gathered]).to(vectors.device),
            torch.cat([i for _, i in gathered]).to(ids.device))


class Stage1(Stage):
    """Student + EMA teacher restored from the warm-up model, prototypes from its features."""

    name = "stage1"

    def __init__(self, cfg: Mapping[str, Any], runtime: Runtime, warmup_ckpt: str, prototypes: Tensor):
        super().__init__(cfg, runtime)
        self.s = cfg["stage1"]
        self.parity = bool(cfg["parity"])
        model, _ = build_model(warmup_ckpt)
        runtime.place(model)
        self.ema = make_ema(model, sync_bn=runtime.device if runtime.distributed else None)
        self.ema.train(not self.s["ema_eval"])
        model.checkpointing = bool(cfg["train"]["activation_checkpointing"])  # memory for compute
        self.student = runtime.wrap(model)
        self.prototypes_ = prototypes.float().to(runtime.device)
        train = cfg["train"]
        self.optimizers = {"G": make_sgd(single_group(model, self.s["lr"]), momentum=train["momentum"],
                                         weight_decay=train["weight_decay"], parity=self.parity)}

    def modules(self) -> dict[str, Any]:
        return {"student": self.student, "ema": self.ema}

    def extra_state(self) -> dict[str, Any]:
        return {"prototypes": self.prototypes_.cpu()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.prototypes_ = state["prototypes"].to(self.runtime.device)

    def prototypes(self) -> Tensor:
        return self.prototypes_

    def _target_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        s, ddp = self.s, self.runtime.distributed
        if s["rce"]:
            loss = symmetric_ce(logits, labels, s["rce_alpha"], s["rce_beta"], ignore_index=IGNORE_INDEX, ddp=ddp)
        else:
            loss = cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, ddp=ddp)
        if s["regular_w"] > 0:
            loss = loss + s["regular_w"] * regulariser(logits, s["regular_type"])
        return loss

    def _teacher(self, tgt: dict, weak_hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """The EMA teacher's features and logits (for the prototype update) and its features in the
        weak view (for rectification and L_con), all float32 at 1/4 of their input.

        ``stage1.teacher_input: full`` (official): the whole target image, its features moved into
        the weak view by ``full2weak`` (§3.4). ``weak``: only the weak crop, whose features already
        are the weak view (cheaper; the context outside the crop is lost)."""
        image = tgt["img_full"] if self.s["teacher_input"] == "full" else tgt["img"]
        with torch.no_grad(), self.runtime.autocast():
            e = self.ema(image)
        size = (image.shape[-2] // 4, image.shape[-1] // 4) if self.s["teacher_input"] == "full" else weak_hw
        e_feat, e_out = up(e["feat"].float(), size), up(e["out"].float(), size)
        weak = full2weak(e_feat, tgt["weak_params"], scale=4) if self.s["teacher_input"] == "full" else e_feat
        return e_feat, e_out, weak

    def step(self, source: dict, target: dict, iteration: int) -> dict[str, float]:
        src, tgt = to_device(source, self.runtime), to_device(target, self.runtime)
        G, s, eta = self.student, self.s, self.prototypes_
        T = float(s["proto_temperature"])
        loss_src = self.source_step(src)

        h4, w4 = tgt["img"].shape[-2] // 4, tgt["img"].shape[-1] // 4
        e_feat, e_out, weak_feat = self._teacher(tgt, (h4, w4))

        with self.runtime.autocast():
            z = G(tgt["img"])["out"]
        z = up(z.float(), (h4, w4))  # upsampled and reduced in float32 (so are all maps below)
        q4 = up(tgt["lpsoft"].float(), (h4, w4))
        dist_weak = prototype_distance(weak_feat, eta)  # used by the rectification and L_con
        if s["proto_rectify"]:
            weights = weights_from_distances(dist_weak, T)
            labels, _ = rectify_pseudo_labels(q4, weights, threshold=s["train_thred"], ignore_index=IGNORE_INDEX)
        else:
            labels, _ = rectify_pseudo_labels(q4, torch.ones_like(q4), threshold=s["train_thred"],
                                              ignore_index=IGNORE_INDEX)
        loss_tgt = self._target_loss(z, labels)

        loss_con = torch.zeros((), device=z.device)
        if s["proto_consistW"] > 0:
            dist_strong = label_strong_T(dist_weak, tgt["strong_params"], padding=IGNORE_INDEX, scale=4,
                                         parity=self.parity)
            mask = dist_strong != IGNORE_INDEX
            with self.runtime.autocast():
                g_feat = G(tgt["img_strong"])["feat"]
            g_feat = up(g_feat.float(), (h4, w4))
            loss_con = prototype_consistency(dist_strong, prototype_distance(g_feat, eta), mask, T,
                                             ddp=self.runtime.distributed)
        loss = s["proto_consistW"] * loss_con + loss_tgt
        loss.backward()
        self.optimizers["G"].step()

        if s["moving_prototype"]:
            vectors, ids = gather_vectors(*class_mean_vectors(e_feat, e_out))
            self.prototypes_ = moving_update(eta, vectors, ids, s["proto_momentum"])
        ema_update(self.ema, G, s["ema_momentum"])
        return {"loss_src": loss_src.item(), "loss": loss.item(), "loss_tgt": loss_tgt.item(),
                "loss_con": loss_con.item()}

