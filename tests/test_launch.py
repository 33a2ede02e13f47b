"""What the workflow's workers call, tested without Snakemake: the one CLI, the command lines the
launcher builds from its parser (in process and under torchrun), log redirection and resume-state
hygiene."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from proda.cli import command_line, main, parser
from proda.config import load_defaults, step_view
from proda.launch import run_step, torchrun_command
from proda.train.resume import job_fingerprint, prepare_state_dir

REPO = Path(__file__).resolve().parents[1]


def _parse(argv: list[str]):
    return parser().parse_args(argv)


def test_command_lines_come_from_the_cli_parser():
    argv = command_line("stage2", config_json="c.json", threads=4, teacher="s1.pt", labels="h.h5", out="s2.pt",
                        init=None, state_dir="st")
    args = _parse(argv)
    assert (args.command, args.teacher, args.labels, args.out, args.state_dir, args.init, args.threads) == \
        ("stage2", "s1.pt", "h.h5", "s2.pt", "st", None, 4)
    args = _parse(command_line("stage1", warmup="w", soft="s", prototypes="p", out="o"))
    assert (args.warmup, args.soft, args.prototypes, args.out) == ("w", "s", "p", "o")
    with pytest.raises(ValueError, match="no option for 'weights'"):
        command_line("stage1", weights="x")


def test_torchrun_command_runs_the_same_command_line():
    argv = command_line("stage1", config_json="c.json", warmup="w", soft="s", prototypes="p", out="o")
    cmd = torchrun_command(argv, 4)
    assert cmd[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert cmd[6] == "proda.cli" and _parse(cmd[7:]) == _parse(argv)


def test_redirect_output_captures_python_and_child_processes(tmp_path):
    log = tmp_path / "job.log"
    code = ("import subprocess, sys; from proda.logs import redirect_output; redirect_output(sys.argv[1]); "
            "print('from python'); print('to stderr', file=sys.stderr); "
            "subprocess.run(['echo', 'from a child'])")
    r = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    assert log.read_text().splitlines() == ["from python", "to stderr", "from a child"]


def test_run_step_writes_the_artifact_and_a_failure_is_one_line_in_the_log(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    full = {**load_defaults(), "data": {**load_defaults()["data"], **cfg["data"]}}
    view = step_view(full, "toycity")
    out, log = tmp_path / "toy", tmp_path / "toy.log"
    code = ("import json, sys; from proda.launch import run_step; "
            "run_step('toycity', json.loads(sys.argv[1]), run_config=json.loads(sys.argv[2]), log=sys.argv[3], "
            "out=sys.argv[4])")
    import json

    r = subprocess.run([sys.executable, "-c", code, json.dumps(view), json.dumps(full), str(log), str(out)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, log.read_text()
    assert (out / "gta5" / "split.mat").is_file() and (out / "cityscapes").is_dir()
    bad = {**view, "data": {"toycity": {**view["data"]["toycity"], "n_source": 0}}}
    r = subprocess.run([sys.executable, "-c", code, json.dumps(bad), json.dumps(full), str(log), str(tmp_path / "b")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and not (tmp_path / "b").exists()
    last = log.read_text().splitlines()[-1]
    assert last.startswith("proda toycity: error: config key 'data.toycity.n_source'"), last


def test_run_step_rejects_a_bad_view_in_process(tmp_path):
    with pytest.raises(SystemExit) as exc:
        run_step("toycity", {"data": {"toycity": {"seed": "x"}}}, run_config=load_defaults(), out=str(tmp_path / "t"))
    assert exc.value.code == 2


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
    """Only proda.cli parses arguments (the workflow's launcher and every step go through it)."""
    for path in (REPO / "proda").rglob("*.py"):
        if path.name != "cli.py":
            assert "argparse" not in path.read_text(), path
    assert os.path.isfile(REPO / "proda" / "__main__.py")
