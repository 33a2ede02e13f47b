"""Checkpoints in the official layout, architecture inference, strict loading, pretrained weights."""
from __future__ import annotations

import struct
import zipfile

import numpy as np
import torch
import pytest
import torchvision

import proda
from proda.models import (CheckpointError, DeepLabV2, FCDiscriminator, build_model, load_checkpoint,
                          load_imagenet, load_model_state, load_simclr, model_kwargs, save_checkpoint)
from proda.integrity import DamagedArtifactError

torch.set_num_threads(1)
SMALL = {"num_classes": 5, "backbone": "resnet18", "bn_clr": False, "head_channels": 16,
         "base_width": 8}


def trained_small(**kw) -> DeepLabV2:
    """A small model whose BN running stats differ from their init (one train-mode forward)."""
    torch.manual_seed(0)
    m = DeepLabV2(**(SMALL | kw))
    with torch.no_grad():
        m(torch.rand(2, 3, 33, 41))
    return m.eval()


def outputs(m: DeepLabV2, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return m.eval()(x)


def test_round_trip_official_layout(tmp_path):
    m = trained_small()
    protos = torch.randn(5, 16)
    disc = FCDiscriminator(5, ndf=4)
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(path, torch.nn.DataParallel(m), prototypes=protos, iteration=7, best_iou=12.5,
                    meta={"config_digest": "abc"},
                    extra={"FCDiscriminator": {"model_state": disc.state_dict()}})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]   # no temp file left
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain values only
    assert set(raw) == {"ResNet101", "iter", "best_iou", "proda_meta", "FCDiscriminator"}
    assert set(raw["ResNet101"]) == {"model_state", "objective_vectors"}
    assert list(raw["ResNet101"]["model_state"]) == list(m.state_dict())        # no "module."
    assert torch.equal(raw["ResNet101"]["objective_vectors"], protos)
    assert (raw["iter"], raw["best_iou"]) == (7, 12.5)
    assert raw["proda_meta"] == {"n_class": 5, "backbone": "resnet18", "base_width": 8,
                                 "head_channels": 16, "bn_clr": False, "config_digest": "abc",
                                 "torch_version": torch.__version__,
                                 "proda_version": proda.__version__}
    assert torch.equal(raw["FCDiscriminator"]["model_state"]["conv1.weight"], disc.conv1.weight)

    rebuilt, ckpt = build_model(path)
    assert rebuilt.config() == SMALL
    x = torch.rand(1, 3, 40, 48)
    a, b = outputs(m, x), outputs(rebuilt, x)
    assert torch.equal(a["out"], b["out"]) and torch.equal(a["feat"], b["feat"])
    assert ckpt["iter"] == 7


def test_default_prototypes_are_zeros_and_shape_is_checked(tmp_path):
    m = trained_small()
    save_checkpoint(tmp_path / "a.pt", m)
    assert torch.equal(load_checkpoint(tmp_path / "a.pt")["ResNet101"]["objective_vectors"],
                       torch.zeros(5, 16))
    with pytest.raises(ValueError, match=r"\[5, 16\]"):
        save_checkpoint(tmp_path / "b.pt", m, prototypes=torch.zeros(5, 8))
    with pytest.raises(ValueError, match="iter"):
        save_checkpoint(tmp_path / "c.pt", m, extra={"iter": 3})


@pytest.mark.parametrize("kw,prefix", [({}, ""), ({"backbone": "resnet34"}, "module."),
                                       ({"backbone": "resnet50", "bn_clr": True}, ""),
                                       ({"head_channels": 32, "base_width": 4, "num_classes": 3}, "")])
def test_official_file_without_meta_is_inferred(tmp_path, kw, prefix):
    m = trained_small(**kw)
    state = {prefix + k: v for k, v in m.state_dict().items()}
    official = {"ResNet101": {"model_state": state, "objective_vectors": torch.zeros(5, 16)},
                "iter": 1000, "best_iou": 0.5}
    torch.save(official, tmp_path / "official.pkl")
    ckpt = load_checkpoint(tmp_path / "official.pkl")
    assert model_kwargs(ckpt) == SMALL | kw
    rebuilt, _ = build_model(tmp_path / "official.pkl")
    x = torch.rand(1, 3, 33, 33)
    assert torch.equal(outputs(rebuilt, x)["out"], outputs(m, x)["out"])


def test_build_model_overrides_are_checked(tmp_path):
    save_checkpoint(tmp_path / "m.pt", trained_small())
    with pytest.raises(CheckpointError, match=r"missing keys \(5\): bn_pretrain.weight"):
        build_model(tmp_path / "m.pt", bn_clr=True)


