"""The Snakemake workflow: conventions (lint, snakefmt, thin workers, self-contained references),
validation before any job, the DAG and its provenance paths, partial reruns, sharing between
experiments, corrupted and deleted artifacts, and the report.

Snakemake runs in a subprocess with its own working directory per test (--directory) and
absolute --configfile paths. Tests marked slow run the tiny DAG for real, once per module."""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from fakes import snapshot_repo

from proda.registry import STAGES as CHAIN, STEPS

REPO = Path(__file__).resolve().parents[1]
TINY = [REPO / "config.yaml", REPO / "config" / "tiny.yaml"]
PRESETS = [REPO / "config" / "gta5_to_cityscapes.yaml", REPO / "config" / "synthia_to_cityscapes.yaml"]
STAGES = list(CHAIN)
# jobs that run on one stage's model, named rule[stage] in these tests
PER_STAGE = {"hard_labels", "distill", *(s.rule_name for s in STEPS.values() if s.per_model)}


def _registry_jobs() -> list[str]:
    """The tiny run's jobs, from the registry: each chain step once, each per-model step per stage,
    hard labels of every teacher (stages 1 and 2), plus the run's own summaries."""
    jobs = []
    for spec in STEPS.values():
        if spec.per_model:
            jobs += [f"{spec.rule_name}[{s}]" for s in STAGES]
        elif spec.name == "hard_labels":
            jobs += [f"hard_labels[{s}]" for s in STAGES[1:-1]]
        else:
            jobs.append(f"{spec.rule_name}[{spec.name}]" if spec.rule_name in PER_STAGE else spec.rule_name)
    return jobs


# what a change of the chain from stage 2 on plans besides the stages: the run's own summaries
RUN_SUMMARIES = ["report", "figures", "label_quality", "manifest", "all"]
FULL_DAG = sorted(_registry_jobs() + RUN_SUMMARIES)
DIGEST = r"[0-9a-f]{12}"
# the sibling folder of the developers' checkout and the name of its method document: no tracked file
# may point there (spelled in pieces so that this file does not contain them either)
OUTSIDE, SPEC_NAME = ".." + "/" + "shared", "proda" + "-reference"


def smk(workdir: Path, *args: str, configfiles=TINY, extra=(), repo: Path = REPO) -> subprocess.CompletedProcess:
    files = [Path(str(f).replace(str(REPO), str(repo))) for f in configfiles]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir),
           "--configfile", *map(str, files), *map(str, extra), *args]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def job_name(rule: str, node: str | None) -> str:
    """`rule` or `rule[stage]`: the stage whose model a hard-label or evaluation job reads, or the
    stage a distill job trains (from the provenance path)."""
    if node is None or rule not in PER_STAGE:
        return rule
    folder = node if rule == "distill" else node.rsplit("/", 1)[0]
    return f"{rule}[{folder.rsplit('/', 1)[1].split('-')[0]}]"


def planned_jobs(workdir: Path, extra=(), repo: Path = REPO, configfiles=TINY) -> list[str]:
    """The jobs a dry-run would execute."""
    r = smk(workdir, "--dry-run", configfiles=configfiles, extra=extra, repo=repo)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", r.stdout + r.stderr):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            node = re.search(r"^\s+wildcards: node=(\S+)", block, re.M)
            jobs.append(job_name(m.group(1), node.group(1) if node else None))
    return sorted(jobs)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------- conventions
def test_lint_is_clean(tmp_path):
    r = smk(tmp_path, "--lint")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations" in r.stdout + r.stderr


