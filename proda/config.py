"""Run configuration: defaults (from the schema), merging, the one validation, per-step views.

The schema ``proda/config.schema.yaml`` is the single source of truth: it lists every key with its
type, allowed values and default. :func:`resolve` (the CLI) and the Snakefile both build a config
as defaults <- YAML files in order, then run :func:`validate`, which checks the schema and then
everything that can be checked before a job runs (crop multiples, class count against the
datasets, the weight files, every dataset split the run reads).
"""
from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")

# Keys that tune execution only (never the numbers an artifact holds): part of no step view. The
# step views themselves are declared in the step registry (proda/registry.py).
EXECUTION_KEYS = {"device", "num_workers", "log_every", "checkpoint_every", "max_nonfinite_skips"}


# The confidence levels hard-label stores keep exactly (proda.pseudo_labels): the thresholds allowed.
THRESHOLD_LEVELS: tuple[float, ...] = tuple(round(0.5 + 0.01 * i, 2) for i in range(50))


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type or value, or names a missing file."""


# ------------------------------------------------------------------------------ schema and defaults
@functools.cache
def _schema() -> dict[str, Any]:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def schema() -> dict[str, Any]:
    """The configuration schema (a fresh copy)."""
    return copy.deepcopy(_schema())


def _resolved(node: Mapping[str, Any]) -> dict[str, Any]:
    """A schema node with its ``$ref`` / ``allOf`` parts merged in (their properties included)."""
    parts = [node]
    if "$ref" in node:
        parts.insert(0, _schema()["$defs"][node["$ref"].rsplit("/", 1)[1]])
    for sub in node.get("allOf", []):
        parts.insert(0, _resolved(sub))
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key == "properties":
                props = out.setdefault("properties", {})
                for name, prop in value.items():
                    props[name] = {**props.get(name, {}), **prop}
            elif key not in ("$ref", "allOf"):
                out[key] = value
    return out


def properties(node: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The resolved child schemas of an object schema node, in file order."""
    return {name: _resolved(prop) for name, prop in _resolved(node).get("properties", {}).items()}


def _defaults_of(node: Mapping[str, Any]) -> Any:
    node = _resolved(node)
    if "default" in node:
        return copy.deepcopy(node["default"])
    return {name: _defaults_of(prop) for name, prop in node.get("properties", {}).items()}


def load_defaults() -> dict[str, Any]:
    """Every key with its default value, read from the schema (a fresh copy)."""
    return _defaults_of(_schema())


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (override wins)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ------------------------------------------------------------------------------ validation
def _schema_message(error: jsonschema.ValidationError) -> str:
    """One line naming the offending key of a schema error."""
    path = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(properties(error.schema)))
        return f"unknown config key '{'.'.join(path + extra[:1])}'"
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return f"missing config key '{'.'.join(path + missing[:1])}'"
    if "x-message" in error.schema:  # the schema's own words for a rule its regex states poorly
        return f"config key '{'.'.join(path)}' {error.schema['x-message']}, got {error.instance!r}"
    return f"config key '{'.'.join(path)}': {error.message}"


def _schema_problems(cfg: Mapping[str, Any]) -> Iterator[str]:
    validator = jsonschema.Draft202012Validator(_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(cfg))
    if error is not None:
        yield _schema_message(error)


def _value_problems(cfg: Mapping[str, Any]) -> Iterator[str]:
    """Checks across keys that the schema cannot express."""
    data = cfg["data"]
    if any(v % 8 for v in data["crop"]):
        yield f"config key 'data.crop' must hold multiples of 8 (the output stride), got {data['crop']}"
    if data["source"]["dataset"] == "gta5" and data["n_class"] != 19:
        yield f"config key 'data.n_class' is {data['n_class']}, but GTA5 labels always have 19 classes"
    if data["toycity"] is not None:
        layout = data["toycity"].get("source_layout", "gta5")
        for side, kind in (("source", layout), ("target", "cityscapes")):
            if data[side]["dataset"] != kind:
                yield f"config key 'data.{side}.dataset' must be '{kind}' for this data.toycity benchmark"
    for stage in ("stage2", "stage3"):
        threshold = cfg[stage]["threshold"]
        if threshold > 0 and not _on_threshold_grid(threshold):
            yield (f"config key '{stage}.threshold' must be <= 0 (keep every pixel) or one of 0.50, 0.51, ..., "
                   f"0.99 (the levels hard-label stores keep exactly), got {threshold}")
        init = cfg[stage]["student_init"]
        if init in ("simclr", "imagenet") and cfg["model"][init] is None:
            yield f"config key 'model.{init}' must name a file when {stage}.student_init is '{init}'"


