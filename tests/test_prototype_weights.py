"""benchmarks/prototype_weights.py: the sharpness measures on hand-made features."""
from __future__ import annotations

import pytest
import torch
from fakes import load_benchmark

prototype_weights = load_benchmark("prototype_weights")


class Identity(torch.nn.Module):
    """A 'model' whose features are its input."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"feat": x}


def test_sharpness_of_features_at_known_distances():
    prototypes = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])   # spacings 3, 4, 5
    # two pixels: on prototype 0, and 1 away from prototype 1 (2 from prototype 0)
    image = torch.tensor([[[0.0, 2.0]], [[0.0, 0.0]]])                # 2 × 1 × 2 (C × H × W)
    s = prototype_weights.sharpness(Identity(), prototypes, [image], [1.0, 100.0])
    assert s["spacing"] == pytest.approx(4.0)
    assert s["nearest"] == pytest.approx(0.5, abs=1e-3)   # float32 matrix-product distances
    w_on = 1 / (1 + torch.exp(torch.tensor(-3.0)) + torch.exp(torch.tensor(-4.0)))   # T = 1, on prototype 0
    d = torch.tensor([2.0, 1.0, 20.0 ** 0.5])
    w_off = torch.softmax(-d, 0).max()
    assert s["T=1"] == pytest.approx(float((w_on + w_off) / 2), rel=1e-3)
    assert s["T=100"] == pytest.approx(1.0, abs=1e-6)