def test_snakefmt_is_clean():
    r = subprocess.run([str(Path(sys.executable).parent / "snakefmt"), "--check", "."], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_workflow_has_min_version_and_no_lambdas():
    sources = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    assert 'min_version("9.0")' in sources[0].read_text()
    for path in sources:
        assert "lambda" not in path.read_text(), path


def test_workers_only_map_snakemake_to_one_proda_call():
    for path in sorted((REPO / "workflow" / "scripts").glob("*.py")):
        text = path.read_text()
        assert len(text.splitlines()) <= 25, path
        imports = re.findall(r"^(?:from|import) (\S+)", text, re.M)
        assert all(name.startswith("proda") for name in imports), (path, imports)
        statements = [line for line in text.splitlines() if re.match(r"^[a-z_]+\(", line)]
        assert len(statements) == 1, (path, statements)


def test_no_reference_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    for rel in tracked:
        path = REPO / rel
        if path.suffix in (".py", ".md", ".yaml", ".yml", ".smk", ".rst", ".sh", ".toml", "") and path.is_file():
            text = path.read_text(errors="replace")
            assert OUTSIDE not in text and SPEC_NAME not in text, rel
            assert not re.search(r"parent\s*/\s*[\"']shared[\"']", text), rel


def test_config_docs_are_generated_from_the_schema():
    from proda.config import config_docs

    assert (REPO / "config" / "README.md").read_text() == config_docs(), "run: proda config-docs > config/README.md"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_state_only_what_differs_from_the_defaults(preset):
    from proda.config import load_defaults

    def leaves(d: dict, prefix: str = ""):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield prefix + k, v

    defaults = dict(leaves(load_defaults()))
    for key, value in leaves(yaml.safe_load(preset.read_text())):
        assert defaults[key] != value, f"{preset.name} restates the default of {key}"


# ------------------------------------------------------------------------------- validation
@pytest.fixture(scope="module")
def real_layout(tmp_path_factory) -> Path:
    """A tiny dataset pair in the real GTA5 / Cityscapes layouts (from the toy generator)."""
    from proda.data import toycity

    root = tmp_path_factory.mktemp("layout") / "data"
    toycity.generate(root, n_source=3, n_target_train=3, n_target_val=2, source_size=(64, 32),
                     target_size=(64, 32))
    return root


def _real_data(root: Path, **extra) -> dict:
    cfg = {"data": {"toycity": None, "source": {"root": str(root / "gta5")},
                    "target": {"root": str(root / "cityscapes")}}}
    for key, value in extra.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


def _bad_configs(tmp_path: Path, layout: Path) -> dict[str, tuple[dict, str]]:
    empty_val = tmp_path / "empty_val"
    shutil.copytree(layout, empty_val)
    shutil.rmtree(empty_val / "cityscapes" / "leftImg8bit" / "val" / "voxelstadt")
    no_label = tmp_path / "no_label"
    shutil.copytree(layout, no_label)
    labels = sorted((no_label / "cityscapes" / "gtFine" / "val").rglob("*_labelIds.png"))
    labels[-1].unlink()
    return {
        "unknown_key": ({"stage2": {"thresh": 0.5}}, "unknown config key 'stage2.thresh'"),
        "wrong_type": ({"stage2": {"threshold": "high"}}, "config key 'stage2.threshold'"),
        "bad_enum": ({"model": {"backbone": "resnet12"}}, "config key 'model.backbone'"),
        "crop": ({"data": {"crop": [60, 32]}}, "config key 'data.crop' must hold multiples of 8"),
        "n_class": ({"data": {"n_class": 16}}, "config key 'data.n_class' is 16, but GTA5"),
        "missing_dataset": ({"data": {"toycity": None, "source": {"root": str(tmp_path / "nope")}}},
                            "config key 'data.source.root': directory not found"),
        "missing_checkpoint": ({"warmup": {"checkpoint": str(tmp_path / "w.pt")}},
                               "config key 'warmup.checkpoint': file not found"),
        "empty_val": (_real_data(empty_val), "config key 'data.target.root' (cityscapes val)"),
        "missing_label": (_real_data(no_label), f"has no label {labels[-1]}"),
        "experiment_outside": ({"experiment": ".."}, "config key 'experiment' must be a plain folder name"),
        "cuda_without_gpu": ({"device": "cuda"}, "config key 'device' is cuda, but this machine"),
    }


@pytest.mark.parametrize("case", ["unknown_key", "wrong_type", "bad_enum", "crop", "n_class", "missing_dataset",
                                  "missing_checkpoint", "empty_val", "missing_label", "experiment_outside",
                                  "cuda_without_gpu"])
def test_bad_config_stops_before_any_job_with_one_message(tmp_path, real_layout, case, monkeypatch):
    override, expected = _bad_configs(tmp_path, real_layout)[case]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU for this run, on any machine
    r = smk(tmp_path, "--cores", "1", configfiles=[*TINY, write_yaml(tmp_path / "bad.yaml", override)])
    out = r.stdout + r.stderr
    assert r.returncode != 0
    messages = [line for line in out.splitlines() if "Invalid configuration" in line]
    assert len(messages) == 1 and messages[0].startswith("Invalid configuration: "), out
    assert expected in messages[0], out
    assert "Traceback" not in out and "Job stats" not in out and "rule " not in out
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("case", ["id_outside_the_table", "label_of_another_size"])
def test_bad_labels_stop_the_run_before_any_training(tmp_path, real_layout, case):
    """Every label of every split the run reads is checked first (rule check_data): a bad one in
    the target val split stops the run before the warm-up, in one line naming the file."""
    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(real_layout, data)
    label = sorted((data / "cityscapes" / "gtFine" / "val").rglob("*_labelIds.png"))[-1]
    ids = np.array(Image.open(label))
    if case == "id_outside_the_table":
        ids[0, 0] = 99
    else:
        ids = ids[:-8]
    Image.fromarray(ids).save(label)
    r = smk(tmp_path, "--cores", "1", "--show-failed-logs",
            configfiles=[*TINY, write_yaml(tmp_path / "real.yaml", _real_data(data))])
    out = r.stdout + r.stderr
    assert r.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith("proda check-data: error:")]
    assert len(errors) == 1 and str(label) in errors[0], out[-3000:]
    assert ("id 99" in errors[0]) == (case == "id_outside_the_table")
    assert "rule warmup" not in out and not list((tmp_path / "results" / "runs").glob("warmup-*/model.pt"))


