"""Smoke test of benchmarks/side_by_side.py at tiny shapes (``--quick``), plus its baselines."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

torch.set_num_threads(1)
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "side_by_side.py"


def _module():
    spec = importlib.util.spec_from_file_location("side_by_side", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_the_table(capsys):
    text = _module().main(["--quick", "--reps", "1", "--steps", "1"])
    assert capsys.readouterr().out.strip() == text.strip()
    for needle in ("| machine |", "| date |", "| torch |", "| commit |", "### (a) Prototype maths",
                   "per stage-1 step", "### (b) Pseudo-label bytes", "float32 `.npy`",
                   "label PNG + colour PNG + float16 `.npy`", "### (c) One stage-1 step",
                   "| teacher forward |", "| prototype work |", "Targets:"):
        assert needle in text, needle
    assert "nan" not in text.lower()


def test_baselines_match_the_library():
    m = _module()
    feat, protos, logits = m.groupnorm_features(2, 16, 16, 24, 5)
    torch.testing.assert_close(m.loop_distance(feat, protos), m.prototype_distance(feat, protos),
                               atol=1e-4, rtol=1e-5)
    vectors, ids = m.class_mean_vectors(feat, logits, min_pixels=10)
    loop_vectors, loop_ids = m.loop_class_means(feat, logits, min_pixels=10)
    assert ids.tolist() == loop_ids and loop_ids
    torch.testing.assert_close(vectors, torch.stack(loop_vectors))
    zero = [torch.zeros(16)] + loop_vectors  # a vector summing to 0 is skipped by both
    torch.testing.assert_close(m.loop_moving_update(protos, zero, [0] + loop_ids, 0.3),
                               m.moving_update(protos, vectors, ids, 0.3))
