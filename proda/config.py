"""Run configuration: defaults of every hyper-parameter, merging, validation, per-step views."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")
PRESETS_DIR = Path(__file__).resolve().parents[1] / "config"

# Keys that tune execution only (never the numbers an artifact holds).
EXECUTION_KEYS = {"device", "amp", "num_workers", "log_every"}

# Data keys that shape the training batches.
_TRAIN_DATA = ("n_class", "source", "target", "batch_size", "resize", "scale_range", "crop",
               "hflip", "drop_last")
_TARGET_DATA = ("n_class", "target")

# For each workflow step: the config entries its output depends on (section, optional sub-keys).
STEP_KEYS: dict[str, tuple[tuple[str, tuple[str, ...] | None], ...]] = {
    "toycity": (("data", ("toycity",)),),
    "warmup": (("parity", None), ("seed", None), ("data", _TRAIN_DATA), ("model", None),
               ("train", None), ("warmup", None)),
    "soft_labels": (("data", _TARGET_DATA), ("model", None), ("soft_labels", None)),
    "prototypes": (("parity", None), ("data", ("n_class", "source", "target", "batch_size")),
                   ("model", None), ("prototypes", None)),
    "stage1": (("parity", None), ("seed", None), ("data", _TRAIN_DATA), ("model", None),
               ("train", None), ("stage1", None)),
    "hard_labels": (("data", _TARGET_DATA), ("model", None), ("hard_labels", None)),
    "stage2": (("parity", None), ("seed", None), ("data", _TRAIN_DATA), ("model", None),
               ("train", None), ("stage2", None)),
    "stage3": (("parity", None), ("seed", None), ("data", _TRAIN_DATA), ("model", None),
               ("train", None), ("stage3", None)),
    "evaluate": (("data", _TARGET_DATA), ("model", None), ("eval", None)),
}


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or is missing."""


def load_defaults() -> dict[str, Any]:
    """The built-in defaults (a fresh copy)."""
    with open(DEFAULTS_PATH) as fh:
        return yaml.safe_load(fh)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (override wins)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check(value: Any, default: Any, key: str) -> None:
    """Raise ConfigError when ``value`` does not fit the type of ``default``."""
    if default is None or value is None:
        return
    if isinstance(default, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__}")
        if not default:  # open section (e.g. soft_labels: {})
            return
        for sub, sub_value in value.items():
            if sub not in default:
                raise ConfigError(f"unknown config key '{key}.{sub}'")
            _check(sub_value, default[sub], f"{key}.{sub}")
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
            ok = value.is_integer()
    elif isinstance(default, list):
        ok = isinstance(value, list) and len(value) == len(default)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"config key '{key}' has the wrong type: {value!r} "
                          f"(expected {type(default).__name__} like {default!r})")


def validate(config: Mapping[str, Any]) -> None:
    """Check every key of ``config`` against the defaults (unknown keys and wrong types)."""
    defaults = load_defaults()
    for key, value in config.items():
        if key not in defaults:
            raise ConfigError(f"unknown config key '{key}'")
        _check(value, defaults[key], key)


def resolve(*overrides: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """Defaults deep-merged with each override (a mapping or a YAML path), validated."""
    config = load_defaults()
    for item in overrides:
        if isinstance(item, (str, Path)):
            path = Path(item)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            with open(path) as fh:
                item = yaml.safe_load(fh) or {}
        validate(item)
        config = deep_merge(config, item)
    return config


def step_view(config: Mapping[str, Any], step: str) -> dict[str, Any]:
    """The part of ``config`` that determines the output of ``step`` (for Snakemake params)."""
    if step not in STEP_KEYS:
        raise ConfigError(f"unknown workflow step '{step}' (known: {', '.join(STEP_KEYS)})")
    view: dict[str, Any] = {}
    for section, subkeys in STEP_KEYS[step]:
        value = config.get(section)
        if subkeys is not None:
            value = {k: value[k] for k in subkeys if k in value}
        elif isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in EXECUTION_KEYS}
        view[section] = copy.deepcopy(value)
    return view


def complete(view: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A full config from a step view (missing keys from the defaults) plus execution settings."""
    return deep_merge(deep_merge(load_defaults(), view), extra or {})