def test_cli_runs_the_same_validation(tmp_path):
    from proda.cli import main

    bad = write_yaml(tmp_path / "bad.yaml", {"data": {"crop": [60, 32]}})
    assert main(["warmup", "--config", str(TINY[0]), "--config", str(bad), "--out", str(tmp_path / "m.pt")]) == 2
    assert not (tmp_path / "m.pt").exists()


# ------------------------------------------------------------------------------- the DAG
def test_dry_run_plans_the_whole_pipeline(tmp_path):
    assert planned_jobs(tmp_path) == FULL_DAG


def test_outputs_carry_their_provenance_in_the_path(tmp_path):
    r = smk(tmp_path, "--dry-run")
    files = {f.strip() for line in re.findall(r"^\s+output: (.+)$", r.stdout, re.M) for f in line.split(",")}
    runs = rf"results/runs/warmup-{DIGEST}"
    s1, s2, s3 = rf"{runs}/stage1-{DIGEST}", rf"{runs}/stage1-{DIGEST}/stage2-{DIGEST}", \
        rf"{runs}/stage1-{DIGEST}/stage2-{DIGEST}/stage3-{DIGEST}"
    record = r"(\.h5|\.record\.yaml)"
    patterns = [rf"results/data/toycity-{DIGEST}(\.record\.yaml)?", rf"results/data/check-{DIGEST}\.(record\.)?yaml",
                rf"{runs}/soft_labels-{DIGEST}{record}",
                rf"{runs}/prototypes-{DIGEST}{record}", *(rf"{m}/hard_labels-{DIGEST}{record}" for m in (s1, s2)),
                *(rf"{m}/(model\.pt|train\.csv|record\.yaml|eval-{DIGEST}\.(csv|record\.yaml))"
                  for m in (runs, s1, s2, s3)),
                r"results/tiny/report/(summary\.csv|miou_by_stage\.png|per_class_iou\.png|prediction_grid\.png"
                r"|training_curves\.png|label_quality\.png)",
                r"results/tiny/eval", r"results/tiny/manifest\.yaml", r"results/tiny/label_quality\.csv"]
    unmatched = [f for f in files if not any(re.fullmatch(p, f) for p in patterns)]
    # toy data, data check, soft labels, prototypes, hard labels; per stage: its model folder and evaluation
    artifacts = 2 * (1 + 1 + 2 + 2) + 4 * 5
    assert not unmatched and len(files) == artifacts + 3 + 2 + 4, (unmatched, sorted(files))


