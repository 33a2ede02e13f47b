"""Training stages on a tiny toy-city benchmark: one-step numerics, quirk switches, resume, DDP."""
from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from proda import steps
from proda.config import resolve
from proda.data.toycity import generate
from proda.models import DeepLabV2, load_checkpoint, save_checkpoint
from proda.prototypes import class_mean_vectors, moving_update
from proda.train.distill import teacher_view
from proda.train.optim import schedule_length
from proda.runtime import make_runtime
from proda.train.builders import source_dataset, stream, target_dataset, training_view
from proda.resize import up

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"backbone": "resnet18", "base_width": 8, "head_channels": 32}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    """A tiny benchmark and a config for it."""
    root = tmp_path_factory.mktemp("toy")
    opts = {"seed": 1, "n_source": 8, "n_target_train": 8, "n_target_val": 2,
            "source_size": [80, 44], "target_size": [96, 48]}
    paths = generate(root / "data", **opts)
    over = {
        "device": "cpu", "seed": 3,
        "data": {"source": {"dataset": "gta5", "root": str(paths["source"]), "size": [80, 44]},
                 "target": {"dataset": "cityscapes", "root": str(paths["target"]), "size": [96, 48]},
                 "batch_size": 2, "num_workers": 0, "resize": 100, "crop": [64, 32]},
        "model": TINY_MODEL,
        "train": {"log_every": 1, "checkpoint_every": 2},
        "warmup": {"iterations": 6, "lr": 0.01, "freeze_bn": False},
        "stage1": {"iterations": 2, "lr": 0.01, "ema_eval": True},
        "stage2": {"iterations": 2, "lr": 0.01, "student_init": "warmup_backbone"},
        "stage3": {"iterations": 2, "lr": 0.01},
    }
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(over))
    return {"root": root, "cfg": resolve(over), "cfg_path": cfg_path}


def test_quirk_switches_follow_parity():
    assert schedule_length(100, 90000, parity=False) == 100          # Q14: consistent schedule
    assert schedule_length(100, 90000, parity=True) == 90000
    assert steps.prototype_passes(1, parity=False) == 1              # Q11: one exact pass
    assert steps.prototype_passes(1, parity=True) == 4
    weak, strong = torch.zeros(1), torch.ones(1)                      # Q8: the teacher's view
    assert teacher_view({"img_strong": strong}, weak, parity=False) is weak
    assert teacher_view({"img_strong": strong}, weak, parity=True) is strong


def _warmup_artifacts(toy: dict, tmp: Path) -> dict:
    cfg = toy["cfg"]
    torch.manual_seed(0)
    model = DeepLabV2(19, **TINY_MODEL)
    ckpt = save_checkpoint(tmp / "warmup.pt", model)
    steps.soft_labels(cfg, ckpt, tmp / "soft.h5")
    steps.prototypes(cfg, ckpt, tmp / "protos.h5")
    return {"ckpt": ckpt, "soft": tmp / "soft.h5", "protos": tmp / "protos.h5"}


