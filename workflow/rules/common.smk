"""Shared by every rule: the validated config, the plan of every artifact (proda/plan.py) and the
input, params and resource functions. Defines no rules.

Every artifact's path carries its provenance (results_dir/runs/warmup-<h>/stage1-<h>/...), so the
rules are generic: a rule's output pattern has one wildcard `node` (the artifact's folder, or its
file path without the suffix) and its inputs and config view come from the plan, by node.
"""

import re
import sys

sys.path.insert(0, workflow.basedir)  # `proda` importable without installing it

from snakemake.exceptions import WorkflowError

from proda.config import (
    ConfigError,
    deep_merge,
    effective,
    execution_settings,
    load_defaults,
    validate,
)
from proda.plan import DIGEST, plan


def _validated(user: dict) -> dict:
    """Defaults <- the user's config, checked by the same function as the CLI (one line on error)."""
    cfg = deep_merge(load_defaults(), user)
    try:
        validate(cfg)
    except ConfigError as err:
        raise WorkflowError(f"Invalid configuration: {err}") from None
    return effective(cfg)


CONFIG = _validated(config)
config.update(
    CONFIG
)  # workers read the execution-only settings (device, workers, logging) from it
PLANS = {p.experiment: p for p in [plan(CONFIG)]}
ARTIFACTS = {node: art for p in PLANS.values() for node, art in p.artifacts.items()}
EXECUTION = execution_settings(CONFIG)
TOY = CONFIG["data"]["toycity"] is not None


def node_pattern(name: str) -> str:
    """Regex of the nodes of one step: any folder, then `<name>-<digest>`."""
    return rf".+/{name}-{DIGEST}"


def inputs_of(wildcards) -> dict:
    """The job's input files, named as the worker expects them (from the plan)."""
    return ARTIFACTS[wildcards.node].inputs


def view_of(wildcards) -> dict:
    """The config view that determines the job's output (its params; also its folder's digest)."""
    return ARTIFACTS[wildcards.node].view


def step_of(wildcards) -> str:
    """The workflow step of a generic rule's job (stage2 or stage3 for the distill rule)."""
    return ARTIFACTS[wildcards.node].step


def plan_inputs(wildcards) -> dict:
    """The report's inputs: each stage's evaluation CSV of the experiment."""
    return PLANS[wildcards.experiment].evals


def manifest_of(wildcards) -> dict:
    return PLANS[wildcards.experiment].manifest()


# ---- resources ----
# GPUs per model job: none on CPU; `auto` asks for one except on the toy benchmark (a CPU demo).
# For multi-GPU training raise `gpu` of a training rule (slurm/config.yaml set-resources, or
# --set-resources stage1:gpu=4): its worker then launches torchrun with one process per GPU.
GPUS = {"cpu": 0, "cuda": 1, "auto": 0 if TOY else 1}[CONFIG["device"]]
# (threads, mem_mb, runtime in minutes) of paper-scale runs (one GPU, 2048x1024 images).
_FULL = {
    "toycity": (1, 4000, 60),
    "warmup": (8, 64000, 4320),
    "soft_labels": (8, 32000, 360),
    "prototypes": (8, 32000, 360),
    "stage1": (8, 64000, 4320),
    "hard_labels": (8, 32000, 360),
    "distill": (8, 64000, 4320),
    "evaluate": (8, 32000, 120),
    "report": (1, 2000, 10),
}
# The toy benchmark: training on two cores, inference single-threaded (runs side by side).
_TOY = {
    step: (2 if step in ("warmup", "stage1", "distill") else 1, 4000, 60)
    for step in _FULL
}
_TOY["report"] = (1, 2000, 10)
_TIERS = _TOY if TOY else _FULL


def threads_of(rule: str) -> int:
    return _TIERS[rule][0]


def resources_of(rule: str) -> dict:
    """mem_mb, runtime (minutes) and gpu of a rule; the site profile may override any of them."""
    _, mem_mb, runtime = _TIERS[rule]
    return {
        "mem_mb": mem_mb,
        "runtime": runtime,
        "gpu": 0 if rule in ("toycity", "report") else GPUS,
    }


def print_summaries() -> None:
    """After a successful run: each experiment's mIoU per stage and where its report is."""
    import os

    from proda.report import format_summary

    for p in PLANS.values():
        summary = f"{p.folder}/report/summary.csv"
        if os.path.exists(summary):
            print(f"Experiment {p.experiment}:")
            print(format_summary(summary))
            print(
                f"Report: {summary} (plots beside it); HTML: snakemake --report {p.folder}/report.html"
            )