def test_an_unknown_target_is_one_line(tmp_path):
    r = smk(tmp_path, "--dry-run", "results/runs/warmup-000000000000/model.pt")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" not in out and "KeyError" not in out
    assert "No rule to produce results/runs/warmup-000000000000/model.pt" in out, out


def _preset_paths(tmp_path: Path, layout: Path) -> Path:
    """An override naming data in the real layouts and (placeholder) weight files for a preset."""
    for f in ("warmup.pkl", "simclr.pth"):
        (tmp_path / f).write_bytes(b"x")
    return write_yaml(tmp_path / "paths.yaml", {**_real_data(layout),
                                                "warmup": {"checkpoint": str(tmp_path / "warmup.pkl")},
                                                "model": {"simclr": str(tmp_path / "simclr.pth")}})


def test_preset_dag_imports_the_warmup_and_uses_real_data(tmp_path, real_layout):
    """A paper preset with data in the real layouts and (placeholder) weight files: no toy data,
    the warm-up checkpoint is the warmup rule's input, SimCLR weights are the stage-2 student's."""
    paths = _preset_paths(tmp_path, real_layout)
    r = smk(tmp_path, "--dry-run", configfiles=[PRESETS[0], paths])
    assert r.returncode == 0, r.stdout + r.stderr
    blocks: dict[str, str] = {}
    for m in re.finditer(r"rule (\w+):\n(?:\s+.+\n)+", r.stdout):
        blocks[m.group(1)] = blocks.get(m.group(1), "") + m.group(0)
    assert "toycity" not in blocks
    assert f"input: {tmp_path / 'warmup.pkl'}" in blocks["warmup"]
    assert str(tmp_path / "simclr.pth") in blocks["distill"]
    assert "gpu=1" in blocks["stage1"] and "runtime=4320" in blocks["stage1"]


def test_presets_are_used_instead_of_the_toy_config(tmp_path, real_layout):
    """--configfile with a preset alone: no toy setting leaks in (config.yaml is not read): the
    warm-up folder is the one the preset alone names."""
    from proda.config import resolve
    from proda.plan import plan

    paths = _preset_paths(tmp_path, real_layout)
    r = smk(tmp_path, "--dry-run", configfiles=[PRESETS[0], paths])
    assert r.returncode == 0, r.stdout + r.stderr
    alone, layered = (plan(resolve(*files)).models["warmup"] for files in ([PRESETS[0], paths],
                                                                           [TINY[0], PRESETS[0], paths]))
    assert f"output: {alone}/model.pt" in r.stdout and alone != layered


# ------------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> SimpleNamespace:
    """One real run of config/tiny.yaml (the whole DAG), from a snapshot of the repository so
    that edits made meanwhile (code changes count for reruns) cannot interfere."""
    root = tmp_path_factory.mktemp("tiny")
    repo = snapshot_repo(root)
    run = SimpleNamespace(dir=root / "work", repo=repo)
    run.dir.mkdir()
    r = smk(run.dir, "--cores", "2", "--show-failed-logs", repo=repo)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-8000:]
    run.manifest = yaml.safe_load((run.dir / "results" / "tiny" / "manifest.yaml").read_text())
    return run


def _model(run: SimpleNamespace, stage: str) -> Path:
    return run.dir / "results" / run.manifest["stages"][stage]["model"]


@pytest.mark.slow
def test_full_run_writes_every_artifact_log_and_benchmark(tiny_run):
    res = tiny_run.dir / "results" / "tiny"
    for rel in ["report/summary.csv", "report/miou_by_stage.png", "report/per_class_iou.png", "manifest.yaml",
                *(f"eval/{s}.csv" for s in STAGES)]:
        assert (res / rel).is_file() and (res / rel).stat().st_size > 0, rel
    for stage in STAGES:
        folder = _model(tiny_run, stage).parent
        for name in ("model.pt", "train.csv", "job.log", "job.benchmark.tsv"):
            assert (folder / name).is_file(), (stage, name)
        evaluation = res.parent / tiny_run.manifest["stages"][stage]["eval"]
        assert evaluation.read_text() == (res / "eval" / f"{stage}.csv").read_text()
        assert evaluation.with_suffix(".log").is_file() and evaluation.with_suffix(".benchmark.tsv").is_file()
    rows = list(csv.DictReader(open(_model(tiny_run, "stage1").with_name("train.csv"))))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4] and float(rows[-1]["loss"]) >= 0


