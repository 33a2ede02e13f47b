"""ProDA's DeepLabv2: Caffe-style dilated ResNet (output stride 8) + ``Classifier_Module2`` head.

Module names, registration order and initialisation follow the official model (docs/method.md §1)
so that its state dict, released checkpoints and random draws match. Smaller backbones
(resnet50/34/18, narrower ``base_width``/``head_channels``) keep the same structure for CPU runs.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

# name -> (block kind, blocks per layer)
BACKBONES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet18": ("basic", (2, 2, 2, 2)),
}
BACKBONE_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
ASPP_DILATIONS = (6, 12, 18, 24)
LAYER_STRIDES = (1, 2, 1, 1)
LAYER_DILATIONS = (1, 1, 2, 4)
SE_REDUCTION = 16
DROPOUT = 0.1


class Bottleneck(nn.Module):
    """Caffe-style bottleneck: the stride sits on the first 1×1 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class BasicBlock(nn.Module):
    """Two 3×3 convs (torchvision names); stride on the first, both dilated."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: channel weights from the global average (``se.0``/``se.2``)."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(f"SE block needs >= {reduction} channels, got {channels}")
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.se = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        weight = self.se(self.global_pool(x).flatten(1))
        return x * weight[:, :, None, None]


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm in ``module`` without running-statistics updates (train mode still normalises with
    the batch statistics, and saves the same tensors for backward).

    The recomputation of a checkpointed segment runs its BatchNorms' forward a second time; without
    this, ``running_mean``/``running_var`` would move twice and ``num_batches_tracked`` count twice.
    Momentum 0 makes the second update ``1 * running + 0 * batch`` (the stats unchanged, bit for
    bit); ``num_batches_tracked`` is put back afterwards."""
    bns = [m for m in module.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def _checkpointed(fn: Callable[[Tensor], Tensor], owner: nn.Module, x: Tensor) -> Tensor:
    """``fn(x)`` with its activations recomputed in backward instead of stored (same maths:
    non-reentrant checkpoint restores the RNG state; the recompute leaves the running statistics of
    ``owner``'s BatchNorms alone)."""
    return checkpoint(fn, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _frozen_running_stats(owner)))


def _conv_gn(cin: int, cout: int, groups: int, kernel: int, dilation: int) -> nn.Sequential:
    pad = 0 if kernel == 1 else dilation
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=True),
                         nn.GroupNorm(groups, cout), nn.ReLU(inplace=True))


class Classifier_Module2(nn.Module):  # noqa: N801 (official name, kept for recognisability)
    """ASPP (1×1 + four dilated 3×3 branches, GN) → SE → 3×3 conv → GN → dropout → 1×1."""

    def __init__(self, inplanes: int, num_classes: int, channels: int = 256) -> None:
        super().__init__()
        groups = min(32, channels)
        if channels % groups:
            raise ValueError(f"head_channels={channels} is not divisible by "
                             f"{groups} GroupNorm groups")
        branches = [_conv_gn(inplanes, channels, groups, 1, 1)]
        branches += [_conv_gn(inplanes, channels, groups, 3, d) for d in ASPP_DILATIONS]
        self.conv2d_list = nn.ModuleList(branches)
        cat = channels * len(branches)
        self.bottleneck = nn.Sequential(SEBlock(cat),
                                        nn.Conv2d(cat, channels, 3, padding=1, bias=True),
                                        nn.GroupNorm(groups, channels))
        self.head = nn.Sequential(nn.Dropout2d(DROPOUT),
                                  nn.Conv2d(channels, num_classes, 1, bias=False))
        self._official_head_init()

    def _official_head_init(self) -> None:
        """The head's own init (docs/method.md §1.4 step 2); its ``conv2d_list`` loop is a no-op."""
        for m in self.bottleneck:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head[1].weight, 0.0, 0.001)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = torch.cat([branch(x) for branch in self.conv2d_list], dim=1)
        feat = self.head[0](self.bottleneck(out))
        return {"feat": feat, "out": self.head[1](feat)}


