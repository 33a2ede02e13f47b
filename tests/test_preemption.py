"""Pre-emption: SIGTERM/SIGINT end a training step cleanly with a resume checkpoint; unreadable
resume checkpoints are set aside instead of failing every rerun."""
from __future__ import annotations

import csv
import math
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fakes import CountingStage

from proda.train.batches import BatchStream
from proda.train.loop import PREVIOUS_FILE, STATE_FILE, Preempted, Trainer

REPO = Path(__file__).resolve().parents[1]


class _Numbers(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        return i


def _trainer(stage, state_dir: Path, iterations: int, checkpoint_every: int = 100) -> Trainer:
    return Trainer(stage, BatchStream(_Numbers(), 2), BatchStream(_Numbers(), 2), iterations=iterations,
                   state_dir=state_dir, schedule_iters=iterations, checkpoint_every=checkpoint_every,
                   log_every=5, progress=False)


def _logged(state_dir: Path) -> list[int]:
    with open(state_dir / "train.csv", newline="") as fh:
        return [int(row["iteration"]) for row in csv.DictReader(fh)]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_after_the_iteration_with_a_resume_checkpoint(tmp_path, capsys, signum, code):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    trainer = _trainer(CountingStage(None, signum, at=3), tmp_path, iterations=10)
    with pytest.raises(Preempted) as info:
        trainer.run()
    assert info.value.code == code and isinstance(info.value, SystemExit)
    name = signal.Signals(signum).name
    line = f"fake: stopped by {name} at iteration 3/10; resume checkpoint {tmp_path / STATE_FILE} written; " \
           "rerun to resume"
    assert str(info.value) == line and line in capsys.readouterr().err
    assert {s: signal.getsignal(s) for s in before} == before      # handlers restored
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)    # no pickled objects
    assert state["iteration"] == 3 and state["modules"]["student"]["weight"].item() == 3.0
    assert _logged(tmp_path) == [3]                                 # the stop iteration is logged
    drawn = (random.random(), np.random.random(), torch.rand(1))    # the RNG state saved with it

    resumed = _trainer(CountingStage(), tmp_path, iterations=10)
    resumed._resume()
    assert (random.random(), np.random.random(), torch.rand(1)) == drawn
    resumed.run()
    assert resumed.iteration == 10 and resumed.final_student_state()["weight"].item() == 10.0
    assert _logged(tmp_path) == [3, 5, 10]


def test_signal_at_the_last_iteration_finishes_normally(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    trainer = _trainer(CountingStage(None, signal.SIGTERM, at=4), tmp_path, iterations=4)
    trainer.run()
    assert trainer.iteration == 4 and signal.getsignal(signal.SIGTERM) == before


def test_corrupt_resume_checkpoint_is_set_aside_and_the_previous_one_used(tmp_path, capsys):
    _trainer(CountingStage(), tmp_path, iterations=3, checkpoint_every=1).run()
    assert torch.load(tmp_path / PREVIOUS_FILE, weights_only=True)["iteration"] == 2  # rotated, kept
    last = tmp_path / STATE_FILE
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated, as by a full disk

    trainer = _trainer(CountingStage(), tmp_path, iterations=5)
    trainer.run()
    err = capsys.readouterr()
    report = [line for line in err.err.splitlines() if "unreadable" in line]
    assert len(report) == 1 and str(last) in report[0] and f"set aside as {last}.corrupt" in report[0]
    assert "Traceback" not in err.err
    assert f"resumed from {tmp_path / PREVIOUS_FILE} at iteration 2" in err.out
    assert (tmp_path / f"{STATE_FILE}.corrupt").is_file()
    assert trainer.final_student_state()["weight"].item() == 5.0  # 2 restored + 3 steps
    assert _logged(tmp_path) == [5]  # the row of iteration 3 went with the checkpoint


def test_no_readable_resume_checkpoint_starts_from_zero(tmp_path, capsys):
    for name in (STATE_FILE, PREVIOUS_FILE):
        (tmp_path / name).write_bytes(b"not a checkpoint")
    trainer = _trainer(CountingStage(), tmp_path, iterations=2)
    trainer.run()
    assert capsys.readouterr().err.count("unreadable") == 2
    assert trainer.final_student_state()["weight"].item() == 2.0
    trainer.discard_state()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{STATE_FILE}.corrupt", f"{PREVIOUS_FILE}.corrupt",
                                                           "train.csv"]