@pytest.mark.slow
def test_every_artifact_has_its_record_and_show_names_its_settings(tiny_run, capsys, monkeypatch):
    """"Which threshold made stage2-<h>?" is answered on disk: every artifact carries its record,
    and `proda show` prints the settings that made it (and what differs from another run)."""
    from proda import records
    from proda.cli import main

    results = tiny_run.dir / "results"
    for rel in tiny_run.manifest["artifacts"]:
        target = results / rel  # a folder, or a file artifact's path without its suffix
        rec = records.read(target if target.is_dir() else Path(f"{target}.{records.RECORD}"))
        assert rec["step"] and rec["outputs"] and all(len(o["sha256"]) == 64 for o in rec["outputs"].values()), rel
    stage2 = _model(tiny_run, "stage2").parent
    rec = yaml.safe_load((stage2 / "record.yaml").read_text())
    assert rec["step"] == "stage2" and rec["settings"]["stage2"]["threshold"] == 0.8
    assert rec["inputs"]["teacher"]["sha256"] == records.content_sha256(_model(tiny_run, "stage1"))
    monkeypatch.chdir(tiny_run.dir)
    assert main(["show", str(stage2.relative_to(tiny_run.dir))]) == 0
    out = capsys.readouterr().out
    assert "  stage2.threshold: 0.8" in out and "teacher: results/runs/" in out
    assert main(["show", str(stage2), str(_model(tiny_run, "stage3").parent)]) == 0
    diff = capsys.readouterr().out  # stage 3's view holds stage3.*, not stage2.*
    assert "  stage2.threshold: 0.8 -> (absent)" in diff and "  stage3.threshold: (absent) -> 0.8" in diff


@pytest.mark.slow
def test_report_has_one_row_per_stage_with_miou_in_percent(tiny_run):
    from proda.data.labels import class_names

    with open(tiny_run.dir / "results" / "tiny" / "report" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["stage"] for r in rows] == STAGES
    assert list(rows[0]) == ["stage", *class_names(19), "mIoU"]
    for row in rows:
        assert 0.0 <= float(row["mIoU"]) <= 100.0
        assert all(0.0 <= float(v) <= 100.0 for k, v in row.items() if k != "stage" and v != "")


@pytest.mark.slow
def test_noop_rerun_executes_nothing(tiny_run):
    r = smk(tiny_run.dir, "--dry-run", repo=tiny_run.repo)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.mark.slow
def test_stage2_threshold_change_reruns_exactly_its_suffix(tiny_run):
    over = write_yaml(tiny_run.dir / "threshold.yaml", {"stage2": {"threshold": 0.5}})
    assert planned_jobs(tiny_run.dir, repo=tiny_run.repo, configfiles=[*TINY, over]) == sorted(
        ["distill[stage2]", "evaluate[stage2]", "hard_labels[stage2]", "distill[stage3]", "evaluate[stage3]",
         *RUN_SUMMARIES])


@pytest.mark.slow
def test_stage1_change_reruns_from_stage1_on(tiny_run):
    over = write_yaml(tiny_run.dir / "stage1.yaml", {"stage1": {"proto_consistW": 5.0}})
    assert planned_jobs(tiny_run.dir, repo=tiny_run.repo, configfiles=[*TINY, over]) == sorted(
        ["stage1", "evaluate[stage1]", "hard_labels[stage1]", "distill[stage2]", "evaluate[stage2]",
         "hard_labels[stage2]", "distill[stage3]", "evaluate[stage3]", *RUN_SUMMARIES])


@pytest.mark.slow
def test_execution_settings_rerun_nothing(tiny_run):
    over = write_yaml(tiny_run.dir / "exec.yaml", {"data": {"num_workers": 1}, "train": {"log_every": 7},
                                                   "device": "auto"})
    r = smk(tiny_run.dir, "--dry-run", configfiles=[*TINY, over], repo=tiny_run.repo)
    assert "Nothing to be done" in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.mark.slow
