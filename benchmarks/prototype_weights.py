"""How sharp are stage 1's rectification weights on the toy benchmark? (docs/toy-benchmark.md,
diagnosis item 4)

For each seed of the study (``config.yaml`` + ``config/study.yaml``; run ``make study`` first), the
warm-up model (in train mode, as the official EMA teacher runs) embeds the first target train
images, and the script prints the median distance between the initial prototypes, the mean
distance of a feature to its nearest prototype, and the mean weight of that nearest prototype in
softmax(−T · distance) for each temperature T::

    python benchmarks/prototype_weights.py                 # T = 1 and 3, 20 images per seed
    python benchmarks/prototype_weights.py --T 1 3 10 --images 40
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proda.config import resolve
from proda.models import build_model
from proda.plan import study
from proda.prototypes import load_prototypes, prototype_distance, weights_from_distances
from proda.train.builders import target_dataset


@torch.no_grad()
def sharpness(model: torch.nn.Module, prototypes: torch.Tensor, images: list[torch.Tensor],
              temperatures: list[float]) -> dict[str, float]:
    """Median prototype spacing, mean nearest distance, and the nearest prototype's mean weight per T."""
    pairwise = torch.cdist(prototypes, prototypes)
    dist = torch.cat([prototype_distance(model(x[None])["feat"].float(), prototypes).flatten(2)
                      for x in images], dim=2)                       # 1 × C × (pixels of all images)
    out = {"spacing": pairwise[pairwise > 0].median().item(), "nearest": dist.amin(1).mean().item()}
    for t in temperatures:
        out[f"T={t:g}"] = weights_from_distances(dist, t).amax(1).mean().item()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=float, nargs="+", default=[1.0, 3.0], help="temperatures")
    parser.add_argument("--images", type=int, default=20, help="target train images per seed")
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the plan's paths are relative to the repository (results_dir: results)
    torch.set_num_threads(1)
    runs = study(resolve(REPO / "config.yaml", REPO / "config" / "study.yaml"))
    print("| seed | prototype spacing (median) | nearest distance (mean) | "
          + " | ".join(f"nearest weight, T = {t:g}" for t in args.T) + " |")
    print("|---" * (3 + len(args.T)) + "|")
    for seed, name in runs.main.items():
        plan = runs.plans[name]
        checkpoint = Path(plan.models["warmup"]) / "model.pt"
        if not checkpoint.exists():
            raise SystemExit(f"{checkpoint}: missing; run `make study` first")
        torch.manual_seed(seed)  # the train-mode dropout masks
        model, _ = build_model(checkpoint)
        model.train()
        dataset = target_dataset(plan.config, "train")
        images = [dataset[i]["img"].float() for i in range(min(args.images, len(dataset)))]
        s = sharpness(model, load_prototypes(plan.pseudo["prototypes"])[0], images, args.T)
        print(f"| {seed} | {s['spacing']:.2f} | {s['nearest']:.2f} | "
              + " | ".join(f"{s[f'T={t:g}']:.2f}" for t in args.T) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
