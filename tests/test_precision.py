"""bf16 mixed precision on the CPU: the same code path as CUDA bf16 (``torch.autocast`` selected by
the config's ``precision``), so it cannot rot on CPU-only CI. One step of every stage, and the
pseudo-label, prototype and evaluation paths: autocast is really on, losses are finite, and every
artifact keeps the dtype it promises. Also: precision is part of each step's identity."""
from __future__ import annotations

import copy
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from proda import steps
from proda.config import resolve, step_view
from proda.data.toycity import generate
from proda.models import DeepLabV2, load_checkpoint, save_checkpoint
from proda.plan import plan

TINY_MODEL = {"backbone": "resnet18", "base_width": 8, "head_channels": 32}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bf16")
    paths = generate(root / "data", seed=2, n_source=4, n_target_train=4, n_target_val=2,
                     source_size=(80, 40), target_size=(96, 48))
    over = {"device": "cpu", "precision": "bf16",
            "data": {"source": {"root": str(paths["source"]), "size": [80, 40]},
                     "target": {"root": str(paths["target"]), "size": [96, 48]},
                     "batch_size": 2, "num_workers": 0, "resize": 100, "crop": [64, 32]},
            "model": TINY_MODEL, "warmup": {"iterations": 1, "freeze_bn": False},
            "stage1": {"iterations": 1}, "stage2": {"iterations": 1, "student_init": "warmup_backbone"},
            "stage3": {"iterations": 1}}
    cfg = resolve(over)
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "warmup.pt", DeepLabV2(19, **TINY_MODEL))
    return {"root": root, "cfg": cfg, "ckpt": ckpt}


class _Dtypes:
    """Records the dtype of conv1's output on every forward of a model (is autocast on?)."""

    def __init__(self, model: torch.nn.Module):
        self.seen: list[torch.dtype] = []
        from proda.models import unwrap

        unwrap(model).conv1.register_forward_hook(lambda m, i, o: self.seen.append(o.dtype))


def _one_step(job) -> dict[str, float]:
    source, target = job.streams(job.stage.cfg)
    return job.stage.step(next(source), next(target), 1)


def test_every_training_stage_steps_in_bf16_with_finite_float32_losses(toy, tmp_path):
    cfg = toy["cfg"]
    steps.soft_labels(cfg, toy["ckpt"], tmp_path / "soft.h5")
    steps.prototypes(cfg, toy["ckpt"], tmp_path / "protos.h5")
    steps.hard_labels(cfg, toy["ckpt"], tmp_path / "hard.h5")
    jobs = {"warmup": steps.build_warmup(cfg),
            "stage1": steps.build_stage1(cfg, toy["ckpt"], tmp_path / "soft.h5", tmp_path / "protos.h5"),
            "stage2": steps.build_distill(cfg, "stage2", toy["ckpt"], tmp_path / "hard.h5", toy["ckpt"])}
    for name, job in jobs.items():
        assert job.runtime.precision == "bf16"
        dtypes = _Dtypes(job.stage.student)
        losses = _one_step(job)
        assert dtypes.seen and set(dtypes.seen) == {torch.bfloat16}, name
        assert losses and all(np.isfinite(v) for v in losses.values()), (name, losses)
        assert all(p.dtype == torch.float32 for p in job.stage.student.parameters()), name
    out = save_checkpoint(tmp_path / "s1.pt", jobs["stage1"].stage.student,
                          prototypes=jobs["stage1"].stage.prototypes())
    ckpt = load_checkpoint(out)
    assert {v.dtype for v in ckpt["ResNet101"]["model_state"].values() if v.is_floating_point()} == {torch.float32}
    assert ckpt["ResNet101"]["objective_vectors"].dtype == torch.float32


