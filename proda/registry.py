"""The step registry: every pipeline step, declared once.

Each :class:`Step` says what the step is called, which artifacts it consumes (by role: the keyword
arguments of its function), which config keys make up its view (its identity: part of its folder
name, and the only settings its job receives), what it writes, its resource tier and the function
that runs it. Everything that needs to know the steps reads this table:

- :mod:`proda.config` builds each step's view from :attr:`Step.view`;
- :mod:`proda.plan` names every artifact from :attr:`Step.prefix` / :attr:`Step.output` and runs
  every per-model step (:attr:`Step.per_model`) on each stage's model;
- :mod:`proda.cli` makes one sub-command per step, with one ``--<role>`` option per input;
- :func:`proda.steps.run_step` runs a step by calling :attr:`Step.function` in its own process;
- ``workflow/rules/*.smk`` name their inputs by these roles (``tests/test_registry.py`` checks it).

Adding a step is an entry here, its function in :mod:`proda.steps` and (for the workflow) a rule;
docs/architecture.md walks through an example.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

TRAIN_LOG = "train.csv"  # the per-iteration log a training step writes beside its model.pt

# A view entry: a top-level config key, and the sub-keys of it the step reads (None: all of it).
ViewEntry = tuple[str, "tuple[str, ...] | None"]

_MODEL = ("model", ("backbone", "base_width", "head_channels"))      # the architecture
_TRAIN_DATA = ("data", ("n_class", "source", "target", "batch_size", "resize", "scale_range", "crop",
                        "hflip", "drop_last"))
_TARGET_DATA = ("data", ("n_class", "target", "batch_size"))
_NUMERICS = (("parity", None), ("precision", None), ("channels_last", None))
# training reads the shared loop's settings and, when train.val_every > 0, the evaluation split
_TRAINING = (*_NUMERICS, ("seed", None), _TRAIN_DATA, ("train", None), ("eval", None))

# Resource tiers: (threads, mem_mb, runtime in minutes) at the paper's scale (one GPU, 2048x1024
# images) and on the toy benchmark (CPU; inference single-threaded so that jobs run side by side).
TIERS: dict[str, dict[str, tuple[int, int, int]]] = {
    "paper": {"data": (8, 4000, 60), "train": (8, 64000, 4320), "labels": (8, 32000, 360),
              "evaluate": (8, 32000, 120), "report": (1, 2000, 10)},
    "toy": {"data": (1, 4000, 60), "train": (2, 4000, 60), "labels": (1, 4000, 60),
            "evaluate": (1, 4000, 60), "report": (1, 2000, 10)},
}


@dataclass(frozen=True)
class Step:
    """One pipeline step.

    ``consumes``: input artifacts by role, each the keyword argument of :attr:`function` that takes
    its path; ``optional``: the roles among them a plan may leave out. ``output``: ``"model"`` (a
    folder holding ``model.pt`` and ``train.csv``), ``"folder"`` or a file suffix (``".h5"``).
    ``per_model``: the plan runs it on every stage's model (its one role then names that model).
    ``rule``: the Snakemake rule that runs it (default: its name).
    """

    name: str
    help: str
    run: str                                # "module:function"
    view: tuple[ViewEntry, ...]
    output: str
    tier: str
    consumes: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    prefix: str = ""                        # the artifact's name prefix (default: the step's name)
    per_model: bool = False
    rule: str = ""

    @property
    def command(self) -> str:
        """The ``proda`` sub-command."""
        return self.name.replace("_", "-")

    @property
    def stem(self) -> str:
        """The artifact's name before ``-<digest>``."""
        return self.prefix or self.name

    @property
    def rule_name(self) -> str:
        return self.rule or self.name

    @property
    def trains(self) -> bool:
        """Whether the step trains a model (it resumes from ``<folder>/state/``)."""
        return self.output == "model"

    @property
    def function(self) -> Callable[..., Any]:
        """The function that runs the step: ``f(cfg, **inputs, out=..., [state_dir=...])``."""
        module, name = self.run.split(":")
        return getattr(importlib.import_module(module), name)

    def files(self, node: str) -> dict[str, str]:
        """What the step writes for the artifact ``node`` (name -> path): its main output first."""
        if self.output == "model":
            return {"model": f"{node}/model.pt", "log": f"{node}/{TRAIN_LOG}"}
        return {"out": node if self.output == "folder" else f"{node}{self.output}"}


def _distill(stage: str, help_: str) -> Step:
    return Step(stage, help_, f"proda.steps:{stage}", (*_TRAINING, ("model", None), (stage, None)), "model",
                "train", consumes=("teacher", "labels", "init"), optional=("init",), rule="distill")


STEPS: dict[str, Step] = {step.name: step for step in (
    Step("toycity", "generate the toy-city benchmark (data.toycity options)", "proda.steps:toycity",
         (("data", ("toycity",)),), "folder", "data"),
    Step("check_data", "every label of every split the run reads: ids and sizes (YAML report)",
         "proda.steps:check_data", (("data", ("n_class", "source", "target")), ("eval", ("split",)),
                                    ("report", ("label_quality",))), ".yaml", "data", prefix="check"),
    Step("warmup", "train the adversarial warm-up (or import warmup.checkpoint)", "proda.steps:warmup",
         (*_TRAINING, ("model", ("backbone", "base_width", "head_channels", "imagenet")), ("warmup", None)),
         "model", "train"),
    Step("soft_labels", "soft pseudo labels of the target train split (HDF5)", "proda.steps:soft_labels",
         (*_NUMERICS, _TARGET_DATA, ("soft_labels", None)), ".h5", "labels", consumes=("checkpoint",)),
    Step("prototypes", "initial class prototypes from the warm-up model (HDF5)", "proda.steps:prototypes",
         (*_NUMERICS, ("data", ("n_class", "source", "target", "batch_size")), ("prototypes", None)),
         ".h5", "labels", consumes=("checkpoint",)),
    Step("stage1", "stage 1: prototype-rectified self-training", "proda.steps:stage1",
         (*_TRAINING, _MODEL, ("stage1", None)), "model", "train",
         consumes=("warmup", "soft", "prototypes")),
    Step("hard_labels", "hard pseudo labels with flip averaging (HDF5)", "proda.steps:hard_labels",
         (*_NUMERICS, _TARGET_DATA, ("hard_labels", None)), ".h5", "labels", consumes=("checkpoint",)),
    _distill("stage2", "stage 2: self-training with distillation"),
    _distill("stage3", "stage 3: a second round of stage 2"),
    Step("evaluate", "per-class IoU on the target evaluation split (CSV)", "proda.steps:evaluate",
         (*_NUMERICS, _TARGET_DATA, ("eval", None)), ".csv", "evaluate", consumes=("checkpoint",),
         prefix="eval", per_model=True),
)}

#: The model stages of the chain, in order (each step whose output is a trained model).
STAGES: tuple[str, ...] = tuple(name for name, step in STEPS.items() if step.trains)


def step(name: str) -> Step:
    """The registered step ``name`` (a one-line error naming the known ones otherwise)."""
    try:
        return STEPS[name]
    except KeyError:
        raise ValueError(f"unknown step '{name}' (known: {', '.join(STEPS)})") from None
