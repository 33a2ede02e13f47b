"""DeepLabV2 / FCDiscriminator: official state dict, structure, forward semantics, init, lr groups."""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from proda.models import DeepLabV2, FCDiscriminator, is_backbone_key, output_size

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
# every state-dict key of the official model with its shape (docs/method.md §1.7), with and without bn_clr
STATE_DICT_DOC = REPO / "tests" / "data" / "deeplabv2-state-dict.txt"


def parse_state_dict_doc() -> dict[bool, dict]:
    """{bn_clr: {"entries": [(name, shape)], "params": n, "buffers": n, "scalars": n}}."""
    assert STATE_DICT_DOC.is_file(), f"reference file missing: {STATE_DICT_DOC}"
    variants: dict[bool, dict] = {}
    current = None
    for line in STATE_DICT_DOC.read_text().splitlines():
        head = re.match(r"# ===== VARIANT bn_clr=(\w+) : (\d+) entries \((\d+) parameter tensors, "
                        r"(\d+) buffers, (\d+) trainable scalars\)", line)
        if head:
            current = {"n": int(head[2]), "params": int(head[3]), "buffers": int(head[4]),
                       "scalars": int(head[5]), "entries": []}
            variants[head[1] == "True"] = current
        elif line and not line.startswith("#"):
            name, shape = line.split("\t")
            current["entries"].append((name, eval(shape)))  # noqa: S307 - "[64, 3, 7, 7]" lists
    return variants


@pytest.fixture(scope="module")
def doc() -> dict[bool, dict]:
    return parse_state_dict_doc()


@pytest.fixture(scope="module")
def r101() -> DeepLabV2:
    torch.manual_seed(0)
    return DeepLabV2(19, bn_clr=True)


def small(**kw) -> DeepLabV2:
    args = {"num_classes": 5, "backbone": "resnet18", "base_width": 8, "head_channels": 16} | kw
    return DeepLabV2(**args)


# ---------------------------------------------------------------- official state dict ---------

@pytest.mark.parametrize("bn_clr", [False, True])
def test_resnet101_state_dict_equals_reference(doc, r101, bn_clr):
    model = r101 if bn_clr else DeepLabV2(19)
    ref = doc[bn_clr]
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert len(ref["entries"]) == ref["n"] == (658 if bn_clr else 653)
    assert got == ref["entries"]
    assert len(list(model.parameters())) == ref["params"]
    assert len(list(model.buffers())) == ref["buffers"]
    assert sum(p.numel() for p in model.parameters()) == ref["scalars"]
    assert ref["scalars"] == (65067664 if bn_clr else 65063568)


def test_backbone_names_match_torchvision(r101):
    """Backbone keys and shapes are torchvision's (minus fc), so ImageNet weights load."""
    for ours, tv_fn in ((r101, torchvision.models.resnet101),
                        (DeepLabV2(3, "resnet18", head_channels=16), torchvision.models.resnet18)):
        with torch.device("meta"):
            tv = tv_fn()
        tv_shapes = {k: v.shape for k, v in tv.state_dict().items() if not k.startswith("fc.")}
        own = ours.state_dict()
        assert ours.backbone_state_keys() == list(tv_shapes)
        assert all(own[k].shape == s for k, s in tv_shapes.items())


# ---------------------------------------------------------------- structure -------------------

def test_caffe_style_bottleneck_structure():
    m = DeepLabV2(4, "resnet50", base_width=8, head_channels=16)
    assert m.maxpool.ceil_mode and m.maxpool.stride == 2 and m.maxpool.padding == 1
    assert m.conv1.stride == (2, 2) and m.conv1.kernel_size == (7, 7)
    b = m.layer2[0]
    assert b.conv1.stride == (2, 2) and b.conv1.kernel_size == (1, 1)
    assert b.conv2.stride == (1, 1) and b.downsample[0].stride == (2, 2)
    for layer, dil in ((m.layer1, 1), (m.layer2, 1), (m.layer3, 2), (m.layer4, 4)):
        assert [blk.conv2.dilation for blk in layer] == [(dil, dil)] * len(layer)
        assert [blk.conv2.padding for blk in layer] == [(dil, dil)] * len(layer)
        assert layer[0].downsample is not None
        assert all(blk.downsample is None for blk in layer[1:])
    assert [len(m.layer1), len(m.layer2), len(m.layer3), len(m.layer4)] == [3, 4, 6, 3]
    assert m.backbone_channels == 32 * 8
    assert [c[0].dilation[0] for c in m.layer5.conv2d_list] == [1, 6, 12, 18, 24]
    assert [c[0].padding[0] for c in m.layer5.conv2d_list] == [0, 6, 12, 18, 24]
    assert m.layer5.bottleneck[0].se[0].out_features == 5 * 16 // 16
    assert m.layer5.head[0].p == pytest.approx(0.1) and m.layer5.head[1].bias is None