def _on_threshold_grid(value: float) -> bool:
    """Whether a hard-label threshold is one of the stores' levels 0.50 ... 0.99."""
    return any(abs(value - level) < 1e-9 for level in THRESHOLD_LEVELS)


def _file_problems(cfg: Mapping[str, Any]) -> Iterator[str]:
    for key in ("warmup.checkpoint", "model.imagenet", "model.simclr"):
        section, name = key.split(".")
        path = cfg[section][name]
        if path is not None and not os.path.isfile(path):
            yield f"config key '{key}': file not found: {path}"


def _dataset_problems(cfg: Mapping[str, Any]) -> Iterator[str]:
    """Every split the run reads exists, is not empty and has its labels (real datasets only;
    the toy benchmark is generated by the workflow)."""
    from proda.data import DatasetError, build_dataset

    data = cfg["data"]
    if data["toycity"] is not None:
        return
    reads = [("source", "train", True), ("target", "train", bool(cfg["report"]["label_quality"])),
             ("target", cfg["eval"]["split"], True)]
    for side, split, labels in reads:
        spec = data[side]
        if not os.path.isdir(spec["root"]):
            yield f"config key 'data.{side}.root': directory not found: {spec['root']}"
            return
        try:
            build_dataset(spec["dataset"], spec["root"], split=split, n_class=data["n_class"], labels=labels)
        except (DatasetError, ValueError) as err:
            yield f"config key 'data.{side}.root' ({spec['dataset']} {split}): {err}"
            return


CHECKS = ("schema", "values", "files")


def problems(cfg: Mapping[str, Any], *, checks: str = "files") -> Iterator[str]:
    """Every problem of a complete config, one line each: the schema, then (``checks`` "values")
    the cross-key rules, then (``checks`` "files", the default) the files and dataset splits.
    Later checks only run on a config that fits the schema."""
    level = CHECKS.index(checks)
    found = list(_schema_problems(cfg))
    if found:
        yield from found
        return
    if level >= 1:
        yield from _value_problems(cfg)
    if level >= 2:
        yield from _file_problems(cfg)
        yield from _dataset_problems(cfg)


def validate(cfg: Mapping[str, Any], *, checks: str = "files") -> None:
    """Raise :class:`ConfigError` with the first problem of a complete config (one line).

    The workflow (before any job) and the CLI run this same function with every check, once; a
    job the workflow launches gets its part of that validated config and checks nothing again."""
    first = next(problems(cfg, checks=checks), None)
    if first is not None:
        raise ConfigError(first)


