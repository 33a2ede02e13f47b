"""What the workflow's jobs call, tested without Snakemake: one registered step run in process with
its provenance record, the torchrun command line, log redirection, one-line failures and
resume-state hygiene."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fakes import lock_held_elsewhere

from proda.cli import main, parser
from proda.config import execution_settings, load_defaults, step_view
from proda.integrity import DamagedArtifactError
from proda.steps import run_rule, run_step, torchrun_command
from proda.train.resume import job_fingerprint, prepare_state_dir

REPO = Path(__file__).resolve().parents[1]


def _toy_config(**toycity) -> dict:
    cfg = load_defaults()
    cfg["data"]["toycity"] = {"seed": 0, "n_source": 3, "n_target_train": 2, "n_target_val": 2,
                              "source_size": [48, 24], "target_size": [48, 24], **toycity}
    return cfg


def test_torchrun_command_runs_a_step_of_the_cli():
    argv = ["stage1", "--config-json", "c.json", "--warmup", "w", "--soft", "s", "--prototypes", "p", "--out", "o"]
    cmd = torchrun_command(argv, 4)
    assert cmd[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert cmd[6] == "proda.cli"
    args = parser().parse_args(cmd[7:])
    assert (args.command, args.warmup, args.soft, args.prototypes, args.out) == ("stage1", "w", "s", "p", "o")


def test_run_step_writes_the_artifact_its_record_and_checks_it_before_use(tmp_path, capsys):
    cfg = _toy_config()
    out = tmp_path / "toycity-x"
    run_step("toycity", cfg, out=out, inputs={})
    record = yaml.safe_load((tmp_path / "toycity-x.record.yaml").read_text())
    assert record["step"] == "toycity" and record["settings"] == step_view(cfg, "toycity")
    assert set(record["outputs"]) == {"toycity-x"} and len(record["outputs"]["toycity-x"]["sha256"]) == 64
    assert main(["show", str(out)]) == 0
    assert "data.toycity.n_source: 3" in capsys.readouterr().out

    other = tmp_path / "toycity-y"
    run_step("toycity", _toy_config(n_source=4), out=other, inputs={})
    assert main(["show", str(out), str(other)]) == 0
    diff = capsys.readouterr().out.splitlines()
    assert diff[2:] == ["  data.toycity.n_source: 3 -> 4"]

    label = next((out / "cityscapes" / "gtFine").rglob("*_labelIds.png"))
    label.write_bytes(label.read_bytes()[:-7] + os.urandom(7))  # damaged after it was written
    with pytest.raises(DamagedArtifactError, match=f"{out}.*differ from those recorded"):
        run_step("toycity", cfg, out=tmp_path / "toycity-z", inputs={"data": out})
    assert not (tmp_path / "toycity-z").exists()


def test_run_rule_failure_is_one_line_in_the_log(tmp_path):
    full = _toy_config()
    view = step_view(full, "toycity")
    log = tmp_path / "toy.log"
    code = ("import json, sys; from proda.steps import run_rule; "
            "run_rule('toycity', json.loads(sys.argv[1]), run_config=json.loads(sys.argv[2]), inputs={}, "
            "log=sys.argv[3], out=sys.argv[4])")
    bad = {**view, "data": {"toycity": {**view["data"]["toycity"], "n_source": 0}}}
    r = subprocess.run([sys.executable, "-c", code, json.dumps(bad), json.dumps(full), str(log), str(tmp_path / "b")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and not (tmp_path / "b").exists()
    last = log.read_text().splitlines()[-1]
    assert last.startswith("proda toycity: error: ") and "n_source" in last, last
    assert not (tmp_path / "b.record.yaml").exists()


def test_run_rule_gives_the_step_only_its_view_and_the_execution_settings(tmp_path, monkeypatch):
    seen = {}

    def fake_toycity(cfg, out):
        seen.update(cfg)
        # the package's frames between the worker and the step: proda/steps.py only (run_rule, run_step)
        seen["callers"] = {Path(f.filename).relative_to(REPO).as_posix() for f in inspect.stack()[1:]
                           if Path(f.filename).is_relative_to(REPO / "proda")}
        Path(out).mkdir()

    from proda import steps

    def checked_again(*args, **kwargs):
        raise AssertionError("a job merged defaults or validated the config again")

    monkeypatch.setattr(steps, "toycity", fake_toycity)
    full = _toy_config()
    for name in ("load_defaults", "deep_merge", "problems", "validate", "resolve"):
        monkeypatch.setattr(f"proda.config.{name}", checked_again)
    run_rule("toycity", step_view(full, "toycity"), run_config=full, inputs={}, out=str(tmp_path / "t"))
    assert seen.pop("callers") == {"proda/steps.py"}
    assert set(seen) == {"data", "train", "device", "unsafe_pickle"}
    assert seen["data"].keys() == {"toycity", "num_workers"} and seen["train"] == execution_settings(full)["train"]


def test_two_runs_never_write_one_artifact_at_once(tmp_path):
    """Two checkouts sharing a results directory: while one job holds an artifact's lock, another
    job for the same artifact stops in one line and writes nothing."""
    out = tmp_path / "toycity-x"
    with lock_held_elsewhere(out) as holder:
        with pytest.raises(ValueError, match=f"{out} is being written by another run .pid {holder.pid}."):
            run_step("toycity", _toy_config(), out=out, inputs={})
        assert not out.exists() and not (tmp_path / "toycity-x.record.yaml").exists()
    run_step("toycity", _toy_config(), out=out, inputs={})  # the lock went with its process
    assert (tmp_path / "toycity-x.record.yaml").is_file()


def test_a_training_job_with_several_gpus_runs_its_step_under_torchrun(tmp_path, monkeypatch):
    """gpus > 1: the step runs as `torchrun ... -m proda.cli <step> --config-json` with the job's
    config and inputs (the parent job checks inputs, holds the lock and writes the record)."""
    from proda import steps

    launched = {}

    def fake_run(cmd, env):
        launched["cmd"] = cmd
        args = parser().parse_args(cmd[7:])
        launched["cfg"] = json.loads(Path(args.config_json).read_text())
        out = Path(args.out)
        out.parent.mkdir(parents=True)
        out.write_bytes(b"model")
        out.with_name("train.csv").write_text("iteration\n")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(steps.subprocess, "run", fake_run)
    inputs = {role: tmp_path / f"{role}.bin" for role in ("warmup", "soft", "prototypes")}
    for path in inputs.values():
        path.write_bytes(b"x")
    cfg = load_defaults()
    out = tmp_path / "stage1-x" / "model.pt"
    run_step("stage1", cfg, out=out, inputs=inputs, threads=4, gpus=2)
    args = parser().parse_args(launched["cmd"][7:])
    assert launched["cmd"][4] == "--nproc_per_node=2" and (args.command, args.threads) == ("stage1", 2)
    assert (args.warmup, args.soft, args.prototypes) == tuple(str(p) for p in inputs.values())
    assert args.state_dir == str(out.parent / "state") and launched["cfg"] == json.loads(json.dumps(cfg))
    record = yaml.safe_load((out.parent / "record.yaml").read_text())
    assert set(record["outputs"]) == {"model.pt", "train.csv"} and set(record["inputs"]) == set(inputs)


def test_a_missing_input_role_is_named():
    with pytest.raises(ValueError, match="step stage1 needs the input.s. soft, prototypes"):
        run_step("stage1", load_defaults(), out="x/model.pt", inputs={"warmup": "w.pt"})


def test_redirect_output_captures_python_and_child_processes(tmp_path):
    log = tmp_path / "job.log"
    code = ("import subprocess, sys; from proda.logs import redirect_output; redirect_output(sys.argv[1]); "
            "print('from python'); print('to stderr', file=sys.stderr); "
            "subprocess.run(['echo', 'from a child'])")
    r = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    assert log.read_text().splitlines() == ["from python", "to stderr", "from a child"]


def test_state_is_kept_only_for_the_same_job(tmp_path):
    state = tmp_path / "stage2" / "state"
    inputs = [tmp_path / "teacher.pt"]
    inputs[0].write_bytes(b"weights")
    view = {"stage2": {"threshold": 0.5}}
    assert not prepare_state_dir(state, job_fingerprint(view, inputs))  # nothing to resume yet
    (state / "last.pt").write_text("resume me")
    (state / "train.csv").write_text("iteration\n1\n")
    assert prepare_state_dir(state, job_fingerprint(view, inputs))  # the same job again: resume
    assert (state / "last.pt").read_text() == "resume me"
    assert not prepare_state_dir(state, job_fingerprint({"stage2": {"threshold": 0.6}}, inputs))  # other view
    assert sorted(p.name for p in state.iterdir()) == ["job.json"]
    (state / "last.pt").write_text("resume me")
    fingerprint = job_fingerprint(view, inputs)
    prepare_state_dir(state, fingerprint)
    time.sleep(0.01)
    inputs[0].write_bytes(b"recomputed")  # an input rewritten (e.g. recomputed after corruption)
    assert job_fingerprint(view, inputs) != fingerprint
    assert not prepare_state_dir(state, job_fingerprint(view, inputs))
    assert not (state / "last.pt").exists()


def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("proda evaluate: error: ") and "missing.pt" in err[0]


def test_config_docs_command_prints_every_key(capsys):
    assert main(["config-docs"]) == 0
    text = capsys.readouterr().out
    for key in ("stage2.threshold", "stage1.proto_consistW", "data.toycity", "precision", "unsafe_pickle"):
        assert f"`{key}`" in text


def test_the_package_has_one_command_line():
    """Only proda.cli parses arguments (the workflow's jobs call the steps directly)."""
    for path in (REPO / "proda").rglob("*.py"):
        if path.name != "cli.py":
            assert "argparse" not in path.read_text(), path
    assert os.path.isfile(REPO / "proda" / "__main__.py")