def test_html_report_has_the_results_and_captions(tiny_run):
    r = smk(tiny_run.dir, "--report", "report.html", repo=tiny_run.repo)
    assert r.returncode == 0, r.stdout + r.stderr
    html = (tiny_run.dir / "report.html").read_text(errors="replace")
    assert len(html) > 100_000 and "summary.csv" in html and "miou_by_stage.png" in html
    assert "Stage x class table" in html and "after each stage" in html


@pytest.mark.slow
def test_experiments_share_upstream_and_switching_back_reruns_nothing(tiny_run):
    """A second experiment differing only in stage2.threshold plans (and runs) only stage 2 on;
    then the first experiment switched to that threshold finds every artifact already built, and
    switched back finds its old ones: no step of the chain reruns, only the experiment's own
    summaries (report, pictures, label quality) are rewritten."""
    b = write_yaml(tiny_run.dir / "b.yaml", {"experiment": "tiny_b", "stage2": {"threshold": 0.5}})
    jobs = planned_jobs(tiny_run.dir, repo=tiny_run.repo, configfiles=[*TINY, b])
    assert jobs == sorted(["distill[stage2]", "evaluate[stage2]", "hard_labels[stage2]", "distill[stage3]",
                           "evaluate[stage3]", *RUN_SUMMARIES])
    r = smk(tiny_run.dir, "--cores", "2", "--show-failed-logs", configfiles=[*TINY, b], repo=tiny_run.repo)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-8000:]
    mb = yaml.safe_load((tiny_run.dir / "results" / "tiny_b" / "manifest.yaml").read_text())
    for stage in ("warmup", "stage1"):
        assert mb["stages"][stage] == tiny_run.manifest["stages"][stage]
    assert mb["stages"]["stage2"]["model"] != tiny_run.manifest["stages"]["stage2"]["model"]

    switched = write_yaml(tiny_run.dir / "a05.yaml", {"stage2": {"threshold": 0.5}})
    assert planned_jobs(tiny_run.dir, repo=tiny_run.repo, configfiles=[*TINY, switched]) == sorted(RUN_SUMMARIES)
    r = smk(tiny_run.dir, "--cores", "1", configfiles=[*TINY, switched], repo=tiny_run.repo)
    assert r.returncode == 0, r.stderr[-4000:]
    assert planned_jobs(tiny_run.dir, repo=tiny_run.repo) == sorted(RUN_SUMMARIES)  # back to 0.8: all built
    r = smk(tiny_run.dir, "--cores", "1", repo=tiny_run.repo)
    assert r.returncode == 0, r.stderr[-4000:]


@pytest.mark.slow
def test_prune_lists_run_folders_no_experiment_uses(tiny_run, tmp_path):
    from proda.prune import prune

    results = tmp_path / "results"
    shutil.copytree(tiny_run.dir / "results", results, symlinks=True)
    orphan = results / "runs" / ("warmup-" + "0" * 12)
    (orphan / ("stage1-" + "1" * 12)).mkdir(parents=True)
    old = _model(tiny_run, "stage1").parent / ("stage2-" + "2" * 12)
    old = results.parent / old.relative_to(tiny_run.dir)
    old.mkdir()
    assert prune(results) == sorted([orphan, old])
    assert orphan.is_dir()  # listed, not removed
    prune(results, delete=True)
    assert not orphan.exists() and not old.exists()
    assert (results.parent / _model(tiny_run, "stage3").relative_to(tiny_run.dir)).is_file()


def _copy_of(run: SimpleNamespace, tmp_path: Path) -> SimpleNamespace:
    work = tmp_path / "work"
    shutil.copytree(run.dir, work, symlinks=True)
    return SimpleNamespace(dir=work, repo=run.repo, manifest=run.manifest)


