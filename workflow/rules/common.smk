"""Shared by every rule: the input, params and resource functions over the plan (STUDY, made in
the Snakefile from the validated CONFIG). Defines no rules.

Every artifact's path carries its provenance (results_dir/runs/warmup-<h>/stage1-<h>/...): a
rule's output pattern has one wildcard `node` (the artifact's folder, or its file path without the
suffix), constrained to the nodes the plan holds for that step. Each rule names its inputs by the
roles of the step registry (proda/registry.py); `artifact(role)` looks the path up in the plan.
"""

import re

from proda.config import without_execution
from proda.plan import ABLATIONS, toycity_folder
from proda.registry import STEPS, TIERS


def _check_device(cfg: dict) -> None:
    """`device: cuda` where jobs run on this machine and it sees no GPU: one line before any job
    (a cluster's login node is not checked: its jobs run elsewhere)."""
    if cfg["device"] != "cuda" or not workflow.local_exec or workflow.remote_exec:
        return
    import torch

    if not torch.cuda.is_available():
        raise WorkflowError(
            "Invalid configuration: config key 'device' is cuda, but this machine, where the jobs "
            "run, sees no CUDA device (use device: auto or cpu, or a cluster profile)"
        )


_check_device(CONFIG)
PLANS = STUDY.plans
REPORTS = STUDY.reports()  # run folder -> plan, for each seed's full chain
ARTIFACTS = STUDY.artifacts
TOY = CONFIG["data"]["toycity"] is not None
QUALITY = bool(CONFIG["report"]["label_quality"])
DATA = (
    {"data": toycity_folder(CONFIG)} if TOY else {}
)  # the generated benchmark, an input of data readers


def nodes_of(*steps: str) -> str:
    """Regex matching exactly the planned artifacts of these steps (any other target is
    "no rule to produce it", not a traceback)."""
    nodes = [node for node, art in ARTIFACTS.items() if art.step in steps]
    return "|".join(map(re.escape, nodes)) or "(?!)"


def folders_pattern(folders) -> str:
    """Regex matching exactly the given folders."""
    return "|".join(map(re.escape, folders)) or "(?!)"


def artifact(role: str):
    """Input function of the input `role` of a step: its path in the plan ([] where the job has none)."""

    def path_of(wildcards) -> list:
        path = ARTIFACTS[wildcards.node].inputs.get(role)
        return [path] if path else []

    path_of.__name__ = f"artifact_{role}"
    return path_of


def evals_of(wildcards) -> dict:
    """The report's inputs: each stage's evaluation CSV of the run."""
    return REPORTS[wildcards.folder].evals


def run_config_of(wildcards) -> dict:
    """The run's whole config (for the jobs that read several sections), execution keys left out."""
    return without_execution(REPORTS[wildcards.folder].config)


def quality_inputs(wildcards) -> dict:
    """The pseudo-label artifacts of the run and the models that made them."""
    p = REPORTS[wildcards.folder]
    models = {s: f"{p.models[s]}/model.pt" for s in ("warmup", "stage1")}
    return {**models, **p.pseudo, **DATA}


def figure_inputs(wildcards) -> dict:
    """Every stage's model and training log of the run."""
    p = REPORTS[wildcards.folder]
    models = {f"model_{s}": f"{folder}/model.pt" for s, folder in p.models.items()}
    logs = {f"log_{s}": path for s, path in p.train_logs.items()}
    return {**models, **logs, **DATA}


def study_inputs(wildcards) -> dict:
    """Each seed's summary (and label quality), the bounds' and the ablations' evaluations."""
    files = {}
    for seed, name in STUDY.main.items():
        files[f"summary_{seed}"] = f"{PLANS[name].folder}/report/summary.csv"
        if QUALITY:
            files[f"quality_{seed}"] = f"{PLANS[name].folder}/label_quality.csv"
    for bound, runs in STUDY.bounds.items():
        files.update(
            {
                f"{bound}_{seed}": PLANS[name].evals["warmup"]
                for seed, name in runs.items()
            }
        )
    for ablation, runs in STUDY.ablations.items():
        stage = ABLATIONS[ablation][0]
        files.update(
            {
                f"{ablation}_{seed}": PLANS[name].evals[stage]
                for seed, name in runs.items()
            }
        )
    return files


def study_outputs() -> dict:
    """The study report's files (bounds, ablations and label quality only when configured)."""
    names = {"summary": "seed_summary.csv", "plot": "seed_summary.png"}
    names |= {"bounds": "bounds.csv"} if STUDY.bounds else {}
    names |= {"ablations": "ablations.csv"} if STUDY.ablations else {}
    names |= {"quality": "label_quality.csv"} if QUALITY else {}
    return {key: f"{STUDY.folder}/study/{name}" for key, name in names.items()}