def test_pseudo_labels_prototypes_and_evaluation_in_bf16_keep_their_dtypes(toy, tmp_path):
    cfg = toy["cfg"]
    steps.soft_labels(cfg, toy["ckpt"], tmp_path / "soft.h5")
    steps.hard_labels(cfg, toy["ckpt"], tmp_path / "hard.h5")
    steps.prototypes(cfg, toy["ckpt"], tmp_path / "protos.h5")
    from proda.prototypes import load_prototypes
    from proda.pseudo_labels import HardLabelStore, SoftLabelStore

    soft = SoftLabelStore(tmp_path / "soft.h5")
    name = soft.names()[0]
    with h5py.File(tmp_path / "soft.h5") as fh:
        stored = fh[name] if isinstance(fh[name], h5py.Dataset) else next(iter(fh[name].values()))
        assert stored.dtype in (np.float16, np.uint8, np.uint16)
    q = soft.get(name)
    assert q.dtype == torch.float32 and torch.isfinite(q).all()
    assert torch.allclose(q.sum(0), torch.ones_like(q[0]), atol=0.02)
    hard = HardLabelStore(tmp_path / "hard.h5")
    label = hard.get(hard.names()[0], 0.5)
    assert label.dtype == np.uint8
    protos, counts, _ = load_prototypes(tmp_path / "protos.h5")
    assert protos.dtype == torch.float32 and torch.isfinite(protos).all() and counts.sum() > 0
    table = steps.evaluate(cfg, toy["ckpt"], tmp_path / "eval.csv")
    assert 0.0 <= table.miou <= 1.0 and (tmp_path / "eval.csv").is_file()


def test_precision_is_part_of_every_model_steps_identity_and_parity_runs_fp32(tmp_path):
    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    fp32, bf16 = resolve(base), resolve(copy.deepcopy(base) | {"precision": "bf16"})
    a, b = plan(fp32), plan(bf16)
    for stage in ("warmup", "stage1", "stage2", "stage3"):
        assert a.models[stage] != b.models[stage]
    for step in ("warmup", "soft_labels", "prototypes", "stage1", "hard_labels", "stage2", "evaluate"):
        assert step_view(fp32, step)["precision"] == "fp32" and step_view(bf16, step)["precision"] == "bf16"
    parity = resolve(copy.deepcopy(base) | {"precision": "bf16", "parity": True})
    assert parity["precision"] == "fp32"
    assert plan(parity).models["warmup"] == plan(resolve(copy.deepcopy(base) | {"parity": True})).models["warmup"]


def test_channels_last_runs_and_is_part_of_every_model_steps_identity(toy, tmp_path):
    """channels_last rounds differently (measured: weights 3e-7 and an IoU 0.016 apart after a tiny
    chain), so it names other folders than the default."""
    cfg = copy.deepcopy(toy["cfg"]) | {"channels_last": True}
    job = steps.build_warmup(cfg)
    weight = job.stage.student.conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert all(np.isfinite(v) for v in _one_step(job).values())
    other, default = plan(resolve(cfg)), plan(resolve(toy["cfg"]))
    assert all(other.models[s] != default.models[s] for s in default.models)
    assert all(step_view(cfg, s)["channels_last"] for s in ("warmup", "soft_labels", "hard_labels", "evaluate"))


def test_evaluation_upsamples_bf16_logits_in_float32():
    """Under the caller's bf16 autocast the model's logits are bf16, but their upsampling (and the
    argmax) is float32: equal to the float32 computation from the same logits."""
    from proda.evaluate import predict, upsample_logits
    from proda.runtime import eval_mode

    torch.manual_seed(0)
    model = DeepLabV2(5, **TINY_MODEL)
    x = torch.rand(2, 3, 40, 56)
    with eval_mode(model), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)["out"]
        up = upsample_logits(logits, (40, 56))
        pred = predict(model, x)
    expected = torch.nn.functional.interpolate(logits.float(), size=(40, 56), mode="bilinear", align_corners=True)
    assert logits.dtype == torch.bfloat16 and up.dtype == torch.float32
    assert torch.equal(up, expected) and torch.equal(pred, expected.argmax(dim=1))


def test_activation_checkpointing_reaches_the_student_and_the_training_identity(toy):
    """train.activation_checkpointing sets the student's checkpointing (its maths: tests/test_models.py)
    and, changing the rounding of the gradients by up to 1e-6, names other training folders."""
    from proda.models import unwrap

    cfg = copy.deepcopy(toy["cfg"])
    cfg["train"]["activation_checkpointing"] = True
    job = steps.build_warmup(cfg)
    assert unwrap(job.stage.student).checkpointing
    assert not unwrap(steps.build_warmup(toy["cfg"]).stage.student).checkpointing
    assert all(np.isfinite(v) for v in _one_step(job).values())
    assert plan(resolve(cfg)).models["warmup"] != plan(resolve(toy["cfg"])).models["warmup"]