def test_stage1_step_updates_ema_and_prototypes_as_the_reference(toy, tmp_path):
    """One stage-1 step: θ_E ← 0.999 θ_E + 0.001 θ_G, buffers copied, η moved towards EMA class means."""
    from proda.prototypes import load_prototypes
    from proda.pseudo_labels import SoftLabelStore
    from proda.train.stage1 import Stage1

    cfg = copy.deepcopy(toy["cfg"])
    art = _warmup_artifacts(toy, tmp_path)
    runtime = make_runtime(cfg)
    eta0, _, _ = load_prototypes(art["protos"])
    stage = Stage1(cfg, runtime, str(art["ckpt"]), eta0)
    view = training_view(target_dataset(cfg, labels=False), cfg, seed=1, strong=True, full_image=True,
                         soft_labels=SoftLabelStore(art["soft"]))
    src = next(stream(training_view(source_dataset(cfg), cfg, seed=0), cfg, runtime, seed=0))
    tgt = next(stream(view, cfg, runtime, seed=1))
    ema_before = copy.deepcopy(stage.ema)
    with torch.no_grad():
        e = ema_before(tgt["img_full"])  # ema_eval: deterministic
    full4 = (tgt["img_full"].shape[-2] // 4, tgt["img_full"].shape[-1] // 4)
    vectors, ids = class_mean_vectors(up(e["feat"], full4), up(e["out"], full4))
    assert len(ids) > 0
    expected_eta = moving_update(eta0.float(), vectors, ids, cfg["stage1"]["proto_momentum"])

    losses = stage.step(src, tgt, 1)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    torch.testing.assert_close(stage.prototypes(), expected_eta)
    assert not torch.equal(stage.prototypes(), eta0.float())
    student = dict(stage.student.named_parameters())
    for name, p in stage.ema.named_parameters():
        old = dict(ema_before.named_parameters())[name]
        torch.testing.assert_close(p, 0.999 * old + 0.001 * student[name])
    for name, b in stage.ema.named_buffers():
        torch.testing.assert_close(b, dict(stage.student.named_buffers())[name])


def _proda(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "proda.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_resumed_run_after_kill_matches_uninterrupted_run(toy, tmp_path):
    cfg = str(toy["cfg_path"])
    full = _proda("warmup", "--config", cfg, "--out", str(tmp_path / "a/model.pt"), "--threads", "1")
    assert full.wait(timeout=300) == 0, full.stdout.read()

    state = tmp_path / "b/state/last.pt"
    run = _proda("warmup", "--config", cfg, "--out", str(tmp_path / "b/model.pt"), "--threads", "1")
    deadline = time.time() + 240
    while not state.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert state.exists(), "no resume checkpoint was written"
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not (tmp_path / "b/model.pt").exists()
    killed_at = torch.load(state, weights_only=True)["iteration"]
    assert 0 < killed_at < 6

    resumed = _proda("warmup", "--config", cfg, "--out", str(tmp_path / "b/model.pt"), "--threads", "1")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resumed from {state} at iteration {killed_at}" in out
    a, b = load_checkpoint(tmp_path / "a/model.pt"), load_checkpoint(tmp_path / "b/model.pt")
    assert a["iter"] == b["iter"] == 6
    for key, value in a["ResNet101"]["model_state"].items():
        torch.testing.assert_close(b["ResNet101"]["model_state"][key], value, msg=key)
    log = (tmp_path / "b/state/train.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in log[1:]] == [1, 2, 3, 4, 5, 6]


def test_torchrun_ddp_two_cpu_processes(toy, tmp_path):
    """Stage 1 under torchrun: 2 gloo processes, DDP + synchronised BN, rank-0 checkpoint."""
    art = _warmup_artifacts(toy, tmp_path)
    out = tmp_path / "ddp/model.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "proda.cli", "stage1", "--config", str(toy["cfg_path"]), "--warmup", str(art["ckpt"]),
           "--soft", str(art["soft"]), "--prototypes", str(art["protos"]), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = load_checkpoint(out)
    assert ckpt["iter"] == 2
    assert "module." not in next(iter(ckpt["ResNet101"]["model_state"]))
    assert ckpt["ResNet101"]["objective_vectors"].abs().sum() > 0


@pytest.mark.parametrize("parity", [False, True])
def test_whole_chain_runs_in_both_modes(toy, tmp_path, parity):
    """warm-up → soft labels → prototypes → stage 1 → hard labels → stage 2 → stage 3, both settings."""
    import h5py

    cfg = copy.deepcopy(toy["cfg"])
    cfg["parity"] = parity
    for stage in ("warmup", "stage1", "stage2", "stage3"):
        cfg[stage]["iterations"] = 2
    r = tmp_path
    steps.warmup(cfg, r / "warmup.pt", r / "s0")
    steps.soft_labels(cfg, r / "warmup.pt", r / "soft.h5")
    steps.prototypes(cfg, r / "warmup.pt", r / "protos.h5")
    steps.stage1(cfg, r / "warmup.pt", r / "soft.h5", r / "protos.h5", r / "stage1.pt", r / "s1")
    steps.hard_labels(cfg, r / "stage1.pt", r / "hard1.h5")
    steps.distill(cfg, "stage2", r / "stage1.pt", r / "hard1.h5", r / "stage2.pt", r / "s2", r / "warmup.pt")
    steps.hard_labels(cfg, r / "stage2.pt", r / "hard2.h5")
    steps.distill(cfg, "stage3", r / "stage2.pt", r / "hard2.h5", r / "stage3.pt", r / "s3")
    table = steps.evaluate(cfg, r / "stage3.pt", r / "stage3.csv")
    assert 0.0 <= table.miou <= 1.0
    with h5py.File(r / "protos.h5") as fh:
        assert fh.attrs["passes"] == (4 if parity else 1)
    s1, s3 = load_checkpoint(r / "stage1.pt"), load_checkpoint(r / "stage3.pt")
    assert s1["iter"] == s3["iter"] == 2
    assert s1["ResNet101"]["objective_vectors"].abs().sum() > 0       # the moving prototypes
    assert "bn_pretrain.weight" in s3["ResNet101"]["model_state"]      # stage 3 keeps bn_clr
    assert (r / "s1/train.csv").read_text().startswith("iteration,loss_src,loss,loss_tgt,loss_con,lr")


def test_warmup_step_imports_a_given_checkpoint(toy, tmp_path):
    """warmup.checkpoint (e.g. the released file) is validated and taken as the warm-up model."""
    cfg = copy.deepcopy(toy["cfg"])
    official = {"ResNet101": {"model_state": DeepLabV2(19, **TINY_MODEL).state_dict()}, "iter": 1000,
                "best_iou": 0.4}
    torch.save(official, tmp_path / "released.pkl")
    cfg["warmup"]["checkpoint"] = str(tmp_path / "released.pkl")
    steps.warmup(cfg, tmp_path / "warmup/model.pt", tmp_path / "state")
    imported = load_checkpoint(tmp_path / "warmup/model.pt")  # re-saved in the official layout
    assert imported["iter"] == 1000 and imported["best_iou"] == pytest.approx(0.4)
    for key, value in official["ResNet101"]["model_state"].items():
        assert torch.equal(imported["ResNet101"]["model_state"][key], value), key
    cfg["data"]["n_class"] = 16
    with pytest.raises(ValueError, match="warmup.checkpoint"):
        steps.warmup(cfg, tmp_path / "other.pt", tmp_path / "state")


@pytest.mark.parametrize("width", [4, 8])
def test_warmup_discriminator_width(toy, tmp_path, width):
    """warmup.d_width sets the discriminator's first-conv width; the exported D has it."""
    cfg = copy.deepcopy(toy["cfg"])
    cfg["warmup"].update(iterations=1, d_width=width)
    steps.warmup(cfg, tmp_path / "warmup/model.pt", tmp_path / "state")
    disc = load_checkpoint(tmp_path / "warmup/model.pt")["FCDiscriminator"]["model_state"]
    assert disc["conv1.weight"].shape == (width, 19, 3, 3)
    assert disc["classifier.weight"].shape == (1, 8 * width, 1, 1)


def test_distillation_student_initialisations(toy, tmp_path):
    from proda.models import is_backbone_key
    from proda.train.distill import build_student

    cfg = copy.deepcopy(toy["cfg"])
    torch.manual_seed(0)
    teacher = DeepLabV2(19, bn_clr=True, **TINY_MODEL)
    save_checkpoint(tmp_path / "teacher.pt", teacher)
    warm = DeepLabV2(19, **TINY_MODEL)
    save_checkpoint(tmp_path / "warmup.pt", warm)
    pretrained = {k: v for k, v in DeepLabV2(19, **TINY_MODEL).state_dict().items() if is_backbone_key(k)}
    torch.save({"state_dict": pretrained}, tmp_path / "simclr.pth")
    torch.save(pretrained, tmp_path / "imagenet.pth")
    cfg["model"].update(simclr=str(tmp_path / "simclr.pth"), imagenet=str(tmp_path / "imagenet.pth"))

    def student(kind: str):
        cfg["stage2"]["student_init"] = kind
        return build_student(cfg, "stage2", str(tmp_path / "teacher.pt"), str(tmp_path / "warmup.pt"))

    resumed = student("resume").state_dict()
    assert all(torch.equal(resumed[k], v) for k, v in teacher.state_dict().items())
    for kind, source in (("simclr", pretrained), ("imagenet", pretrained),
                         ("warmup_backbone", {k: v for k, v in warm.state_dict().items() if is_backbone_key(k)})):
        model = student(kind)
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in source.items()), kind
        assert model.bn_clr == (kind != "imagenet")  # bn_clr is only honoured off the ImageNet path (§1.2)
        assert not torch.equal(state["layer5.head.1.weight"], teacher.state_dict()["layer5.head.1.weight"])
    cfg["model"]["simclr"] = None
    with pytest.raises(ValueError, match="model.simclr"):
        student("simclr")


@pytest.mark.parametrize("teacher_input", ["full", "weak"])
def test_stage1_teacher_input_option(toy, tmp_path, teacher_input):
    """stage1.teacher_input: the EMA teacher sees the whole target image (official) or only the
    weak crop, whose features then need no full2weak; both give a finite step and a moved prototype."""
    cfg = copy.deepcopy(toy["cfg"])
    cfg["stage1"]["teacher_input"] = teacher_input
    art = _warmup_artifacts(toy, tmp_path)
    job = steps.build_stage1(cfg, art["ckpt"], art["soft"], art["protos"])
    seen: list[tuple[int, ...]] = []
    job.stage.ema.conv1.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    source, target = job.streams(cfg)
    batch = next(target)
    assert ("img_full" in batch) == (teacher_input == "full")
    before = job.stage.prototypes().clone()
    losses = job.stage.step(next(source), batch, 1)
    expected = batch["img_full"].shape[-2:] if teacher_input == "full" else batch["img"].shape[-2:]
    assert seen == [tuple(expected)]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert not torch.equal(before, job.stage.prototypes())