def _overwrite_member(path: Path, content: bytes, replacement: bytes) -> str:
    """Overwrite, in place, the bytes of the one zip member holding exactly ``content`` (no CRC
    update, as random damage would); returns the member's name."""
    with zipfile.ZipFile(path) as archive:
        hits = [i for i in archive.infolist() if archive.read(i) == content]
    assert len(hits) == 1, [i.filename for i in hits]
    with open(path, "r+b") as fh:
        fh.seek(hits[0].header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", fh.read(4))
        fh.seek(hits[0].header_offset + 30 + name_len + extra_len)
        fh.write(replacement)
    return hits[0].filename


def test_damaged_resume_checkpoint_is_set_aside_like_a_truncated_one(tmp_path, capsys):
    """Bytes damaged inside last.pt (the student weight 3.0 made NaN) load without complaint from
    torch; the CRC check sets the file aside and the run resumes from previous.pt."""
    _trainer(CountingStage(), tmp_path, iterations=3, checkpoint_every=1).run()
    last = tmp_path / STATE_FILE
    member = _overwrite_member(last, struct.pack("<f", 3.0), struct.pack("<f", math.nan))
    assert math.isnan(torch.load(last, weights_only=True)["modules"]["student"]["weight"].item())
    capsys.readouterr()

    trainer = _trainer(CountingStage(), tmp_path, iterations=5)
    trainer.run()
    out, err = capsys.readouterr()
    report = [line for line in err.splitlines() if "unreadable" in line]
    assert len(report) == 1 and f"CRC check failed for member {member!r}" in report[0]
    assert f"resume checkpoint {last} is unreadable" in report[0] and f"set aside as {last}.corrupt" in report[0]
    assert f"resumed from {tmp_path / PREVIOUS_FILE} at iteration 2" in out
    assert trainer.final_student_state()["weight"].item() == 5.0 and _logged(tmp_path) == [5]


def test_restart_from_zero_drops_the_log_rows_of_the_killed_run(tmp_path):
    """Killed before its first resume checkpoint, a run restarts from zero: the rows the killed
    run logged go (no 1, 1, 2, ... duplicates)."""
    with pytest.raises(Preempted):
        Trainer(CountingStage(None, signal.SIGTERM, at=2), BatchStream(_Numbers(), 2), BatchStream(_Numbers(), 2),
                iterations=4, state_dir=tmp_path, schedule_iters=4, log_every=1, progress=False).run()
    assert _logged(tmp_path) == [1, 2]
    (tmp_path / STATE_FILE).unlink()  # as if killed before the checkpoint was written
    Trainer(CountingStage(), BatchStream(_Numbers(), 2), BatchStream(_Numbers(), 2), iterations=4,
            state_dir=tmp_path, schedule_iters=4, log_every=1, progress=False).run()
    assert _logged(tmp_path) == [1, 2, 3, 4]


# ---------------------------------------------------------------------------- a real training process
# DataLoader workers survive the job-wide signal only when BatchStream passes them
# worker_init_fn=proda.runtime.shield_worker


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    from proda.data.toycity import generate

    return generate(tmp_path_factory.mktemp("toy") / "data", seed=1, n_source=8, n_target_train=8, n_target_val=2,
                    source_size=[80, 44], target_size=[96, 48])


def _config(paths: dict[str, Path], num_workers: int, path: Path) -> Path:
    over = {
        "device": "cpu", "seed": 3,
        "data": {"source": {"dataset": "gta5", "root": str(paths["source"]), "size": [80, 44]},
                 "target": {"dataset": "cityscapes", "root": str(paths["target"]), "size": [96, 48]},
                 "batch_size": 2, "num_workers": num_workers, "resize": 100, "crop": [64, 32]},
        "model": {"backbone": "resnet18", "base_width": 8, "head_channels": 32},
        # checkpoint_every beyond the run: only the signal can explain a checkpoint
        "train": {"log_every": 1, "checkpoint_every": 1000},
        "warmup": {"iterations": 100, "lr": 0.01, "freeze_bn": False},
        "stage2": {"student_init": "warmup_backbone"},
    }
    path.write_text(yaml.safe_dump(over))
    return path


def _warmup(config: Path, out: Path) -> subprocess.Popen:
    # a session of its own: the signal goes to the whole process group, DataLoader worker included,
    # as SLURM signals every process of a job step
    return subprocess.Popen([sys.executable, "-m", "proda.cli", "warmup", "--config", str(config), "--out", str(out),
                             "--threads", "1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_sigterm_to_a_training_process_checkpoints_and_the_rerun_resumes(toy_data, tmp_path, num_workers):
    """SIGTERM to the process group of `proda warmup` (as SLURM's): exit 143 with a resume
    checkpoint at the iteration reached; the rerun resumes there and finishes."""
    toy_config = _config(toy_data, num_workers, tmp_path / "tiny.yaml")
    out, state = tmp_path / "warmup/model.pt", tmp_path / "warmup/state"
    run = _warmup(toy_config, out)
    deadline = time.time() + 240
    log = state / "train.csv"
    while run.poll() is None and time.time() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) >= 4:  # header + 3 iterations
            break
        time.sleep(0.05)
    assert run.poll() is None, run.communicate()[0]
    os.killpg(run.pid, signal.SIGTERM)
    text, _ = run.communicate(timeout=120)
    assert run.returncode == 143, text
    stopped_at = torch.load(state / STATE_FILE, weights_only=True)["iteration"]
    assert 3 <= stopped_at < 100 and _logged(state)[-1] == stopped_at, text
    assert (f"warmup: stopped by SIGTERM at iteration {stopped_at}/100; resume checkpoint "
            f"{state / STATE_FILE} written; rerun to resume") in text
    assert "Traceback" not in text and not out.exists()

    rerun = _warmup(toy_config, out)
    text, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, text
    assert f"resumed from {state / STATE_FILE} at iteration {stopped_at}" in text
    assert out.is_file() and _logged(state) == list(range(1, 101))