def study_report_outputs() -> dict:
    """:func:`study_outputs` marked for the HTML report, each with its caption."""
    return {
        key: report(path, category="Study", caption=f"../report/study_{key}.rst")
        for key, path in study_outputs().items()
    }


def study_layout() -> dict:
    """How the study report reads its inputs: names of the bounds and the ablations' rows."""
    return {
        "seeds": list(STUDY.main),
        "bounds": list(STUDY.bounds),
        "ablations": {a: list(ABLATIONS[a][::2]) for a in STUDY.ablations},
        "quality": QUALITY,
    }


def final_targets() -> list:
    """What `all` asks for, each file once: every run's manifest and artifacts (a deleted one is
    rebuilt), the report, pictures and label quality of each seed's run, and the study report.
    """
    files = []
    for folder, p in PLANS.items():
        files += [f"{p.folder}/manifest.yaml", *p.targets()]
    for folder in REPORTS:
        files += [
            f"{folder}/report/summary.csv",
            f"{folder}/report/prediction_grid.png",
        ]
        files += [f"{folder}/label_quality.csv"] if QUALITY else []
    files += list(study_outputs().values()) if STUDY.aggregated else []
    return list(dict.fromkeys(files))


def manifest_of(wildcards) -> dict:
    """What one run uses (proda prune keeps exactly the folders manifests name)."""
    return PLAN_FOLDERS[wildcards.folder].manifest()


PLAN_FOLDERS = {p.folder: p for p in PLANS.values()}


# ---- resources ----
# GPUs per model job: none on CPU; `auto` asks for one except on the toy benchmark (a CPU demo).
# For multi-GPU training raise `gpu` of a training rule (slurm/config.yaml set-resources, or
# --set-resources stage1:gpu=4): its worker then launches torchrun with one process per GPU.
GPUS = {"cpu": 0, "cuda": 1, "auto": 0 if TOY else 1}[CONFIG["device"]]
# (threads, mem_mb, runtime in minutes) of each resource tier of the step registry
_TIERS = TIERS["toy" if TOY else "paper"]


def tier_of(name: str) -> str:
    """The resource tier of a registered step, or a tier's own name (the report rules)."""
    return STEPS[name].tier if name in STEPS else name


def threads_of(name: str) -> int:
    return _TIERS[tier_of(name)][0]


def resources_of(name: str) -> dict:
    """mem_mb, runtime (minutes) and gpu of a step (or tier); the site profile may override any."""
    _, mem_mb, runtime = _TIERS[tier_of(name)]
    return {
        "mem_mb": mem_mb,
        "runtime": runtime,
        "gpu": 0 if tier_of(name) in ("data", "report") else GPUS,
    }


def print_summaries() -> None:
    """After a successful run: each run's mIoU per stage, the study's mean and std over seeds,
    and where the report is."""
    import os

    from proda.report import format_seed_summary, format_summary

    for folder in REPORTS:
        summary = f"{folder}/report/summary.csv"
        if os.path.exists(summary):
            print(f"Run {folder}:")
            print(format_summary(summary))
    seeds = study_outputs()["summary"]
    if STUDY.aggregated and os.path.exists(seeds):
        print(f"Experiment {STUDY.folder}, mean ± std over seeds:")
        print(format_seed_summary(seeds))
    print(
        f"Report: {STUDY.folder}/ (tables and plots); HTML: snakemake --report {STUDY.folder}/report.html"
    )


# ---- the optional predict target (workflow/rules/predict.smk) ----
PREDICT = CONFIG["predict"]


def predict_folder() -> str:
    """Where the predictions go: <results_dir>/<experiment>/predict/<stage>."""
    return f"{STUDY.folder}/predict/{PREDICT['stage']}"


def predict_model() -> str:
    """The chosen stage's model of the first run (the first seed's, in a study)."""
    first = next(iter(REPORTS.values()))
    return f"{first.models[PREDICT['stage']]}/model.pt"


def predict_images_list() -> list:
    """Every image of `predict.images`: inputs, so a new or changed image redoes the job."""
    from proda.predict import (
        PredictError,
        find_images,
    )  # torch: only when predict.images is set

    try:
        return [str(item.source) for item in find_images([PREDICT["images"]])]
    except PredictError as err:
        raise WorkflowError(f"config key 'predict.images': {err}") from None


def predict_report_outputs() -> dict:
    """Copies of a few overlays (evenly spaced through the folder), marked for the report."""
    from proda.predict import report_items, report_name

    count = PREDICT["overlays_in_report"]
    items = report_items(PREDICT["images"], count) if count else []
    return {
        f"overlay_{i}": report(
            f"{STUDY.folder}/report/predictions/{report_name(item)}",
            category="Predictions",
            caption="../report/predictions.rst",
        )
        for i, item in enumerate(items)
    }


def predict_targets() -> list:
    """What `all` asks for: the predictions and the report's overlays (none without images)."""
    if not PREDICT["images"]:
        return []
    return [predict_folder(), *predict_report_outputs().values()]