@pytest.mark.slow
def test_truncated_soft_labels_are_never_reported_as_success(tiny_run, tmp_path):
    run = _copy_of(tiny_run, tmp_path)
    soft = next(_model(run, "warmup").parent.glob("soft_labels-*.h5"))
    soft.write_bytes(soft.read_bytes()[: soft.stat().st_size // 2])
    soft.touch()
    r = smk(run.dir, "--cores", "2", "--show-failed-logs", repo=run.repo)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-4000:]
    errors = [line for line in out.splitlines() if "error:" in line and soft.name in line]
    assert errors, out[-6000:]


@pytest.mark.slow
def test_random_bytes_in_a_model_are_never_reported_as_success(tiny_run, tmp_path):
    run = _copy_of(tiny_run, tmp_path)
    model = _model(run, "stage1")
    data = bytearray(model.read_bytes())
    data[100:5100] = os.urandom(5000)
    model.write_bytes(bytes(data))
    r = smk(run.dir, "--cores", "2", "--show-failed-logs", repo=run.repo)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-4000:]
    errors = [line for line in out.splitlines() if "error:" in line and str(model.relative_to(run.dir)) in line]
    assert errors, out[-6000:]


@pytest.mark.slow
def test_random_bytes_in_the_prototypes_stop_the_rerun_naming_the_file(tiny_run, tmp_path):
    """64 random bytes inside the prototypes' data (then touched): stage 1 is rerun, finds the file
    differs from its record and stops in one line; nothing downstream is built from it."""
    run = _copy_of(tiny_run, tmp_path)
    protos = next(_model(run, "warmup").parent.glob("prototypes-*.h5"))
    data = bytearray(protos.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = os.urandom(64)
    protos.write_bytes(bytes(data))
    stage1 = _model(run, "stage1")
    before = stage1.read_bytes()
    r = smk(run.dir, "--cores", "2", "--show-failed-logs", repo=run.repo)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-4000:]
    errors = [line for line in out.splitlines() if line.startswith("proda stage1: error:") and protos.name in line]
    assert errors and "damaged" in errors[0], out[-6000:]
    assert not stage1.exists() or stage1.read_bytes() == before


@pytest.mark.slow
def test_deleting_an_artifact_folder_recomputes_it(tiny_run, tmp_path):
    run = _copy_of(tiny_run, tmp_path)
    folder = _model(run, "stage2").parent
    shutil.rmtree(folder)
    summaries = [job for job in RUN_SUMMARIES if job != "manifest"]  # the same folders: its manifest stays
    assert planned_jobs(run.dir, repo=run.repo) == sorted(
        ["distill[stage2]", "evaluate[stage2]", "hard_labels[stage2]", "distill[stage3]", "evaluate[stage3]",
         *summaries])
    r = smk(run.dir, "--cores", "2", repo=run.repo)
    assert r.returncode == 0, r.stderr[-4000:]
    assert (folder / "model.pt").is_file()


@pytest.mark.slow
def test_synthia_layout_runs_the_16_class_chain_and_reports_miou_13(tmp_path):
    r = smk(tmp_path, "--cores", "2", "--show-failed-logs",
            configfiles=[*TINY, REPO / "config" / "tiny_synthia.yaml"])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-8000:]
    assert (tmp_path / "results" / "data").glob("toycity-*/synthia/GT/LABELS/0000001.png")
    with open(tmp_path / "results" / "tiny_synthia" / "report" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["stage"] for r in rows] == STAGES
    assert list(rows[0])[-3:] == ["mIoU", "mIoU-16", "mIoU-13"] and len(rows[0]) == 1 + 16 + 3
    assert all(0 <= float(r["mIoU-13"]) <= 100 for r in rows)


@pytest.fixture(scope="module")
def study_run(tmp_path_factory) -> Path:
    """A miniature study of the tiny config: 2 seeds, the bounds and the three ablations."""
    work = tmp_path_factory.mktemp("study")
    over = write_yaml(work / "study.yaml", {"experiment": "study", "study": {
        "seeds": [1, 2], "bounds": True, "ablations": ["no_rectify", "no_consistency", "no_distillation"]}})
    r = smk(work, "--cores", "2", "--show-failed-logs", configfiles=[*TINY, over])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-8000:]
    assert "mean ± std over seeds" in r.stdout
    return work


