"""proda.integrity and proda.files: damaged archives, a full disk, job locks."""
from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from proda import files
from fakes import lock_held_elsewhere

from proda.files import LockedError, NoSpaceLeftError, atomic_path, is_locked, job_lock, lock_holder
from proda.integrity import DamagedArtifactError, verify_archive, zip_damage
from proda.models.checkpoint import save_checkpoint
from proda.models.deeplabv2 import DeepLabV2

Usage = namedtuple("Usage", "total used free")


# ---------------------------------------------------------------------------- zip archives
def test_zip_damage_of_an_intact_archive_is_none_and_a_legacy_file_passes(tmp_path):
    torch.save({"w": torch.arange(100.0)}, tmp_path / "new.pt")
    assert zip_damage(tmp_path / "new.pt") is None
    verify_archive(tmp_path / "new.pt")
    torch.save({"w": torch.arange(100.0)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    verify_archive(tmp_path / "old.pt")  # cannot be checked: passes
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(DamagedArtifactError, match=r"file .*empty\.pt is damaged \(empty file\)"):
        verify_archive(tmp_path / "empty.pt")


# ---------------------------------------------------------------------------- a full disk
def _no_space_oserror(tmp: Path) -> None:
    tmp.write_bytes(b"partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _opaque_torch_failure(tmp: Path) -> None:
    tmp.write_bytes(b"partial")
    raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                       "data/0: file write failed")


@pytest.mark.parametrize("fail", [_no_space_oserror, _opaque_torch_failure])
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch, fail):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 << 30, 10 << 30, 0))
    target = tmp_path / "out" / "model.pt"
    with pytest.raises(NoSpaceLeftError) as err:
        with atomic_path(target) as tmp:
            fail(tmp)
    assert str(err.value) == f"no space left on device writing {target}"
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, ValueError)  # the CLI: one line
    assert list(target.parent.iterdir()) == []  # the temporary file is removed


def test_an_opaque_write_failure_with_free_space_is_not_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 << 30, 1 << 30, 9 << 30))
    with pytest.raises(RuntimeError, match="enforce fail") as err:
        with atomic_path(tmp_path / "model.pt") as tmp:
            _opaque_torch_failure(tmp)
    assert not isinstance(err.value, NoSpaceLeftError) and list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="shape mismatch"):  # not a write: never a full disk
        monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 << 30, 10 << 30, 0))
        with atomic_path(tmp_path / "model.pt"):
            raise RuntimeError("shape mismatch")


def test_saving_a_checkpoint_on_a_full_disk(tmp_path, monkeypatch):
    """torch.save's own failure on a full disk (an 'enforce fail' RuntimeError)."""
    def failing_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4480 vs 4416")

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 << 30, 10 << 30, 1024))
    model = DeepLabV2(3, backbone="resnet18", base_width=8, head_channels=16)
    with pytest.raises(NoSpaceLeftError, match=r"^no space left on device writing .*model\.pt$"):
        save_checkpoint(tmp_path / "model.pt", model)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- job locks
def test_job_lock_is_exclusive_names_the_holder_and_is_released(tmp_path):
    artifact = tmp_path / "runs" / "warmup-abc"
    assert not is_locked(artifact) and lock_holder(artifact) is None
    assert not (tmp_path / "runs").exists()  # probing creates nothing
    with job_lock(artifact) as lock:
        assert lock == tmp_path / "runs" / "warmup-abc.lock" and lock.read_text() == f"{os.getpid()}\n"
        assert is_locked(artifact) and lock_holder(artifact) == str(os.getpid())
        with pytest.raises(LockedError) as err:
            with job_lock(artifact):
                pass
        assert str(err.value) == f"{artifact} is being written by another run (pid {os.getpid()})"
        assert isinstance(err.value, ValueError)
    assert not is_locked(artifact)
    with job_lock(artifact):  # free again
        pass


def test_a_lock_held_by_another_process_and_released_when_it_dies(tmp_path):
    artifact = tmp_path / "model.pt"
    with lock_held_elsewhere(artifact) as holder:
        assert lock_holder(artifact) == str(holder.pid)
        with pytest.raises(LockedError, match=rf"being written by another run \(pid {holder.pid}\)"):
            with job_lock(artifact):
                pass
    assert not is_locked(artifact)  # a killed job leaves no held lock
    assert files.lock_path(artifact).is_file()


def test_a_full_disk_while_appending_to_the_training_log(tmp_path, monkeypatch):
    from proda.files import reporting_full_disk

    log = tmp_path / "train.csv"
    with pytest.raises(NoSpaceLeftError, match=rf"^no space left on device writing {log}$"):
        with reporting_full_disk(log), open(log, "a"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OSError, match="Permission denied") as err:
        with reporting_full_disk(log):
            raise PermissionError(errno.EACCES, "Permission denied")
    assert not isinstance(err.value, NoSpaceLeftError)
