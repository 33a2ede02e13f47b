"""The Snakemake workflow: lint, config schema and validation, the DAG, partial reruns, the
report, sharing between experiments, and the worker plumbing (store, resume state, torchrun).

Snakemake runs in a subprocess with its own working directory per test (--directory) and
absolute --configfile paths. Tests marked slow run the tiny DAG for real, once per module."""
from __future__ import annotations

import csv
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PRESETS = [REPO / "config" / "gta5_to_cityscapes.yaml", REPO / "config" / "synthia_to_cityscapes.yaml"]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
STAGES = ["warmup", "stage1", "stage2", "stage3"]
FULL_DAG = sorted(["all", "toycity", "warmup", "soft_labels", "prototypes", "stage1",
                   "hard_labels[stage1]", "stage2", "hard_labels[stage2]", "stage3", "report",
                   *(f"evaluate[{s}]" for s in STAGES)])


def smk(workdir: Path, *args: str, configfiles=(), repo: Path = REPO) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(repo / "config.yaml"), str(repo / "config" / "tiny.yaml"),
           *map(str, configfiles), *args]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def planned_jobs(workdir: Path, configfiles=(), repo: Path = REPO) -> list[str]:
    """The jobs a dry-run would execute, as `rule` or `rule[stage]`."""
    r = smk(workdir, "--dry-run", configfiles=configfiles, repo=repo)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", r.stdout + r.stderr):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            stage = re.search(r"^\s+wildcards: stage=(\w+)", block, re.M)
            jobs.append(m.group(1) + (f"[{stage.group(1)}]" if stage else ""))
    return sorted(jobs)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def load_worker():
    spec = importlib.util.spec_from_file_location("_worker", REPO / "workflow" / "scripts" / "_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------- static checks
def test_lint_is_clean(tmp_path):
    r = smk(tmp_path, "--lint")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations" in r.stdout + r.stderr


def _resolve(schema: dict) -> dict:
    ref = schema.get("$ref")
    return SCHEMA["$defs"][ref.rsplit("/", 1)[1]] if ref else schema


def _assert_mirrors(defaults: dict, schema: dict, where: str) -> None:
    schema = _resolve(schema)
    props = schema.get("properties", {})
    assert set(props) == set(defaults), f"{where}: schema keys differ from proda/defaults.yaml"
    assert schema.get("additionalProperties") is False, f"{where}: unknown keys must be rejected"
    assert set(schema.get("required", [])) == set(defaults), f"{where}: every key is required"
    for key, value in defaults.items():
        if isinstance(value, dict) and value:
            _assert_mirrors(value, props[key], f"{where}.{key}")


def test_schema_mirrors_defaults_key_for_key():
    from proda.config import load_defaults

    defaults = load_defaults()
    _assert_mirrors(defaults, SCHEMA, "config")
    jsonschema.validate(defaults, SCHEMA)  # every default has an allowed type/value


def _leaf_keys(d: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "toycity":
            keys |= _leaf_keys(v, f"{prefix}{k}.")
        else:
            keys.add(prefix + k)
    return keys


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_override_every_toy_setting_and_validate(preset):
    """--configfile layers a preset over config.yaml: it must reset all the toy settings."""
    from proda.config import deep_merge, load_defaults

    toy, cfg = yaml.safe_load((REPO / "config.yaml").read_text()), yaml.safe_load(preset.read_text())
    assert _leaf_keys(toy) <= _leaf_keys(cfg), f"{preset.name} leaves toy settings in place"
    merged = deep_merge(load_defaults(), cfg)
    jsonschema.validate(merged, SCHEMA)
    assert merged["data"]["toycity"] is None and merged["model"]["backbone"] == "resnet101"


def test_preset_values_follow_the_official_readme():
    gta, syn = (deep_cfg(p) for p in PRESETS)
    assert (gta["data"]["n_class"], syn["data"]["n_class"]) == (19, 16)
    assert (gta["data"]["source"]["dataset"], syn["data"]["source"]["dataset"]) == ("gta5", "synthia")
    assert syn["data"]["source"]["size"] == [1280, 760] and gta["data"]["crop"] == [896, 512]
    assert (gta["stage1"]["regular_w"], syn["stage1"]["regular_w"]) == (0.1, 0.0)
    for cfg in (gta, syn):
        assert cfg["stage1"]["lr"] == 1e-4 and cfg["stage1"]["proto_consistW"] == 10.0
        assert cfg["stage2"]["lr"] == 6e-4 and cfg["stage2"]["threshold"] == 0.95
        assert (cfg["stage2"]["student_init"], cfg["stage3"]["student_init"]) == ("simclr", "resume")
        assert (cfg["stage2"]["ema_bn"], cfg["stage3"]["ema_bn"]) == (False, True)


def deep_cfg(preset: Path) -> dict:
    from proda.config import deep_merge, load_defaults

    return deep_merge(deep_merge(load_defaults(), yaml.safe_load((REPO / "config.yaml").read_text())),
                      yaml.safe_load(preset.read_text()))


# ------------------------------------------------------------------------------- validation
def _bad_configs(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    return {
        "unknown_key": ({"stage2": {"thresh": 0.5}}, "unknown config key 'stage2.thresh'"),
        "wrong_type": ({"stage2": {"threshold": "high"}}, "config key 'stage2.threshold'"),
        "bad_enum": ({"model": {"backbone": "resnet12"}}, "config key 'model.backbone'"),
        "missing_dataset": ({"data": {"toycity": None, "source": {"root": str(tmp_path / "nope")}}},
                            "config key 'data.source.root': directory not found"),
        "missing_checkpoint": ({"warmup": {"checkpoint": str(tmp_path / "w.pt")}},
                               "config key 'warmup.checkpoint': file not found"),
    }


@pytest.mark.parametrize("case", ["unknown_key", "wrong_type", "bad_enum", "missing_dataset",
                                  "missing_checkpoint"])
def test_bad_config_stops_before_any_job_with_one_message(tmp_path, case):
    override, expected = _bad_configs(tmp_path)[case]
    r = smk(tmp_path, "--cores", "1", configfiles=[write_yaml(tmp_path / "bad.yaml", override)])
    out = r.stdout + r.stderr
    assert r.returncode != 0
    messages = [line for line in out.splitlines() if "Invalid configuration" in line]
    assert len(messages) == 1 and messages[0].startswith(f"Invalid configuration: {expected}"), out
    assert "Traceback" not in out and "Job stats" not in out and "rule " not in out
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------- the DAG
def test_dry_run_plans_the_whole_pipeline(tmp_path):
    assert planned_jobs(tmp_path) == FULL_DAG


def test_dry_run_outputs_follow_the_artifact_layout(tmp_path):
    r = smk(tmp_path, "--dry-run")
    outputs = set(re.findall(r"^\s+output: (.+)$", r.stdout, re.M))
    files = {f.strip() for line in outputs for f in line.split(",")}
    res = "results/tiny"
    expected = {f"{res}/warmup/model.pt", f"{res}/pseudo/soft_warmup.h5", f"{res}/prototypes/warmup.h5",
                *(f"{res}/stage{i}/model.pt" for i in (1, 2, 3)),
                *(f"{res}/pseudo/hard_stage{i}.h5" for i in (1, 2)),
                *(f"{res}/eval/{s}.csv" for s in STAGES),
                f"{res}/report/summary.csv", f"{res}/report/miou_by_stage.png", f"{res}/report/per_class_iou.png"}
    assert files - {f for f in files if "/data/toycity-" in f} == expected
    assert len([f for f in files if f.startswith("results/data/toycity-")]) == 1


def test_preset_dag_imports_the_warmup_and_uses_real_data(tmp_path):
    """A paper preset with (fake) dataset folders and weight files: no toy data, the warm-up
    checkpoint is the warmup rule's input, SimCLR weights are the stage-2 student's."""
    for d in ("GTA5", "cityscapes"):
        (tmp_path / d).mkdir()
    for f in ("warmup.pkl", "simclr.pth"):
        (tmp_path / f).write_bytes(b"x")
    paths = write_yaml(tmp_path / "paths.yaml", {
        "data": {"source": {"root": str(tmp_path / "GTA5")}, "target": {"root": str(tmp_path / "cityscapes")}},
        "warmup": {"checkpoint": str(tmp_path / "warmup.pkl")}, "model": {"simclr": str(tmp_path / "simclr.pth")}})
    r = smk(tmp_path, "--dry-run", configfiles=[PRESETS[0], paths])
    assert r.returncode == 0, r.stdout + r.stderr
    blocks = {m.group(1): m.group(0) for m in re.finditer(r"rule (\w+):\n(?:\s+.+\n)+", r.stdout)}
    assert "toycity" not in blocks
    assert f"input: {tmp_path / 'warmup.pkl'}" in blocks["warmup"]
    assert str(tmp_path / "simclr.pth") in blocks["stage2"]
    assert "gpu=1" in blocks["stage1"] and "runtime=4320" in blocks["stage1"]


# ------------------------------------------------------------------------------- worker plumbing
def test_torchrun_command_matches_the_proda_cli():
    from proda.cli import _parser

    worker = load_worker()
    kwargs = {"stage": "stage2", "teacher_ckpt": "s1.pt", "hard_h5": "h.h5", "out_ckpt": "s2.pt",
              "state_dir": "st", "init_ckpt": None}
    cmd = worker.torchrun_command("distill", "cfg.json", 4, 16, kwargs)
    assert cmd[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    args = _parser().parse_args(cmd[cmd.index("proda.cli") + 1:])
    assert (args.command, args.teacher, args.labels, args.out, args.state_dir, args.init) == \
        ("stage2", "s1.pt", "h.h5", "s2.pt", "st", None)
    assert (args.config_json, args.threads) == ("cfg.json", 4)
    cmd = worker.torchrun_command("stage1", "c.json", 2, 8, {"warmup_ckpt": "w", "soft_h5": "s", "prototypes_h5": "p",
                                                            "out_ckpt": "o", "state_dir": "d"})
    args = _parser().parse_args(cmd[cmd.index("proda.cli") + 1:])
    assert (args.command, args.warmup, args.soft, args.prototypes, args.out) == ("stage1", "w", "s", "p", "o")


def test_state_dir_is_kept_only_for_the_same_job(tmp_path):
    worker = load_worker()
    state = tmp_path / "stage2" / "state"
    worker.prepare_state_dir(str(state), "key-a")
    (state / "last.pt").write_text("resume me")
    (tmp_path / "stage2" / "train.csv").write_text("iter,loss\n1,0.5\n")
    worker.prepare_state_dir(str(state), "key-a")  # the same job again (crash, time-out): resume
    assert (state / "last.pt").read_text() == "resume me"
    assert (tmp_path / "stage2" / "train.csv").exists()
    worker.prepare_state_dir(str(state), "key-b")  # params or inputs changed: start afresh
    assert sorted(p.name for p in state.iterdir()) == ["job.key"]
    assert not (tmp_path / "stage2" / "train.csv").exists()


def _fake_job(tmp_path: Path, experiment: str, key: str) -> SimpleNamespace:
    out = tmp_path / "results" / experiment / "stage1" / "model.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(config={"results_dir": str(tmp_path / "results")}, rule="stage1",
                           params=SimpleNamespace(key=key), output=[str(out)])


def test_store_shares_an_artifact_between_experiments_only_for_equal_keys_and_code(tmp_path, monkeypatch):
    worker = load_worker()
    a = worker.Store(_fake_job(tmp_path, "a", "k1"))
    assert not a.fetch()  # nothing filed yet
    a.output.write_bytes(b"weights")
    (a.output.parent / "state").mkdir()
    (a.output.parent / "state" / "train.csv").write_text("iter\n1\n")
    a.put()
    b = worker.Store(_fake_job(tmp_path, "b", "k1"))
    assert b.fetch()
    assert os.path.samefile(a.output, b.output) and b.output.is_symlink()  # no copy
    log_a, log_b = (s.output.parent / "state" / "train.csv" for s in (a, b))
    assert log_b.read_text() == "iter\n1\n" and not os.path.samefile(log_a, log_b)  # a copy
    assert not worker.Store(_fake_job(tmp_path, "c", "k2")).fetch()  # other config or inputs
    monkeypatch.setattr(worker, "code_fingerprint", lambda: "edited code")
    assert not worker.Store(_fake_job(tmp_path, "d", "k1")).fetch()  # other code


# ------------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> SimpleNamespace:
    """One real run of config/tiny.yaml (the whole DAG), from a snapshot of the repository so
    that edits made meanwhile (code changes count for reruns and for the store) cannot interfere."""
    root = tmp_path_factory.mktemp("tiny")
    repo = root / "repo"
    repo.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("Snakefile", "config.yaml", "environment.yml"):
        shutil.copy2(REPO / name, repo / name)
    for name in ("config", "workflow", "proda"):
        shutil.copytree(REPO / name, repo / name, ignore=ignore)
    run = SimpleNamespace(dir=root / "work", repo=repo)
    run.dir.mkdir()
    r = smk(run.dir, "--cores", "2", "--show-failed-logs", repo=repo)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-8000:]
    return run


@pytest.mark.slow
def test_full_run_writes_every_artifact_log_and_benchmark(tiny_run):
    res = tiny_run.dir / "results" / "tiny"
    for rel in ["warmup/model.pt", "pseudo/soft_warmup.h5", "prototypes/warmup.h5", "stage1/model.pt",
                "pseudo/hard_stage1.h5", "stage2/model.pt", "pseudo/hard_stage2.h5", "stage3/model.pt",
                *(f"eval/{s}.csv" for s in STAGES), "report/summary.csv", "report/miou_by_stage.png",
                "report/per_class_iou.png", *(f"{s}/state/train.csv" for s in STAGES)]:
        assert (res / rel).is_file() and (res / rel).stat().st_size > 0, rel
    logs = {p.stem for p in (res / "logs").glob("*.log")}
    assert logs == {"warmup", "soft_labels", "prototypes", "stage1", "stage2", "stage3", "report",
                    "hard_labels_stage1", "hard_labels_stage2", *(f"evaluate_{s}" for s in STAGES)}
    assert {p.stem for p in (res / "benchmarks").glob("*.tsv")} == logs


@pytest.mark.slow
def test_report_has_one_row_per_stage_with_miou_in_percent(tiny_run):
    from proda.data.labels import class_names

    with open(tiny_run.dir / "results" / "tiny" / "report" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["stage"] for r in rows] == STAGES
    assert list(rows[0]) == ["stage", *class_names(19), "mIoU"]
    for row in rows:
        assert 0.0 <= float(row["mIoU"]) <= 100.0
        ious = [float(v) for k, v in row.items() if k != "stage" and v != ""]
        assert all(0.0 <= v <= 100.0 for v in ious)


@pytest.mark.slow
def test_noop_rerun_executes_nothing(tiny_run):
    r = smk(tiny_run.dir, "--dry-run", repo=tiny_run.repo)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.mark.slow
def test_stage2_threshold_change_reruns_exactly_its_suffix(tiny_run):
    over = write_yaml(tiny_run.dir / "threshold.yaml", {"stage2": {"threshold": 0.5}})
    assert planned_jobs(tiny_run.dir, [over], repo=tiny_run.repo) == sorted(
        ["stage2", "evaluate[stage2]", "hard_labels[stage2]", "stage3", "evaluate[stage3]", "report", "all"])


@pytest.mark.slow
def test_stage1_change_reruns_from_stage1_on(tiny_run):
    over = write_yaml(tiny_run.dir / "stage1.yaml", {"stage1": {"proto_consistW": 5.0}})
    assert planned_jobs(tiny_run.dir, [over], repo=tiny_run.repo) == sorted(
        ["stage1", "evaluate[stage1]", "hard_labels[stage1]", "stage2", "evaluate[stage2]",
         "hard_labels[stage2]", "stage3", "evaluate[stage3]", "report", "all"])


@pytest.mark.slow
def test_execution_settings_rerun_nothing(tiny_run):
    over = write_yaml(tiny_run.dir / "exec.yaml", {"data": {"num_workers": 1}, "train": {"log_every": 7}})
    r = smk(tiny_run.dir, "--dry-run", configfiles=[over], repo=tiny_run.repo)
    assert "Nothing to be done" in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.mark.slow
def test_html_report_has_the_results_and_captions(tiny_run):
    r = smk(tiny_run.dir, "--report", "report.html", repo=tiny_run.repo)
    assert r.returncode == 0, r.stdout + r.stderr
    html = (tiny_run.dir / "report.html").read_text(errors="replace")
    assert len(html) > 100_000 and "summary.csv" in html and "miou_by_stage.png" in html
    assert "Stage x class table" in html and "after each stage" in html
    assert "of the stage2 model" in html  # captions are rendered per job (wildcards)


@pytest.mark.slow
def test_second_experiment_reuses_the_shared_upstream(tiny_run):
    """Another experiment in the same results_dir that differs only in stage2.threshold links
    the warm-up .. stage-1 artifacts from the store and computes stage 2 onwards."""
    over = write_yaml(tiny_run.dir / "b.yaml", {"experiment": "tiny_b", "stage2": {"threshold": 0.5}})
    r = smk(tiny_run.dir, "--cores", "2", "--show-failed-logs", configfiles=[over], repo=tiny_run.repo)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-8000:]
    a, b = tiny_run.dir / "results" / "tiny", tiny_run.dir / "results" / "tiny_b"
    for rel in ["warmup/model.pt", "pseudo/soft_warmup.h5", "prototypes/warmup.h5", "stage1/model.pt",
                "pseudo/hard_stage1.h5", "eval/warmup.csv", "eval/stage1.csv"]:
        assert os.path.samefile(a / rel, b / rel), rel
    for rel in ["stage2/model.pt", "pseudo/hard_stage2.h5", "stage3/model.pt"]:
        assert not os.path.samefile(a / rel, b / rel), rel
    assert "reused" in (b / "logs" / "stage1.log").read_text()
    assert "reused" not in (b / "logs" / "stage2.log").read_text()
    assert (b / "report" / "summary.csv").is_file()
    assert "Nothing to be done" in smk(tiny_run.dir, "--dry-run", repo=tiny_run.repo).stdout  # experiment a untouched
