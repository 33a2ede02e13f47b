"""proda.prune: remove only run folders that no manifest uses and no running job holds."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fakes import lock_held_elsewhere

from proda.files import job_lock, lock_path
from proda.prune import prune

H = "0123456789ab"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    return path


def _manifest(path: Path, stages: dict[str, str], artifacts: list[str]) -> None:
    """A manifest naming each stage's model and evaluation CSV, and ``artifacts``, as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {s: {"model": f"{folder}/model.pt", "eval": f"{folder}/eval-{H}.csv"} for s, folder in stages.items()}
    path.write_text(yaml.safe_dump({"experiment": "exp", "stages": entry, "artifacts": artifacts}))


@pytest.fixture()
def results(tmp_path) -> dict[str, Path]:
    """A study: two seeds (one manifest with paths relative to results_dir, one relative to the
    experiment folder as older manifests were), a source-only bound and an ablation, each with a
    manifest of its own in <experiment>/<run>/; plus an orphan tree and a superseded stage 1."""
    root = tmp_path / "results"
    runs = root / "runs"
    w1, w2, src, orphan = (runs / f"warmup-{c * 12}" for c in "1234")
    folders = {"w1": w1, "s1": w1 / f"stage1-{'a' * 12}", "s2": w1 / f"stage1-{'a' * 12}" / f"stage2-{'b' * 12}",
               "w2": w2, "w2s1": w2 / f"stage1-{'c' * 12}", "src": src,
               "ablation": w1 / f"stage1-{'d' * 12}", "old": w1 / f"stage1-{'e' * 12}",
               "orphan": orphan, "orphan_child": orphan / f"stage1-{'f' * 12}"}
    for folder in folders.values():
        _touch(folder / "model.pt")
    _touch(w1 / f"soft_labels-{H}.h5")
    rel = {k: str(v.relative_to(root)) for k, v in folders.items()}
    exp = root / "exp"
    _manifest(exp / "seed-1" / "manifest.yaml", {"warmup": rel["w1"], "stage1": rel["s1"], "stage2": rel["s2"]},
              [rel["w1"], f"{rel['w1']}/soft_labels-{H}", rel["s1"], rel["s2"]])
    _manifest(exp / "seed-2" / "manifest.yaml", {"warmup": f"../{rel['w2']}", "stage1": f"../{rel['w2s1']}"},
              [f"../{rel['w2']}", f"../{rel['w2s1']}"])
    _manifest(exp / "source_only-seed-1" / "manifest.yaml", {}, [rel["src"]])  # a bound: artifacts only
    _manifest(exp / "no_rectify-seed-1" / "manifest.yaml", {"stage1": rel["ablation"]}, [rel["ablation"]])
    return {"root": root, **folders}


def test_lists_only_folders_no_manifest_uses(results, capsys):
    assert prune(results["root"]) == [results["old"], results["orphan"]]
    assert all(results[k].is_dir() for k in ("old", "orphan", "orphan_child"))  # listed, not removed
    out = capsys.readouterr().out
    assert f"unused: {results['old']}" in out and f"unused: {results['orphan']}" in out


def test_delete_removes_them_and_their_lock_files_and_keeps_every_used_folder(results):
    stale = lock_path(results["old"])
    stale.write_text("123\n")  # left behind by a finished job
    gone = lock_path(results["root"] / "runs" / f"warmup-{'9' * 12}")
    gone.write_text("456\n")   # its folder was removed by hand
    assert prune(results["root"], delete=True) == [results["old"], results["orphan"]]
    assert not results["old"].exists() and not results["orphan"].exists()
    assert not stale.exists() and not gone.exists()
    for key in ("w1", "s1", "s2", "w2", "w2s1", "src", "ablation"):
        assert (results[key] / "model.pt").is_file(), key
    assert prune(results["root"], delete=True) == []


def test_a_folder_a_running_job_holds_is_kept(results, capsys):
    """A job (another process) writing inside the orphan tree: the tree is reported and kept."""
    job = results["orphan_child"] / "model.pt"
    with lock_held_elsewhere(job) as holder:
        assert prune(results["root"], delete=True) == [results["old"]]
        assert job.is_file()
        assert f"kept (a running job holds it, pid {holder.pid}): {results['orphan']}" in capsys.readouterr().out
    assert prune(results["root"], delete=True) == [results["orphan"]]  # released: now removed


def test_a_folder_locked_itself_is_kept(results):
    with job_lock(results["old"]):
        assert prune(results["root"], delete=True) == [results["orphan"]]
    assert results["old"].is_dir()


def test_missing_results_directory_and_no_manifest_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^results directory .*nowhere does not exist$"):
        prune(tmp_path / "nowhere")
    _touch(tmp_path / "results" / "runs" / f"warmup-{H}" / "model.pt")
    with pytest.raises(ValueError, match="no manifest.yaml under"):
        prune(tmp_path / "results", delete=True)
    assert (tmp_path / "results" / "runs" / f"warmup-{H}" / "model.pt").is_file()


def test_an_unreadable_manifest_stops_pruning(results):
    (results["root"] / "exp" / "seed-2" / "manifest.yaml").write_bytes(b"\xff\xfe: [")
    with pytest.raises(ValueError, match=r"cannot read manifest .*seed-2/manifest.yaml"):
        prune(results["root"], delete=True)
    assert results["orphan"].is_dir()