def test_mismatched_state_lists_keys():
    m = trained_small()
    state = dict(m.state_dict())
    del state["layer1.0.bn1.running_mean"]
    state["extra.weight"] = torch.zeros(1)
    state["layer5.head.1.weight"] = torch.zeros(7, 16, 1, 1)
    with pytest.raises(CheckpointError) as err:
        load_model_state(DeepLabV2(**SMALL), {"ResNet101": {"model_state": state}})
    msg = str(err.value)
    assert "missing keys (1): layer1.0.bn1.running_mean" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "layer5.head.1.weight [7, 16, 1, 1] vs model [5, 16, 1, 1]" in msg
    assert "\n" not in msg


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt has no 'ResNet101'"):
        load_checkpoint(tmp_path / "other.pt")


def test_load_imagenet_from_torchvision_file(tmp_path):
    torch.manual_seed(5)
    tv = torchvision.models.resnet18()
    tv_state = tv.state_dict()
    torch.save(tv_state, tmp_path / "resnet18.pth")
    m = DeepLabV2(5, "resnet18", head_channels=16)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    loaded = load_imagenet(m, tmp_path / "resnet18.pth")
    assert loaded == [k for k in tv_state if not k.startswith("fc.")]
    assert loaded == m.backbone_state_keys()
    after = m.state_dict()
    assert all(torch.equal(after[k], tv_state[k]) for k in loaded)
    head = [k for k in after if k.startswith("layer5.")]
    assert head and all(torch.equal(after[k], before[k]) for k in head)


def test_load_imagenet_shape_mismatch_names_key(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match=r"conv1.weight has shape \[64, 3, 7, 7\], model has "
                                              r"\[8, 3, 7, 7\]"):
        load_imagenet(DeepLabV2(**SMALL), tmp_path / "r18.pth")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "foo.pth")
    with pytest.raises(CheckpointError, match="no key in common"):
        load_imagenet(DeepLabV2(**SMALL), tmp_path / "foo.pth")


@pytest.mark.parametrize("wrapped", [True, False])
def test_load_simclr_filters_and_strips_prefix(tmp_path, wrapped):
    m = DeepLabV2(**(SMALL | {"bn_clr": True}))
    ref = DeepLabV2(**(SMALL | {"bn_clr": True}))
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(-1, 1)
    source = {f"module.{k}": v for k, v in ref.state_dict().items()
              if k.startswith(("conv1.", "layer2.", "bn_pretrain."))}
    source["module.fc.weight"] = torch.zeros(10, 64)
    source["module.projection.0.weight"] = torch.zeros(3, 3)
    torch.save({"state_dict": source, "epoch": 3} if wrapped else source, tmp_path / "simclr.pth")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    loaded = load_simclr(m, tmp_path / "simclr.pth")
    expected = [k[len("module."):] for k in source if "fc." not in k and "projection" not in k]
    assert loaded == expected and "bn_pretrain.weight" in loaded
    after, ref_state = m.state_dict(), ref.state_dict()
    assert all(torch.equal(after[k], ref_state[k]) for k in loaded)
    assert all(torch.equal(after[k], before[k]) for k in after if k not in loaded)


# ---------------------------------------------------------------------------- damaged files
def _largest_member_span(path) -> tuple[str, int, int]:
    """(name, first data byte, size) of the largest member of a torch.save zip archive."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", fh.read(4))
    return info.filename, info.header_offset + 30 + name_len + extra_len, info.file_size


def test_random_bytes_inside_a_checkpoint_are_refused_naming_file_and_member(tmp_path):
    """torch.load does not check the archive's CRCs: 4 KiB of random bytes in the weights load as
    garbage weights; every checkpoint load checks them first and refuses, in one line."""
    path = save_checkpoint(tmp_path / "model.pt", trained_small())
    member, start, size = _largest_member_span(path)
    assert size > 8192
    with open(path, "r+b") as fh:
        fh.seek(start + size // 2)
        fh.write(np.random.default_rng(0).bytes(4096))
    torch.load(path, map_location="cpu", weights_only=True)  # what would be used without the check
    for load in (load_checkpoint, build_model):
        with pytest.raises(DamagedArtifactError) as err:
            load(path)
        msg = str(err.value)
        assert isinstance(err.value, CheckpointError) and "\n" not in msg
        assert f"checkpoint {path} is damaged (CRC check failed for member {member!r})" in msg
        assert "delete it and rerun the step that wrote it" in msg


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_checkpoint_is_refused_in_one_line(tmp_path, keep):
    path = save_checkpoint(tmp_path / "model.pt", trained_small())
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * keep)])
    with pytest.raises(DamagedArtifactError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"checkpoint {path} is damaged (") and "\n" not in msg
    assert ("truncated" if keep else "empty file") in msg


def test_legacy_non_zip_checkpoint_is_not_checked_and_loads(tmp_path):
    m = trained_small()
    path = tmp_path / "official.pkl"
    torch.save({"ResNet101": {"model_state": m.state_dict()}}, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    rebuilt, _ = build_model(path)
    assert torch.equal(rebuilt.state_dict()["conv1.weight"], m.state_dict()["conv1.weight"])
