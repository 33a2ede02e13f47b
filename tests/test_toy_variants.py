"""The README's toy-benchmark variants (benchmarks/toy_variants.py): valid configs; a variant that
changes only its stage (and later ones) shares the study's upstream runs, one that changes
anything else (the network) trains its own."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from proda.config import resolve

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("toy_variants", REPO / "benchmarks" / "toy_variants.py")
toy_variants = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy_variants)


@pytest.mark.parametrize("stage", sorted(toy_variants.VARIANTS))
def test_variants_share_everything_before_their_stage(stage):
    before = toy_variants.PREVIOUS[stage]
    later = {"stage1": {"stage1", "stage2", "stage3"}, "stage2": {"stage2", "stage3"}}[stage]
    kept = None
    for index, change in enumerate(toy_variants.VARIANTS[stage].values()):
        cfg = resolve(REPO / "config.yaml", toy_variants.overlay(stage, index, change), checks="schema")
        evals = toy_variants.evaluations(cfg, stage)
        assert sorted(evals) == sorted(resolve(REPO / "config" / "study.yaml", checks="schema")["study"]["seeds"])
        if kept is None:
            kept = evals
            continue
        for seed, paths in evals.items():
            if set(change) <= later:
                assert paths[before] == kept[seed][before]   # the same upstream run
            else:
                assert paths[before] != kept[seed][before]   # e.g. another network: its own warm-up
            assert paths[stage] != kept[seed][stage]     # its own run of the stage


def test_margin_row_is_paired_by_seed(tmp_path):
    def csv(value: float) -> str:
        path = tmp_path / f"{value}.csv"
        path.write_text(f"class,iou\nroad,50.0\nmIoU,{value}\n")
        return str(path)

    evals = {1: {"warmup": csv(20.0), "stage1": csv(23.0)}, 2: {"warmup": csv(25.0), "stage1": csv(26.0)}}
    assert toy_variants.row("x", evals, "stage1") == "| x | +3.00, +1.00 | +2.0 ± 1.4 |"