class DeepLabV2(nn.Module):
    """ProDA's DeepLabv2; ``forward(x) -> {"feat", "out"}`` at ≈1/8 resolution, never upsampled.

    The official model is ``DeepLabV2(C)`` (ResNet-101, 256 head channels); its state dict
    equals the official ``ResNet101`` one key for key (docs/method.md §1.7).

    ``checkpointing=True`` (also settable later as the attribute ``model.checkpointing``) stores only
    the input of the stem and of every residual block while training with gradients, and recomputes
    the rest in backward: the same gradients, BatchNorm statistics and dropout draws as without it,
    for ≈1/3 more backbone compute and much less activation memory (benchmarks/README.md). It is an
    execution option, not architecture: not in :meth:`config`, not in the state dict.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet101", bn_clr: bool = False,
                 head_channels: int = 256, base_width: int = 64, checkpointing: bool = False) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
        if num_classes < 1 or head_channels < 1 or base_width < 1:
            raise ValueError("num_classes, head_channels and base_width must be positive")
        kind, blocks = BACKBONES[backbone]
        block = Bottleneck if kind == "bottleneck" else BasicBlock
        self.num_classes, self.backbone, self.bn_clr = num_classes, backbone, bn_clr
        self.head_channels, self.base_width = head_channels, base_width
        self.checkpointing = bool(checkpointing)
        self.inplanes = base_width
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        for i, n in enumerate(blocks):
            layer = self._make_layer(block, base_width * 2 ** i, n, LAYER_STRIDES[i],
                                     LAYER_DILATIONS[i])
            setattr(self, f"layer{i + 1}", layer)
        self.backbone_channels = self.inplanes
        self.layer5 = Classifier_Module2(self.inplanes, num_classes, head_channels)
        if bn_clr:
            self.bn_pretrain = nn.BatchNorm2d(self.inplanes)
        self._official_init()

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int,
                    dilation: int) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out or dilation > 1:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out))
        layers = [block(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = out
        layers += [block(out, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _official_init(self) -> None:
        """ResNet-wide loop (§1.4 step 3): every conv N(0, 0.01), every BN 1/0, in module order."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def feat_dim(self) -> int:
        """Channels of ``feat`` (= prototype dimension)."""
        return self.head_channels

    def config(self) -> dict[str, object]:
        """Constructor kwargs that rebuild this architecture."""
        return {"num_classes": self.num_classes, "backbone": self.backbone, "bn_clr": self.bn_clr,
                "head_channels": self.head_channels, "base_width": self.base_width}

    def _stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            x = _checkpointed(self._stem, self.bn1, x)
            for block in (*self.layer1, *self.layer2, *self.layer3, *self.layer4):
                x = _checkpointed(block, block, x)
        else:
            x = self._stem(x)
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.bn_clr:
            x = self.bn_pretrain(x)
        return self.layer5(x)

    def _backbone_modules(self) -> list[nn.Module]:
        return [getattr(self, name) for name in BACKBONE_MODULES]

    def backbone_parameters(self, parity: bool = False) -> list[nn.Parameter]:
        """The 1× lr group: trainable backbone params, each once.

        ``parity=True`` reproduces the official generator (docs/method.md Q1): every parameter once per
        ancestor module below the top-level block (stem ×1, block conv/bn ×3, downsample ×4).
        """
        if not parity:
            return [p for m in self._backbone_modules() for p in m.parameters() if p.requires_grad]
        return [p for top in self._backbone_modules() for m in top.modules()
                for p in m.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """The 10× lr group: ``bn_pretrain`` (if any) then ``layer5`` params."""
        pre = list(self.bn_pretrain.parameters()) if self.bn_clr else []
        return pre + list(self.layer5.parameters())

    def backbone_state_keys(self) -> list[str]:
        """State-dict keys of the backbone (conv1, bn1, layer1..4), in state-dict order."""
        return [k for k in self.state_dict() if is_backbone_key(k)]


def is_backbone_key(key: str) -> bool:
    """Whether a state-dict key belongs to the ResNet backbone (conv1, bn1, layer1..4)."""
    return key.split(".", 1)[0] in BACKBONE_MODULES


def output_size(n: int) -> int:
    """Spatial size of ``feat``/``out`` for an input side of ``n`` pixels (docs/method.md §1.1)."""
    n = (n - 1) // 2 + 1          # conv1, stride 2
    n = -(-(n - 1) // 2) + 1      # ceil-mode max pool
    return (n - 1) // 2 + 1       # stride-2 1×1 conv of layer2
