"""Checkpoint and weight files are read with ``weights_only=True``: official files load, and a
pickle that would run code is refused (one line naming the file) unless the caller opts in."""
from __future__ import annotations

import pathlib
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torchvision

from proda.evaluate import evaluate_checkpoint
from proda.models import (CheckpointError, DeepLabV2, FCDiscriminator, build_model, load_checkpoint,
                          load_imagenet, load_model_state, load_simclr, save_checkpoint)

torch.set_num_threads(1)
SMALL = {"num_classes": 5, "backbone": "resnet18", "bn_clr": False, "head_channels": 16,
         "base_width": 8}


def small_model() -> DeepLabV2:
    torch.manual_seed(0)
    m = DeepLabV2(**SMALL)
    with torch.no_grad():
        m(torch.rand(2, 3, 33, 41))  # BN running stats differ from their init
    return m.eval()


def official_file(path: pathlib.Path, m: DeepLabV2) -> float:
    """Write ``m`` exactly as the official train.py does; returns the stored ``best_iou``."""
    iu = np.array([0.5, np.nan, 0.25, 0.75])
    score = {"Mean IoU : \t": np.nanmean(iu)}  # what the official runningScore returns
    state = {"ResNet101": {"model_state": m.state_dict(),
                           "objective_vectors": torch.randn(5, 16)},
             "iter": 2000, "best_iou": score["Mean IoU : \t"]}
    assert type(state["best_iou"]) is np.float64
    torch.save(state, path)
    return float(state["best_iou"])


def as_numpy1_file(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Rewrite a torch.save zip as numpy 1.x writes it (the released checkpoints'
    ``best_iou`` pickles as ``numpy.core.multiarray.scalar``)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar",
                                    b"numpy.core.multiarray\nscalar")
            zout.writestr(info.filename, data)


class Touch:
    """Unpickling this runs ``Path(marker).touch()``: a stand-in for arbitrary code."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.fixture
def weights_only_calls(monkeypatch):
    """Record the ``weights_only`` argument of every torch.load."""
    calls: list[object] = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


@pytest.mark.parametrize("numpy1", [False, True])
def test_official_file_loads_with_weights_only(tmp_path, numpy1, weights_only_calls):
    m = small_model()
    best = official_file(tmp_path / "written.pkl", m)
    path = tmp_path / "official.pkl"
    if numpy1:
        as_numpy1_file(tmp_path / "written.pkl", path)
    else:
        path = tmp_path / "written.pkl"
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only needs the numpy allow-list
        torch.load(path, weights_only=True)
    weights_only_calls.clear()

    rebuilt, ckpt = build_model(path)
    assert weights_only_calls == [True]
    assert type(ckpt["best_iou"]) is np.float64 and ckpt["best_iou"] == best
    assert ckpt["iter"] == 2000
    mine, theirs = m.state_dict(), rebuilt.state_dict()
    assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_own_checkpoint_with_discriminator_loads_with_weights_only(tmp_path, weights_only_calls):
    m, disc = small_model(), FCDiscriminator(5, ndf=4)
    save_checkpoint(tmp_path / "warmup.pt", m, iteration=3, best_iou=np.float64(41.5),
                    meta={"stage": "warmup", "config_digest": "abc"},
                    extra={"FCDiscriminator": {"model_state": disc.state_dict()}})
    ckpt = load_checkpoint(tmp_path / "warmup.pt")
    assert weights_only_calls == [True]
    assert ckpt["best_iou"] == 41.5 and ckpt["proda_meta"]["stage"] == "warmup"
    assert torch.equal(ckpt["FCDiscriminator"]["model_state"]["conv1.weight"], disc.conv1.weight)


@pytest.mark.parametrize("zip_format", [True, False])
def test_code_running_pickle_is_refused_unless_opted_in(tmp_path, zip_format):
    m = small_model()
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    torch.save({"ResNet101": {"model_state": m.state_dict(),
                              "objective_vectors": torch.zeros(5, 16)},
                "iter": 1, "best_iou": 0.0, "payload": Touch(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    loaders = [lambda: build_model(path), lambda: load_checkpoint(path),
               lambda: load_model_state(DeepLabV2(**SMALL), path),
               lambda: load_imagenet(DeepLabV2(**SMALL), path),
               lambda: load_simclr(DeepLabV2(**SMALL), path),
               lambda: evaluate_checkpoint(path, root=tmp_path / "no-dataset-needed")]
    for load in loaders:
        with pytest.raises(CheckpointError) as err:
            load()
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg
        assert "refusing" in msg and "unsafe_pickle" in msg and "allow_pickle=True" in msg
        assert "--allow-pickle" in msg
        assert not marker.exists()

    rebuilt, ckpt = build_model(path, allow_pickle=True)  # the opt-in really unpickles
    assert marker.exists()
    assert torch.equal(rebuilt.state_dict()["conv1.weight"], m.state_dict()["conv1.weight"])


def test_unreadable_file_is_not_offered_the_opt_in(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a pickle at all")
    for allow in (False, True):
        with pytest.raises(CheckpointError, match="cannot read checkpoint .*junk.pt") as err:
            load_checkpoint(tmp_path / "junk.pt", allow_pickle=allow)
        assert "\n" not in str(err.value) and "unsafe_pickle" not in str(err.value)


def test_imagenet_and_simclr_weights_load_with_weights_only(tmp_path, weights_only_calls):
    torch.manual_seed(1)
    tv_state = torchvision.models.resnet18().state_dict()
    torch.save(tv_state, tmp_path / "resnet18.pth")
    m = DeepLabV2(5, "resnet18", head_channels=16)
    loaded = load_imagenet(m, tmp_path / "resnet18.pth")
    assert loaded and all(torch.equal(m.state_dict()[k], tv_state[k]) for k in loaded)

    ref = DeepLabV2(**(SMALL | {"bn_clr": True}))
    source = {f"module.{k}": v for k, v in ref.state_dict().items()}
    # a typical SimCLR training checkpoint: weights plus plain bookkeeping and optimizer state
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    torch.save({"state_dict": source, "epoch": 200, "arch": "resnet18",
                "optimizer": opt.state_dict()}, tmp_path / "simclr.pth")
    m2 = DeepLabV2(**(SMALL | {"bn_clr": True}))
    loaded = load_simclr(m2, tmp_path / "simclr.pth")
    assert "bn_pretrain.weight" in loaded
    assert all(torch.equal(m2.state_dict()[k], ref.state_dict()[k]) for k in loaded)
    assert weights_only_calls == [True, True]


def test_older_own_checkpoint_with_torch_version_object_loads(tmp_path):
    """Checkpoints written before ``proda_meta.torch_version`` became a plain str hold torch's
    ``TorchVersion`` (a str subclass); they still load without the opt-in."""
    assert type(torch.__version__) is not str
    m = small_model()
    torch.save({"ResNet101": {"model_state": m.state_dict(),
                              "objective_vectors": torch.zeros(5, 16)},
                "iter": 1, "best_iou": 0.0,
                "proda_meta": {**SMALL | {"n_class": 5}, "torch_version": torch.__version__}},
               tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["proda_meta"]["torch_version"] == torch.__version__
    save_checkpoint(tmp_path / "new.pt", m)
    assert type(load_checkpoint(tmp_path / "new.pt")["proda_meta"]["torch_version"]) is str
