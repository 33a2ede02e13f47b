"""benchmarks/strong_view_teacher.py: the view scores of a model that reads the class off the image."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fakes import load_benchmark

from proda.data.transforms import StrongParams

strong_view_teacher = load_benchmark("strong_view_teacher")


class ReadsRedChannel(torch.nn.Module):
    """Predicts class round(3 · red) at every pixel, at half resolution like a real network."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        classes = (x[:, 0] * 3).round().long().clamp(0, 3)
        return {"out": F.one_hot(classes, 4).permute(0, 3, 1, 2).float()[:, :, ::2, ::2]}


def test_weak_view_is_read_exactly_and_a_colour_change_costs_the_strong_view():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3]]).repeat_interleave(2, 0).repeat_interleave(2, 1)  # 4×8
    weak = (label.float() / 3)[None].repeat(3, 1, 1)
    strong = weak.clone()
    strong[0][label == 3] = 2 / 3                        # the strong view's colours turn class 3 into 2
    colour_only = StrongParams(hflip=False, ops=[("Solarize", 128.0)], cutout=(0, 0, 1, 1))
    item = {"img": weak, "label": label, "img_strong": strong, "strong_params": colour_only}
    scores = strong_view_teacher.view_scores(ReadsRedChannel(), [item], 4, {"two": 2, "three": 3})
    assert scores["weak"] == {"miou": 100.0, "pixel_acc": 100.0, "two": 100.0, "three": 100.0}
    # the cutout hides pixel (0, 0) of class 0; the 8 pixels of class 3 are predicted as class 2
    assert scores["strong"]["three"] == 0.0
    assert scores["strong"]["two"] == pytest.approx(100 * 8 / 16)
    assert scores["strong"]["pixel_acc"] == pytest.approx(100 * 23 / 31)
    assert scores["strong"]["miou"] == pytest.approx(100 * (1 + 1 + 0.5 + 0) / 4)


def test_geometry_of_the_strong_view_moves_the_label_with_it():
    label = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]]).repeat(4, 1)
    weak = (label.float() / 3)[None].repeat(3, 1, 1)
    flipped = StrongParams(hflip=True, ops=[], cutout=(0, 0, 0, 0))
    item = {"img": weak, "label": label, "img_strong": weak.flip(-1), "strong_params": flipped}
    scores = strong_view_teacher.view_scores(ReadsRedChannel(), [item], 4, {"one": 1})
    assert scores["strong"]["pixel_acc"] == 100.0 and scores["strong"]["one"] == 100.0
