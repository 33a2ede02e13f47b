"""The step registry is the single list of steps: the config's views, the CLI, the planner and the
Snakemake rules all agree with it, no second list of steps remains, and a new registered step
reaches the plan and the CLI without touching them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from proda import registry
from proda.cli import parser
from proda.config import load_defaults, resolve, step_view
from proda.plan import plan, study
from proda.registry import STAGES, STEPS, Step

REPO = Path(__file__).resolve().parents[1]
TOY = [REPO / "config.yaml", REPO / "config" / "tiny.yaml"]
# files that a plan adds as plain dependencies besides the roles a step's function takes
DEPENDENCIES = {"data", "weights", "checkpoint", "checked"}


def _subcommands() -> dict:
    action = next(a for a in parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def _rules() -> dict[str, str]:
    """rule name -> its text, from every .smk file."""
    text = "\n".join(p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    blocks = re.split(r"\n(?=(?:    )?rule \w+:)", text)
    return {m.group(1): block for block in blocks if (m := re.match(r"\s*rule (\w+):", block))}


def test_stages_are_the_training_steps_in_chain_order():
    assert STAGES == ("warmup", "stage1", "stage2", "stage3")
    assert all(STEPS[s].trains for s in STAGES) and not any(STEPS[s].trains for s in set(STEPS) - set(STAGES))


def test_every_view_comes_from_the_registry_and_holds_only_config_keys():
    cfg = load_defaults()
    for name, spec in STEPS.items():
        view = step_view(cfg, name)
        assert sorted(view) == sorted({section for section, _ in spec.view}), name
        for section, keys in spec.view:
            assert section in cfg, (name, section)
            if keys is not None:
                assert set(view[section]) == set(keys), (name, section)
    with pytest.raises(ValueError, match="unknown workflow step 'nope'"):
        step_view(cfg, "nope")


def test_views_hold_only_what_a_step_reads():
    """model.simclr is read by the distillation stages only, the architecture by no inference step."""
    cfg = load_defaults()
    assert "simclr" not in step_view(cfg, "warmup")["model"] and "simclr" not in step_view(cfg, "stage1")["model"]
    assert "simclr" in step_view(cfg, "stage2")["model"]
    for name in ("soft_labels", "prototypes", "hard_labels", "evaluate"):
        assert "model" not in step_view(cfg, name)
    simclr = resolve(*TOY)
    other = dict(simclr, model={**simclr["model"], "simclr": "elsewhere.pth"})
    a, b = plan(simclr), plan(other)
    assert a.models["stage1"] == b.models["stage1"] and a.models["stage2"] != b.models["stage2"]


def test_the_cli_has_one_subcommand_per_step_with_one_option_per_role():
    commands = _subcommands()
    for spec in STEPS.values():
        sub = commands[spec.command]
        flags = {a.dest: a for a in sub._actions if a.option_strings}
        for role in spec.consumes:
            assert role in flags, (spec.name, role)
            assert flags[role].required == (role not in spec.optional and spec.name != "evaluate"), (spec.name, role)
        assert ("state_dir" in flags) == spec.trains, spec.name


def test_the_plan_fills_exactly_the_registered_roles():
    for p in study(resolve(*TOY, {"study": {"seeds": [1, 2], "bounds": True,
                                            "ablations": ["no_rectify", "no_distillation"]}})).plans.values():
        for node, art in p.artifacts.items():
            spec = STEPS[art.step]
            required = set(spec.consumes) - set(spec.optional)
            assert required <= set(art.inputs) <= set(spec.consumes) | DEPENDENCIES, (art.step, art.inputs)
            assert node.rsplit("/", 1)[1].rsplit("-", 1)[0] == spec.stem
            assert art.view == step_view(p.config, art.step)
        for spec in STEPS.values():
            if spec.per_model:
                assert set(p.per_model[spec.name]) == set(p.models), spec.name


def test_every_rule_names_its_inputs_by_the_registered_roles():
    rules = _rules()
    for spec in STEPS.values():
        block = rules[spec.rule_name]
        roles = set(re.findall(r"^\s+(\w+)=artifact\(\"(\w+)\"\)", block, re.M))
        assert all(a == b for a, b in roles), (spec.rule_name, roles)
        deps = {name for name, _ in roles} - set(spec.consumes)
        assert set(spec.consumes) <= {name for name, _ in roles} and deps <= DEPENDENCIES, (spec.name, roles)
        assert re.search(rf'nodes_of\([^)]*"{spec.name}"', block), spec.name
        assert 'script:\n        "../scripts/step.py"' in block and "view=STUDY.view_of" in block, spec.name
        assert 'threads_of("' in block


def test_no_second_list_of_steps_or_stages():
    """Outside the registry no source file spells out the chain of stages or the steps."""
    pattern = re.compile(r"[\[(]\s*\"warmup\",\s*\"stage1\",\s*\"stage2\"")
    sources = [*(REPO / "proda").rglob("*.py"), *(REPO / "workflow").rglob("*.smk"), *(REPO / "workflow").rglob("*.py"),
               REPO / "Snakefile"]
    offenders = [p for p in sources if p.name != "registry.py" and pattern.search(p.read_text())]
    assert not offenders, offenders
    assert not list((REPO / "workflow" / "scripts").glob("stage1.py"))  # one worker for every step


def test_a_new_per_model_step_reaches_the_plan_the_views_and_the_cli(monkeypatch):
    """The worked example of docs/architecture.md: a registry entry is all the planner, the views and
    the CLI need."""
    entropy = Step("entropy", "mean prediction entropy of a model", "proda.steps:evaluate",
                   (("precision", None), ("eval", None)), ".csv", "evaluate", consumes=("checkpoint",),
                   per_model=True)
    monkeypatch.setitem(registry.STEPS, "entropy", entropy)
    p = plan(resolve(*TOY))
    assert set(p.per_model["entropy"]) == set(STAGES)
    assert all(path.endswith(".csv") and "/entropy-" in path for path in p.per_model["entropy"].values())
    assert step_view(p.config, "entropy") == {"eval": p.config["eval"], "precision": p.config["precision"]}
    args = parser().parse_args(["entropy", "--checkpoint", "m.pt", "--out", "e.csv"])
    assert (args.command, args.checkpoint) == ("entropy", "m.pt")


def test_an_unknown_step_is_one_line():
    with pytest.raises(ValueError, match="unknown step .stage4. .known: toycity, check_data, warmup"):
        registry.step("stage4")


def test_the_architecture_doc_shows_the_registry():
    doc = (REPO / "docs" / "architecture.md").read_text()
    assert "proda/registry.py" in doc
    for spec in STEPS.values():
        assert f"`{spec.name}`" in doc, spec.name


def test_the_workflow_merges_and_validates_the_config_once_in_the_snakefile():
    """The Snakefile resolves the config (one merge, one validation); no rule, worker or job does it
    again: they read the plan's views (STUDY.view_of)."""
    snakefile = (REPO / "Snakefile").read_text()
    assert len(re.findall(r"\bresolve\(config\)", snakefile)) == 1
    again = re.compile(r"(?<![\w])(?<!\)\.)(resolve|validate|deep_merge|load_defaults)\(")  # not Path(..).resolve()
    others = [*(REPO / "workflow").rglob("*.smk"), *(REPO / "workflow").rglob("*.py"),
              REPO / "proda" / "steps.py", REPO / "proda" / "experiment.py"]
    assert not [p for p in others if again.search(p.read_text())]