def effective(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config as steps see it: ``parity`` runs in fp32 (the official code has no autocast)."""
    out = copy.deepcopy(dict(cfg))
    if out.get("parity"):
        out["precision"] = "fp32"
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML config file as a mapping (one-line errors naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def resolve(*overrides: Mapping[str, Any] | str | Path, checks: str = "files") -> dict[str, Any]:
    """Defaults deep-merged with each override (a mapping or a YAML path), validated, effective."""
    config = load_defaults()
    for item in overrides:
        config = deep_merge(config, read_yaml(item) if isinstance(item, (str, Path)) else item)
    validate(config, checks=checks)
    return effective(config)


# ------------------------------------------------------------------------------ step views
def _sorted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _sorted(value[k]) for k in sorted(value)}
    return value


def step_view(config: Mapping[str, Any], step: str) -> dict[str, Any]:
    """The part of ``config`` that determines the output of ``step`` (its registry view, keys sorted):
    the settings its job receives and the identity its folder is named after."""
    from proda.registry import STEPS

    if step not in STEPS:
        raise ConfigError(f"unknown workflow step '{step}' (known: {', '.join(STEPS)})")
    view: dict[str, Any] = {}
    for section, subkeys in STEPS[step].view:
        value = config.get(section)
        if subkeys is not None:
            value = {k: value[k] for k in subkeys if k in value}
        elif isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in EXECUTION_KEYS}
        view[section] = copy.deepcopy(value)
    return _sorted(view)


def job_config(view: Mapping[str, Any], execution: Mapping[str, Any]) -> dict[str, Any]:
    """What a workflow job runs on: its step view with the run's execution-only settings added
    beside it (:func:`execution_settings`: keys no view holds, so nothing is overridden, and no
    defaults are merged in again)."""
    out = copy.deepcopy(dict(view))
    for key, value in execution.items():
        if isinstance(value, Mapping):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


def without_execution(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without its execution-only keys and the ``predict`` target (what a job that reads
    the whole run's config tracks)."""
    out = {k: v for k, v in config.items() if k not in EXECUTION_KEYS | {"unsafe_pickle", "predict"}}
    for section in ("data", "train"):
        out[section] = {k: v for k, v in config[section].items() if k not in EXECUTION_KEYS}
    return _sorted(out)


def execution_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The execution-only part of a config (what a step view leaves out)."""
    return {"device": config["device"], "unsafe_pickle": config["unsafe_pickle"],
            "data": {"num_workers": config["data"]["num_workers"]},
            "train": {"log_every": config["train"]["log_every"],
                      "checkpoint_every": config["train"]["checkpoint_every"],
                      "max_nonfinite_skips": config["train"]["max_nonfinite_skips"]}}


# ------------------------------------------------------------------------------ documentation
def _doc_rows(node: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    for name, prop in properties(node).items():
        key = f"{prefix}{name}"
        if prop.get("type") == "object" or "properties" in prop and "default" not in prop:
            if prop.get("description"):
                yield key, "section", "", prop["description"]
            yield from _doc_rows(prop, f"{key}.")
            continue
        kind = " \\| ".join(map(str, prop["enum"])) if "enum" in prop else _type_name(prop)
        default = yaml.safe_dump(prop.get("default"), default_flow_style=True).strip().removesuffix("...").strip()
        yield key, kind, default, prop.get("description", "")


def _type_name(prop: Mapping[str, Any]) -> str:
    kinds = prop.get("type", "")
    text = " or ".join(kinds) if isinstance(kinds, list) else str(kinds)
    if "minimum" in prop or "exclusiveMinimum" in prop or "maximum" in prop:
        lo = prop.get("minimum", prop.get("exclusiveMinimum"))
        hi = prop.get("maximum")
        bounds = f"{'>' if 'exclusiveMinimum' in prop else '>='} {lo}" if lo is not None else ""
        if hi is not None:
            bounds += f"{', ' if bounds else ''}<= {hi}"
        text += f" ({bounds})"
    return text


def config_docs() -> str:
    """config/README.md: every key with its type, default and meaning, generated from the schema."""
    lines = ["# Configuration keys", "",
             "Generated from `proda/config.schema.yaml` by `proda config-docs > config/README.md`; do not",
             "edit by hand. A run's config is these defaults, deep-merged with `config.yaml` (the toy",
             "benchmark) or a preset of this folder, then any further `--configfile`. Keys marked",
             "*execution only* never change an artifact; every other key is part of the identity of",
             "the steps it affects (docs/method.md says which equation each key controls).", "",
             "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, kind, default, text in _doc_rows(_schema()):
        lines.append(f"| `{key}` | {kind} | {f'`{default}`' if default else ''} | {text} |")
    return "\n".join(lines) + "\n"
