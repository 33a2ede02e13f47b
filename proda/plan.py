"""Where every artifact of an experiment lives: provenance in the path.

ProDA is a chain, so each step's folder is nested under the folder of the step it continues and
named after the digest of its own config view and its other inputs::

    <results>/runs/warmup-<h>/model.pt                     h = digest(warm-up view, external weights)
    <results>/runs/warmup-<h>/soft_labels-<h>.h5           soft pseudo labels of that warm-up model
    <results>/runs/warmup-<h>/prototypes-<h>.h5
    <results>/runs/warmup-<h>/stage1-<h>/model.pt          h = digest(stage-1 view, soft labels, prototypes)
    <results>/runs/warmup-<h>/stage1-<h>/hard_labels-<h>.h5
    <results>/runs/warmup-<h>/stage1-<h>/stage2-<h>/...    and so on; eval-<h>.csv beside each model
    <results>/<experiment>/eval/<stage>.csv, report/, manifest.yaml

Two experiments whose upstream config is identical therefore name the same folders (Snakemake
builds them once), a changed value names a new folder (its old one stays, so switching back
finds it), and a deleted folder is simply rebuilt. :func:`plan` is the only place that says
which artifact fills which input role of a step (the roles, names and views come from the step
registry, proda/registry.py): the Snakemake rules take their input paths from it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from proda.config import step_view
from proda.files import digest
from proda.registry import STAGES, STEPS

DIGEST = "[0-9a-f]{12}"  # the name suffix of every artifact (proda.files.digest)


@dataclass(frozen=True)
class Artifact:
    """One job's output: ``node`` is its folder (models) or its file path without the suffix."""

    step: str
    node: str
    inputs: dict[str, str] = field(default_factory=dict)
    view: dict[str, Any] = field(default_factory=dict)

    @property
    def output(self) -> str:
        """The artifact's main file (a model folder's model.pt; the toy benchmark's folder)."""
        return next(iter(STEPS[self.step].files(self.node).values()))


@dataclass
class Plan:
    """Every artifact one experiment needs, keyed by node, plus the experiment's own files."""

    experiment: str
    folder: str                                   # <results>/<experiment>
    config: dict[str, Any] = field(default_factory=dict)   # the run's config (dataset roots resolved)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)   # stage -> model folder
    per_model: dict[str, dict[str, str]] = field(default_factory=dict)  # per-model step -> stage -> file
    pseudo: dict[str, str] = field(default_factory=dict)   # soft, prototypes, hard_stage1, hard_stage2 files

    @property
    def evals(self) -> dict[str, str]:
        """stage -> its evaluation CSV."""
        return self.per_model.get("evaluate", {})

    @property
    def train_logs(self) -> dict[str, str]:
        """stage -> the per-iteration log of its training."""
        return {stage: f"{folder}/train.csv" for stage, folder in self.models.items()}

    def add(self, step: str, node: str, inputs: Mapping[str, str], view: Mapping[str, Any]) -> Artifact:
        art = Artifact(step, node, dict(inputs), dict(view))
        self.artifacts[node] = art
        return art

    def targets(self) -> list[str]:
        """Every artifact's main file: an experiment keeps all of them, so a deleted one is rebuilt
        (Snakemake does not rebuild a missing intermediate file whose consumers are up to date)."""
        return [art.output for art in self.artifacts.values()]

    def manifest(self) -> dict[str, Any]:
        """What the run uses, relative to the results_dir: each stage's model and evaluation CSV,
        and every artifact (``proda prune`` keeps exactly the folders manifests name)."""
        root = self.config["results_dir"]

        def rel(path: str) -> str:
            return os.path.relpath(path, root)

        return {"experiment": self.experiment,
                "stages": {s: {"model": rel(f"{self.models[s]}/model.pt"), "eval": rel(self.evals[s])}
                           for s in self.models},
                "artifacts": sorted(map(rel, self.artifacts))}


def _external(path: str | None) -> list[Any] | None:
    """Identity of a file the user names (weights): its absolute path and size."""
    if path is None:
        return None
    return [os.path.abspath(path), os.path.getsize(path) if os.path.isfile(path) else None]


def _child(parent: str, name: str, *parts: Any) -> str:
    return f"{parent}/{name}-{digest(list(parts))}"


