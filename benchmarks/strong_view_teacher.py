"""How good are the distillation teachers' targets on the strong view? (docs/toy-benchmark.md,
diagnosis items 5-6)

Stages 2 and 3 distil the teacher's prediction on the strong (RandAugment) view of each target
crop: the teacher runs in eval mode on the image the student sees. For each seed of the study
(``config.yaml`` + ``config/study.yaml``; run ``make study`` first), the script scores the stage-2
teacher (the stage-1 model) and the stage-3 teacher (the stage-2 model) on the weak and the
strong view of the first target train crops of the run's first epoch, against the ground truth
moved into each view, and prints mIoU, pixel accuracy and the IoU of the named classes::

    python benchmarks/strong_view_teacher.py                     # 100 crops per seed
    python benchmarks/strong_view_teacher.py --images 40 --classes vegetation sky
    python benchmarks/strong_view_teacher.py --overlay results/variants/stage1-9.yaml  # a variant's chain
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proda.config import resolve
from proda.data.labels import class_names
from proda.data.transforms import label_strong_T
from proda.metrics import iou_table
from proda.models import build_model
from proda.plan import study
from proda.quality import QualityAccumulator
from proda.train.builders import target_dataset, training_view
from proda.resize import up

TEACHERS = {"stage2": "stage1", "stage3": "stage2"}   # distillation stage -> its teacher's stage


@torch.no_grad()
def view_scores(model: torch.nn.Module, items: Iterable[Mapping[str, Any]], n_class: int,
                classes: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per view ("weak", "strong"): mIoU, pixel accuracy and the IoU of ``classes`` (name: index), percent.

    Each item holds ``img``, ``label`` (weak view), ``img_strong`` and ``strong_params``; the label
    is moved into the strong view as the training moves the pseudo labels (out of frame and the
    cutout are ignored).
    """
    accumulators = {"weak": QualityAccumulator(n_class), "strong": QualityAccumulator(n_class)}
    for item in items:
        weak_label = item["label"]
        strong_label = label_strong_T(weak_label[None, None].float(), [item["strong_params"]],
                                      scale=1)[0, 0].long()
        for view, image, label in (("weak", item["img"], weak_label),
                                   ("strong", item["img_strong"], strong_label)):
            logits = up(model(image[None].float())["out"].float(), tuple(label.shape[-2:]))
            accumulators[view].add(logits.argmax(1)[0], label)
    scores = {}
    for view, acc in accumulators.items():
        quality, table = acc.result(), iou_table(acc.confusion)
        scores[view] = {"miou": quality["miou"], "pixel_acc": quality["pixel_acc"],
                        **{name: 100.0 * float(table.iou[index]) for name, index in classes.items()}}
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="target train crops per seed")
    parser.add_argument("--classes", nargs="+", default=["vegetation", "building"], help="classes to show")
    parser.add_argument("--overlay", type=Path, help="a config file merged over the study's (e.g. a variant's)")
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the plan's paths are relative to the repository (results_dir: results)
    torch.set_num_threads(1)
    overlays = [args.overlay.resolve()] if args.overlay else []
    runs = study(resolve(REPO / "config.yaml", REPO / "config" / "study.yaml", *overlays))
    names = class_names(int(runs.plans[runs.main[runs.seeds[0]]].config["data"]["n_class"]))
    unknown = [c for c in args.classes if c not in names]
    if unknown:
        raise SystemExit(f"--classes: unknown class {unknown[0]!r}; known: {', '.join(names)}")
    classes = {c: names.index(c) for c in args.classes}
    print("| seed | teacher of | view | mIoU | pixel accuracy | " + " | ".join(classes) + " |")
    print("|---" * (5 + len(classes)) + "|")
    for seed, name in runs.main.items():
        plan = runs.plans[name]
        crops = training_view(target_dataset(plan.config, "train"), plan.config,
                              seed=plan.config["seed"] + 1, strong=True)   # the stages' target seed
        items = [crops[i] for i in range(min(args.images, len(crops)))]
        for stage, teacher in TEACHERS.items():
            checkpoint = Path(plan.models[teacher]) / "model.pt"
            if not checkpoint.exists():
                raise SystemExit(f"{checkpoint}: missing; run `make study` first")
            model, _ = build_model(checkpoint)
            for view, s in view_scores(model.eval(), items, len(names), classes).items():
                print(f"| {seed} | {stage} ({teacher} model) | {view} | {s['miou']:.1f} | {s['pixel_acc']:.1f} | "
                      + " | ".join(f"{s[c]:.1f}" for c in classes) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
