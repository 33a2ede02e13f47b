"""The toy-benchmark variants of docs/toy-benchmark.md (benchmarks/toy_variants.py): valid
configs; a variant that changes only its stage (and later ones) shares the study's upstream runs,
and variants that change the same thing upstream (the network, or stage 1 for a stage-2 variant)
share their own."""
from __future__ import annotations

from pathlib import Path

import pytest
from fakes import load_benchmark

from proda.config import resolve

REPO = Path(__file__).resolve().parents[1]
toy_variants = load_benchmark("toy_variants")
CHAIN = ["warmup", "stage1", "stage2", "stage3"]


@pytest.mark.parametrize("stage", sorted(toy_variants.VARIANTS))
def test_variants_share_exactly_the_upstream_they_do_not_change(stage):
    before = toy_variants.PREVIOUS[stage]
    later = set(CHAIN[CHAIN.index(stage):])   # the stage and those after it
    seeds = sorted(resolve(REPO / "config" / "study.yaml", checks="schema")["study"]["seeds"])
    upstream: dict[str, dict[int, str]] = {}   # the change outside the later stages -> seed -> run
    own: set[str] = set()
    for index, change in enumerate(toy_variants.VARIANTS[stage].values()):
        cfg = resolve(REPO / "config.yaml", toy_variants.overlay(stage, index, change), checks="schema")
        evals = toy_variants.evaluations(cfg, stage)
        assert sorted(evals) == seeds
        outside = repr(sorted((k, v) for k, v in change.items() if k not in later))
        runs = {seed: paths[before] for seed, paths in evals.items()}
        assert upstream.setdefault(outside, runs) == runs   # same upstream change: the same runs
        own.update(paths[stage] for paths in evals.values())
    chains = [run for runs in upstream.values() for run in runs.values()]
    assert len(set(chains)) == len(chains)                  # another upstream change: its own runs
    assert len(own) == len(seeds) * len(toy_variants.VARIANTS[stage])   # each variant its own stage


def test_margin_row_is_paired_by_seed(tmp_path):
    def csv(value: float) -> str:
        path = tmp_path / f"{value}.csv"
        path.write_text(f"class,iou\nroad,50.0\nmIoU,{value}\n")
        return str(path)

    evals = {1: {"warmup": csv(20.0), "stage1": csv(23.0)}, 2: {"warmup": csv(25.0), "stage1": csv(26.0)}}
    assert toy_variants.row("x", evals, "stage1") == "| x | +3.00, +1.00 | +2.0 ± 1.4 |"