@pytest.mark.slow
def test_study_reports_seeds_bounds_ablations_and_label_quality(study_run):
    import pandas as pd

    study = study_run / "results" / "study"
    seeds = pd.read_csv(study / "study" / "seed_summary.csv", index_col=0)
    assert list(seeds.index) == STAGES and (seeds["n_seeds"] == 2).all()
    assert {"mIoU_mean", "mIoU_std", "mIoU_seed1", "mIoU_seed2", "road_mean", "road_std"} <= set(seeds.columns)
    assert seeds[["mIoU_mean", "mIoU_seed1", "mIoU_seed2"]].stack().between(0, 100).all()
    for seed in (1, 2):
        per_seed = pd.read_csv(study / f"seed-{seed}" / "report" / "summary.csv", index_col=0)
        assert seeds.loc["stage2", f"mIoU_seed{seed}"] == pytest.approx(per_seed.loc["stage2", "mIoU"])
    bounds = pd.read_csv(study / "study" / "bounds.csv", index_col=0)
    assert list(bounds.index) == STAGES
    assert {"source_only_mean", "oracle_mean", "gap_closed_mean", "gap_closed_std"} <= set(bounds.columns)
    ablations = pd.read_csv(study / "study" / "ablations.csv")
    names = set(ablations["name"])
    assert {"stage 1 without rectification", "stage 1 without the consistency loss",
            "stage 2 without distillation"} <= names
    assert ablations["mIoU_mean"].between(0, 100).all() and (ablations["n_seeds"] == 2).all()
    quality = pd.read_csv(study / "study" / "label_quality.csv", index_col=0)
    assert len(quality) == 5 and quality.filter(like="_mean").stack().dropna().between(0, 100).all()
    for seed in (1, 2):
        report = study / f"seed-{seed}" / "report"
        for name in ("prediction_grid.png", "training_curves.png", "label_quality.png", "miou_by_stage.png"):
            assert (report / name).stat().st_size > 1000, name
    plans = {yaml.safe_load((study / f"seed-{s}" / "manifest.yaml").read_text())["stages"]["warmup"]["model"]
             for s in (1, 2)}
    assert len(plans) == 2  # each seed trains its own chain; the generated data is shared
    assert len([p for p in (study_run / "results" / "data").glob("toycity-*") if p.is_dir()]) == 1


@pytest.mark.slow
def test_prune_keeps_every_seed_bound_and_ablation_of_a_study(study_run, tmp_path):
    """Every run of a study (seeds, bounds, ablations) writes its own manifest under the experiment
    folder, so prune finds nothing unused (with or without the aggregate study/ folder) and removes
    only a folder no run uses."""
    from proda.prune import prune

    results = tmp_path / "results"
    shutil.copytree(study_run / "results", results, symlinks=True)
    study = results / "study"
    manifests = sorted(p.parent.name for p in study.glob("*/manifest.yaml"))
    assert manifests == sorted(["seed-1", "seed-2", "source_only-seed-1", "source_only-seed-2", "oracle-seed-1",
                                "oracle-seed-2", *(f"{a}-seed-{s}" for a in ("no_rectify", "no_consistency",
                                                                              "no_distillation") for s in (1, 2))])
    assert prune(results) == []
    warmups = sorted(p for p in (results / "runs").glob("warmup-*") if p.is_dir())
    old = results / "runs" / ("warmup-" + "0" * 12)
    old.mkdir()
    assert prune(results) == [old]
    shutil.rmtree(study / "study")  # the aggregate report: the runs' own manifests still hold them
    assert prune(results, delete=True) == [old] and not old.exists()
    assert sorted(p for p in (results / "runs").glob("warmup-*") if p.is_dir()) == warmups


@pytest.mark.slow
def test_study_html_report_has_every_figure_with_a_caption(study_run):
    from proda.report import CAPTIONS

    r = smk(study_run, "--report", "report.html",
            configfiles=[*TINY, study_run / "study.yaml"])
    assert r.returncode == 0, r.stdout + r.stderr
    html = (study_run / "report.html").read_text(errors="replace")
    for name in ("prediction_grid.png", "training_curves.png", "label_quality.png", "seed_summary.png",
                 "bounds.csv", "ablations.csv"):
        assert name in html, name
        assert CAPTIONS[name].split(";")[0][:40] in html, name
