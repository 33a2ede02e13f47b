"""Shared by every rule: the complete validated config, result paths, per-step params,
inputs and resources. Defines no rules."""
import hashlib
import json
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from proda.config import deep_merge, load_defaults, step_view


# ---- configuration: proda/defaults.yaml <- config.yaml <- --configfile ... <- --config ... ----
def _schema_message(error) -> str:
    """One line naming the offending key of a jsonschema ValidationError."""
    path = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"unknown config key '{'.'.join(path + extra[:1])}'"
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return f"missing config key '{'.'.join(path + missing[:1])}'"
    return f"config key '{'.'.join(path)}': {error.message}"


def _config_problem(cfg: dict):
    """The first problem of a complete config, as one line naming the key; None if it is fine.
    Schema first (unknown keys, types, enums), then the paths the run reads."""
    try:
        validate(cfg, "../schemas/config.schema.yaml", set_default=False)
    except WorkflowError as exc:  # snakemake wraps the jsonschema error: report it concisely
        cause = exc.__context__
        return _schema_message(cause) if hasattr(cause, "absolute_path") else str(exc)
    data = cfg["data"]
    if data["toycity"] is None:
        for side in ("source", "target"):
            if not os.path.isdir(data[side]["root"]):
                return f"config key 'data.{side}.root': directory not found: {data[side]['root']}"
    else:
        for side, kind in (("source", "gta5"), ("target", "cityscapes")):
            if data[side]["dataset"] != kind:
                return f"config key 'data.{side}.dataset' must be '{kind}' when data.toycity is set"
    for key in ("warmup.checkpoint", "model.imagenet", "model.simclr"):
        section, name = key.split(".")
        if cfg[section][name] is not None and not os.path.isfile(cfg[section][name]):
            return f"config key '{key}': file not found: {cfg[section][name]}"
    for stage in ("stage2", "stage3"):
        if cfg[stage]["student_init"] == "simclr" and cfg["model"]["simclr"] is None:
            return f"config key 'model.simclr' must be set when {stage}.student_init is 'simclr'"
    return None


_complete = deep_merge(load_defaults(), config)
config.clear()
config.update(_complete)
_problem = _config_problem(config)
if _problem:
    raise WorkflowError(f"Invalid configuration: {_problem}")