def toycity_folder(cfg: Mapping[str, Any]) -> str | None:
    """The generated toy benchmark's folder, or None for real datasets."""
    from proda.data.toycity import FORMAT_VERSION

    options = cfg["data"]["toycity"]
    if options is None:
        return None
    # the generator's format version is part of the name: a changed generator names new folders;
    # source_lighting 0 writes the same files as no source_lighting, so it names the same folder
    named = {k: v for k, v in options.items() if not (k == "source_lighting" and not v)}
    return f"{cfg['results_dir']}/data/toycity-{digest({**named, 'version': FORMAT_VERSION})}"


def with_toy_roots(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with both dataset roots pointing into the generated toy benchmark (if any)."""
    import copy

    out = copy.deepcopy(dict(cfg))
    folder = toycity_folder(cfg)
    if folder is not None:
        out["data"]["source"]["root"] = f"{folder}/{cfg['data']['toycity'].get('source_layout', 'gta5')}"
        out["data"]["target"]["root"] = f"{folder}/cityscapes"
    return out


def plan(cfg: Mapping[str, Any], *, folder: str | None = None, last: str = "stage3", oracle: bool = False) -> Plan:
    """The artifacts of the experiment ``cfg`` describes (a complete, validated config), up to the
    stage ``last``; its own files go to ``folder`` (default ``<results_dir>/<experiment>``).
    ``oracle``: the warm-up is trained on the target train split with its labels instead."""
    cfg = with_toy_roots(cfg)
    if oracle:
        cfg["data"]["source"] = dict(cfg["data"]["target"])
    res = cfg["results_dir"]
    p = Plan(cfg["experiment"], folder or f"{res}/{cfg['experiment']}", config=cfg)
    data = {}
    toy = toycity_folder(cfg)
    if toy is not None:
        p.add("toycity", toy, {}, step_view(cfg, "toycity"))
        data = {"data": toy}

    def view(step: str) -> dict[str, Any]:
        return step_view(cfg, step)

    checked = p.add("check_data", _child(f"{res}/data", "check", view("check_data")), data, view("check_data")).output
    given = cfg["warmup"]["checkpoint"]
    warm_inputs = {"checkpoint": given} if given else {**data, **_weights(cfg["model"]["imagenet"], "weights")}
    warm_inputs["checked"] = checked  # every label the run reads is checked before the first training
    warmup = p.add("warmup", _child(f"{res}/runs", "warmup", view("warmup"), _external(given or cfg["model"]["imagenet"])),
                   warm_inputs, view("warmup")).node
    p.models["warmup"] = warmup
    if last != "warmup":
        soft = _file_artifact(p, "soft_labels", warmup, {"checkpoint": f"{warmup}/model.pt", **data})
        protos = _file_artifact(p, "prototypes", warmup, {"checkpoint": f"{warmup}/model.pt", **data})
        stage1 = p.add("stage1", _child(warmup, "stage1", view("stage1"), _name(soft), _name(protos)),
                       {"warmup": f"{warmup}/model.pt", "soft": soft, "prototypes": protos, **data},
                       view("stage1")).node
        p.models["stage1"] = stage1
        p.pseudo.update(soft=soft, prototypes=protos)
    for stage in STAGES[2:STAGES.index(last) + 1]:
        before = STAGES[STAGES.index(stage) - 1]
        teacher = p.models[before]
        hard = _file_artifact(p, "hard_labels", teacher, {"checkpoint": f"{teacher}/model.pt", **data})
        p.pseudo[f"hard_{before}"] = hard
        init = _student_init(cfg, stage, warmup)
        node = _child(teacher, stage, view(stage), _name(hard), _external(init.get("weights")))
        p.models[stage] = p.add(stage, node, {"teacher": f"{teacher}/model.pt", "labels": hard, **init, **data},
                                view(stage)).node
    for spec in STEPS.values():
        if spec.per_model:  # e.g. the evaluation: on every stage's model
            p.per_model[spec.name] = {stage: _file_artifact(p, spec.name, model, {spec.consumes[0]: f"{model}/model.pt",
                                                                                  **data})
                                      for stage, model in p.models.items()}
    return p


def _file_artifact(p: Plan, step: str, parent: str, inputs: Mapping[str, str]) -> str:
    """Add the artifact of a step that reads one model (pseudo labels, prototypes, evaluations) to
    ``p``, in ``parent``'s folder, named by its view; returns its main file."""
    view = step_view(p.config, step)
    return p.add(step, _child(parent, STEPS[step].stem, view), inputs, view).output


def _name(path: str) -> str:
    """An artifact file's name without its suffix (what names the artifacts that read it)."""
    return Path(path).with_suffix("").name


def _weights(path: str | None, name: str) -> dict[str, str]:
    return {name: path} if path is not None else {}


def _student_init(cfg: Mapping[str, Any], stage: str, warmup: str) -> dict[str, str]:
    """Files the student of a distillation stage starts from (besides its teacher)."""
    init = cfg[stage]["student_init"]
    if init == "warmup_backbone":
        return {"init": f"{warmup}/model.pt"}
    if init in ("simclr", "imagenet"):
        return _weights(cfg["model"][init], "weights")
    return {}


# name -> (the stage it ablates, the config change, the row label of the ablation table)
ABLATIONS: dict[str, tuple[str, dict[str, Any], str]] = {
    "no_rectify": ("stage1", {"stage1": {"proto_rectify": False}}, "stage 1 without rectification"),
    "no_consistency": ("stage1", {"stage1": {"proto_consistW": 0.0}}, "stage 1 without the consistency loss"),
    "no_distillation": ("stage2", {"stage2": {"distillation": 0.0}}, "stage 2 without distillation"),
}


@dataclass
class Study:
    """Every run of one experiment: the full chain per seed and, as configured, the bounds and the
    ablations of each seed (their plans share every upstream folder with the full run's)."""

    folder: str                                                   # <results>/<experiment>
    plans: dict[str, Plan] = field(default_factory=dict)          # run name -> plan
    seeds: list[int] = field(default_factory=list)
    main: dict[int, str] = field(default_factory=dict)            # seed -> its full run
    bounds: dict[str, dict[int, str]] = field(default_factory=dict)     # source_only|oracle -> seed -> run
    ablations: dict[str, dict[int, str]] = field(default_factory=dict)  # ablation -> seed -> run

    @property
    def aggregated(self) -> bool:
        """Whether the experiment has a study report (several seeds, bounds or ablations)."""
        return len(self.main) > 1 or bool(self.bounds) or bool(self.ablations)

    def reports(self) -> dict[str, Plan]:
        """The runs with a report of their own (the full chain of each seed)."""
        return {self.plans[name].folder: self.plans[name] for name in self.main.values()}

    @cached_property
    def artifacts(self) -> dict[str, Artifact]:
        """Every planned artifact of every run, by node (runs share their upstream artifacts; read
        once the study is planned)."""
        return {node: art for p in self.plans.values() for node, art in p.artifacts.items()}

    def view_of(self, job: Any) -> dict[str, Any]:
        """The config view of the artifact ``job.node`` (a rule's params: what names its folder and
        what its job runs on)."""
        return self.artifacts[job.node].view

    def step_of(self, job: Any) -> str:
        """The registered step that writes the artifact ``job.node``."""
        return self.artifacts[job.node].step


def study(cfg: Mapping[str, Any]) -> Study:
    """The runs of the experiment ``cfg`` (its ``study`` section): one full chain per seed, in
    ``<experiment>/seed-<s>/`` when there are several runs, else in ``<experiment>/`` itself."""
    from proda.config import deep_merge

    options = cfg["study"]
    folder = f"{cfg['results_dir']}/{cfg['experiment']}"
    out = Study(folder, seeds=list(options["seeds"] or [cfg["seed"]]))
    single = options["seeds"] is None and not options["bounds"] and not options["ablations"]

    def add(name: str, run_cfg: Mapping[str, Any], **kwargs: Any) -> str:
        out.plans[name] = plan(run_cfg, folder=folder if single else f"{folder}/{name}", **kwargs)
        return name

    for seed in out.seeds:
        seeded = deep_merge(cfg, {"seed": seed})
        out.main[seed] = add(f"seed-{seed}", seeded)
        if options["bounds"]:
            source_only = deep_merge(seeded, {"warmup": {"adv": 0.0}})
            out.bounds.setdefault("source_only", {})[seed] = add(f"source_only-seed-{seed}", source_only,
                                                                 last="warmup")
            out.bounds.setdefault("oracle", {})[seed] = add(f"oracle-seed-{seed}", source_only, last="warmup",
                                                            oracle=True)
        for name in options["ablations"]:
            stage, change, _ = ABLATIONS[name]
            out.ablations.setdefault(name, {})[seed] = add(f"{name}-seed-{seed}", deep_merge(seeded, change),
                                                           last=stage)
    return out