def test_basic_block_backbones():
    m18, m34 = DeepLabV2(4, "resnet18", base_width=8, head_channels=16), \
        DeepLabV2(4, "resnet34", base_width=8, head_channels=16)
    assert [len(getattr(m34, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert [len(getattr(m18, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert m18.backbone_channels == 64 and m18.layer1[0].downsample is None
    assert m18.layer3[1].conv1.dilation == (2, 2) and m18.layer4[0].conv2.dilation == (4, 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="resnet7"):
        DeepLabV2(19, "resnet7")
    with pytest.raises(ValueError, match="head_channels=48"):
        DeepLabV2(19, "resnet18", base_width=8, head_channels=48)


# ---------------------------------------------------------------- forward ---------------------

def reference_out_size(n: int) -> int:
    """§1.1: floor((ceil((floor((n-1)/2)+1-1)/2)+1-1)/2)+1."""
    return math.floor((math.ceil((math.floor((n - 1) / 2) + 1 - 1) / 2) + 1 - 1) / 2) + 1


def test_output_size_table():
    table = {896: 113, 512: 65, 2048: 257, 1024: 129, 1280: 161, 720: 91, 256: 33}
    assert {n: output_size(n) for n in table} == table
    assert all(output_size(n) == reference_out_size(n) for n in range(1, 300))


@pytest.mark.parametrize("backbone,hw", [("resnet18", (33, 47)), ("resnet18", (64, 96)),
                                         ("resnet50", (50, 31))])
def test_forward_shapes_never_upsample(backbone, hw):
    m = small(backbone=backbone).eval()
    with torch.no_grad():
        res = m(torch.rand(2, 3, *hw))
    h, w = reference_out_size(hw[0]), reference_out_size(hw[1])
    assert set(res) == {"feat", "out"}
    assert res["feat"].shape == (2, 16, h, w) and res["out"].shape == (2, 5, h, w)


def _capture(module: torch.nn.Module, store: dict, key: str, pre: bool = False):
    if pre:
        return module.register_forward_pre_hook(lambda _m, args: store.__setitem__(key, args[0]))
    return module.register_forward_hook(lambda _m, _a, out: store.__setitem__(key, out))


def test_head_semantics_match_hand_computation():
    torch.manual_seed(1)
    m = small(bn_clr=True).double().eval()   # float64: GroupNorm amplifies rounding of tiny acts
    m.bn_pretrain.running_mean.uniform_(-1, 1)
    m.bn_pretrain.running_var.uniform_(0.5, 2)
    seen: dict = {}
    _capture(m.layer4, seen, "l4")
    _capture(m.layer5, seen, "x", pre=True)
    _capture(m.layer5.bottleneck, seen, "cat", pre=True)
    _capture(m.layer5.bottleneck[0], seen, "se")
    _capture(m.layer5.bottleneck, seen, "bott")
    with torch.no_grad():
        res = m(torch.rand(2, 3, 40, 56, dtype=torch.float64))
        bn = m.bn_pretrain
        mean, var = bn.running_mean[:, None, None], bn.running_var[:, None, None]
        x = (seen["l4"] - mean) / torch.sqrt(var + 1e-5)
        torch.testing.assert_close(seen["x"], x)
        branches = m.layer5.conv2d_list
        for i, dil in ((0, 1), (4, 24)):
            conv, gn = branches[i][0], branches[i][1]
            ref = F.relu(F.group_norm(F.conv2d(x, conv.weight, conv.bias, padding=0 if i == 0 else dil,
                                               dilation=dil), 16, gn.weight, gn.bias))
            torch.testing.assert_close(seen["cat"][:, 16 * i:16 * (i + 1)], ref)
        se = m.layer5.bottleneck[0].se
        cat = seen["cat"]
        gate = torch.sigmoid(se[2](F.relu(se[0](cat.mean(dim=(2, 3))))))
        torch.testing.assert_close(seen["se"], cat * gate[:, :, None, None])
        torch.testing.assert_close(res["feat"], seen["bott"])  # eval: dropout is the identity
        torch.testing.assert_close(res["out"], F.conv2d(res["feat"], m.layer5.head[1].weight))


def test_feat_is_taken_after_dropout():
    torch.manual_seed(2)
    m = small().eval()
    m.layer5.head[0].train()
    seen: dict = {}
    _capture(m.layer5.bottleneck, seen, "bott")
    with torch.no_grad():
        res = m(torch.rand(4, 3, 40, 40))
    feat, bott = res["feat"], seen["bott"]
    kept = feat.abs().sum(dim=(2, 3)) > 0                       # N×C: whole channels dropped
    assert 0 < (~kept).sum() < kept.numel()
    torch.testing.assert_close(feat, bott * kept[:, :, None, None] / 0.9)
    torch.testing.assert_close(res["out"], F.conv2d(feat, m.layer5.head[1].weight))


# ---------------------------------------------------------------- initialisation --------------

def _uniform_bound_ok(t: torch.Tensor, fan_in: int) -> bool:
    bound = 1 / math.sqrt(fan_in)
    return bool(t.abs().max() <= bound and t.abs().max() > 0.9 * bound
                and abs(t.std().item() - bound / math.sqrt(3)) < 0.15 * bound)


@pytest.mark.parametrize("which", ["small", "resnet101"])
def test_initialisation_table(which, r101):
    torch.manual_seed(0)
    m = r101 if which == "resnet101" else small(num_classes=19, base_width=16, head_channels=64,
                                                 bn_clr=True)
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            w = mod.weight.detach()
            assert abs(w.std().item() - 0.01) < 0.05 * 0.01, name
            assert abs(w.mean().item()) < 0.01 * 5 / math.sqrt(w.numel()), name
        elif isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0), name
        if isinstance(mod, torch.nn.BatchNorm2d):
            assert torch.all(mod.running_mean == 0) and torch.all(mod.running_var == 1), name
    head = m.layer5
    for branch in head.conv2d_list:
        assert _uniform_bound_ok(branch[0].bias.detach(), branch[0].weight[0].numel())
    assert torch.all(head.bottleneck[1].bias == 0)
    for lin in (head.bottleneck[0].se[0], head.bottleneck[0].se[2]):
        assert _uniform_bound_ok(lin.weight.detach(), lin.in_features)
        assert _uniform_bound_ok(lin.bias.detach(), lin.in_features)


def test_same_seed_same_weights():
    sd = []
    for _ in range(2):
        torch.manual_seed(3)
        sd.append(small().state_dict())
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])


# ---------------------------------------------------------------- parameter groups ------------

def test_parameter_groups_resnet101(r101):
    backbone = r101.backbone_parameters()
    assert len(backbone) == 312 == len({id(p) for p in backbone})
    expected = [p for k, p in r101.named_parameters() if is_backbone_key(k)]
    assert [id(p) for p in backbone] == [id(p) for p in expected]
    dup = r101.backbone_parameters(parity=True)
    assert len(dup) == 942 and len({id(p) for p in dup}) == 312
    mult = Counter(id(p) for p in dup)
    params = dict(r101.named_parameters())
    for name, k in (("conv1.weight", 1), ("bn1.bias", 1), ("layer1.0.conv1.weight", 3),
                    ("layer3.22.bn3.weight", 3), ("layer4.0.downsample.0.weight", 4),
                    ("layer2.0.downsample.1.bias", 4)):
        assert mult[id(params[name])] == k, name
    head = r101.head_parameters()
    names = {id(p): k for k, p in r101.named_parameters()}
    assert [names[id(p)] for p in head[:2]] == ["bn_pretrain.weight", "bn_pretrain.bias"]
    assert len(head) == 2 + 29 and all(names[id(p)].startswith("layer5.") for p in head[2:])
    assert {id(p) for p in head} | {id(p) for p in backbone} == set(names)


def test_parity_group_skips_frozen_params():
    m = small()
    m.bn1.weight.requires_grad_(False)
    m.layer2[0].downsample[0].weight.requires_grad_(False)
    ids = {id(p) for p in m.backbone_parameters(parity=True)}
    assert id(m.bn1.weight) not in ids and id(m.layer2[0].downsample[0].weight) not in ids
    assert id(m.bn1.weight) not in {id(p) for p in m.backbone_parameters()}


# ---------------------------------------------------------------- discriminator ---------------

def test_discriminator_shape_and_names():
    d = FCDiscriminator(19)
    assert [(k, list(v.shape)) for k, v in d.state_dict().items()] == [
        ("conv1.weight", [64, 19, 3, 3]), ("conv1.bias", [64]),
        ("conv2.weight", [128, 64, 3, 3]), ("conv2.bias", [128]),
        ("conv3.weight", [256, 128, 3, 3]), ("conv3.bias", [256]),
        ("conv4.weight", [512, 256, 3, 3]), ("conv4.bias", [512]),
        ("classifier.weight", [1, 512, 1, 1]), ("classifier.bias", [1])]
    with torch.no_grad():
        assert d(torch.rand(1, 19, 512, 896)).shape == (1, 1, 32, 56)


def test_discriminator_activations():
    torch.manual_seed(4)
    d = FCDiscriminator(3, ndf=4)
    x = torch.randn(2, 3, 32, 24)
    h = x
    for i in range(1, 5):
        conv = getattr(d, f"conv{i}")
        h = F.conv2d(h, conv.weight, conv.bias, stride=2, padding=1)
        h = F.leaky_relu(h, 0.2) if i == 4 else F.relu(h)
    ref = F.conv2d(h, d.classifier.weight, d.classifier.bias)
    with torch.no_grad():
        torch.testing.assert_close(d(x), ref)


# ---------------------------------------------------------------- activation checkpointing ----

def _train_step(model: DeepLabV2, x: torch.Tensor, seed: int) -> dict:
    """One forward/backward in train mode (dropout on), returning outputs and gradients."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(x)
    (out["out"].square().mean() + out["feat"].abs().mean()).backward()
    return {"feat": out["feat"].detach(), "out": out["out"].detach(),
            "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}}


@pytest.mark.parametrize("backbone,bn_clr", [("resnet18", False), ("resnet101", True)])
def test_checkpointing_keeps_gradients_bn_statistics_and_dropout_draws(backbone, bn_clr):
    torch.manual_seed(1)
    plain = small(backbone=backbone, bn_clr=bn_clr, base_width=4 if backbone == "resnet101" else 8)
    ckpt = DeepLabV2(**plain.config(), checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.checkpointing and not plain.checkpointing
    x = torch.randn(2, 3, 41, 57)
    for seed in (3, 4):  # two steps: the stats after a second update too
        a, b = _train_step(plain, x, seed), _train_step(ckpt, x, seed)
        # dropout masks drawn identically (feat is the dropout's output), so are the logits
        assert torch.equal(a["feat"] != 0, b["feat"] != 0)
        torch.testing.assert_close(b["feat"], a["feat"], rtol=1e-6, atol=0)
        torch.testing.assert_close(b["out"], a["out"], rtol=1e-6, atol=0)
        assert a["grads"].keys() == b["grads"].keys() and len(a["grads"]) == len(list(plain.parameters()))
        for name, g in a["grads"].items():
            rel = (b["grads"][name] - g).norm() / g.norm().clamp_min(1e-30)
            assert rel <= 1e-6, (name, rel.item())
        # running statistics and num_batches_tracked exactly as without checkpointing (updated once)
        for (name, buf), (name2, buf2) in zip(plain.named_buffers(), ckpt.named_buffers()):
            assert name == name2
            assert torch.equal(buf, buf2), name
    assert int(ckpt.bn1.num_batches_tracked) == 2
    assert all(m.track_running_stats for m in ckpt.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_checkpointing_is_off_by_default_and_changes_no_output_or_state():
    torch.manual_seed(0)
    model = small()
    assert model.checkpointing is False
    assert "checkpointing" not in model.config()
    keys = list(model.state_dict())
    model.checkpointing = True
    assert list(model.state_dict()) == keys
    x = torch.randn(2, 3, 33, 49)
    model.eval()
    with torch.no_grad():
        on = model(x)
    model.checkpointing = False
    with torch.no_grad():
        off = model(x)
    assert set(on) == {"feat", "out"} and on["feat"].shape == (2, 16, output_size(33), output_size(49))
    assert torch.equal(on["feat"], off["feat"]) and torch.equal(on["out"], off["out"])


def test_checkpointing_recomputes_in_backward_and_stores_less():
    """The checkpointed step keeps fewer saved activations (counted with saved-tensor hooks)."""
    def saved_bytes(model: DeepLabV2) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t
        model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(torch.randn(2, 3, 64, 64))["out"]
        out.sum().backward()
        return total

    torch.manual_seed(0)
    plain = small(backbone="resnet50", base_width=8)
    ckpt = DeepLabV2(**plain.config(), checkpointing=True)
    assert saved_bytes(ckpt) < 0.5 * saved_bytes(plain)