def digest(value) -> str:
    """Short content hash of a JSON-able value (names shared, content-addressed folders)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


# ---- paths ----
RES = f"{config['results_dir']}/{config['experiment']}"
STAGES = ["warmup", "stage1", "stage2", "stage3"]
TOY = config["data"]["toycity"] is not None
# The toy benchmark is generated once per option set, outside RES, so experiments sharing one
# results_dir reuse it; both dataset roots then point at it (and so enter every step's params).
DATA = f"{config['results_dir']}/data/toycity-{digest(config['data']['toycity'])}" if TOY else None
if TOY:
    config["data"]["source"]["root"] = f"{DATA}/gta5"
    config["data"]["target"]["root"] = f"{DATA}/cityscapes"


wildcard_constraints:
    stage="|".join(STAGES),


def sorted_dict(value):
    """Keys sorted recursively, so params compare equal however the YAML files ordered them."""
    if isinstance(value, dict):
        return {k: sorted_dict(value[k]) for k in sorted(value)}
    return value


def view(step: str) -> dict:
    """The config values that determine `step`'s output: a rule's `params: cfg=` (rerun trigger)."""
    return sorted_dict(step_view(config, step))


# ---- provenance keys: sharing artifacts between experiments of one results_dir ----
# KEYS[job] digests the job's step view, the keys of the jobs it consumes and the identity of
# external files (warm-up checkpoint, pretrained weights). Workers file each finished artifact
# under <results_dir>/store/<rule>-<key>/ and, when another experiment already filed one with the
# same key (and the same proda code), symlink it instead of recomputing (_worker.py). The job
# still appears in a dry-run; it just finishes in seconds.
def _file_id(path):
    if path is None:
        return None
    stat = os.stat(path)
    return [os.path.realpath(path), stat.st_size, stat.st_mtime_ns]


def _student_init_key(keys: dict, stage: str):
    init = config[stage]["student_init"]
    if init == "warmup_backbone":
        return keys["warmup"]
    return _file_id(config["model"][init]) if init in ("simclr", "imagenet") else None


def _provenance_keys() -> dict:
    keys = {}
    external = config["warmup"]["checkpoint"] or config["model"]["imagenet"]
    keys["warmup"] = digest([view("warmup"), _file_id(external)])
    keys["soft_labels"] = digest([view("soft_labels"), keys["warmup"]])
    keys["prototypes"] = digest([view("prototypes"), keys["warmup"]])
    keys["stage1"] = digest([view("stage1"), keys["warmup"], keys["soft_labels"], keys["prototypes"]])
    for teacher, stage in (("stage1", "stage2"), ("stage2", "stage3")):
        keys[f"hard_labels_{teacher}"] = digest([view("hard_labels"), keys[teacher]])
        keys[stage] = digest([view(stage), keys[teacher], keys[f"hard_labels_{teacher}"],
                              _student_init_key(keys, stage)])
    for stage in STAGES:
        keys[f"evaluate_{stage}"] = digest([view("evaluate"), keys[stage]])
    return keys


KEYS = _provenance_keys()


def data_input() -> list:
    """The generated toy dataset when used (real datasets are params, not tracked files)."""
    return [DATA] if TOY else []


def warmup_input() -> dict:
    """warmup.checkpoint when importing one, else the data and the ImageNet weights (if set)."""
    if config["warmup"]["checkpoint"] is not None:
        return {"checkpoint": config["warmup"]["checkpoint"]}
    files = {"data": data_input()}
    if config["model"]["imagenet"] is not None:
        files["weights"] = config["model"]["imagenet"]
    return files


def student_init_input(stage: str) -> dict:
    """Files the student of a distillation stage starts from."""
    init = config[stage]["student_init"]
    if init == "warmup_backbone":
        return {"init": f"{RES}/warmup/model.pt"}
    if init in ("simclr", "imagenet") and config["model"][init] is not None:
        return {"weights": config["model"][init]}
    return {}


# ---- resources ----
# GPUs per model job: none on CPU; `auto` asks for one except on the toy benchmark (a CPU demo).
# For multi-GPU training raise `gpu` of a training rule (slurm/config.yaml set-resources, or
# --set-resources stage1:gpu=4): its worker then launches torchrun with one process per GPU.
GPUS = {"cpu": 0, "cuda": 1, "auto": 0 if TOY else 1}[config["device"]]
# (threads, mem_mb, runtime in minutes) of paper-scale runs (one GPU, 2048x1024 images).
_FULL = {
    "toycity": (1, 4000, 60),
    "warmup": (8, 64000, 4320),
    "soft_labels": (8, 32000, 360),
    "prototypes": (8, 32000, 360),
    "stage1": (8, 64000, 4320),
    "hard_labels": (8, 32000, 360),
    "stage2": (8, 64000, 4320),
    "stage3": (8, 64000, 4320),
    "evaluate": (8, 32000, 120),
    "report": (1, 2000, 10),
}
# The toy benchmark: training on two cores, inference single-threaded (runs side by side).
_TOY = {step: (2 if step.startswith(("warmup", "stage")) else 1, 4000, 60) for step in _FULL}
_TOY["report"] = (1, 2000, 10)
_TIERS = _TOY if TOY else _FULL


def threads_of(step: str) -> int:
    return _TIERS[step][0]


def resources_of(step: str) -> dict:
    """mem_mb, runtime (minutes) and gpu of a rule; the site profile may override any of them."""
    _, mem_mb, runtime = _TIERS[step]
    gpu = 0 if step in ("toycity", "report") else GPUS
    return {"mem_mb": mem_mb, "runtime": runtime, "gpu": gpu}


def log_of(name: str) -> str:
    return f"{RES}/logs/{name}.log"


def benchmark_of(name: str) -> str:
    return f"{RES}/benchmarks/{name}.tsv"
