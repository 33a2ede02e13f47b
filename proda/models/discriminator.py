"""Output-space discriminator of the warm-up stage (docs/method.md §1.9)."""
from __future__ import annotations

from torch import Tensor, nn


class FCDiscriminator(nn.Module):
    """Four stride-2 3×3 convs (ReLU, ReLU, ReLU, LeakyReLU 0.2) and a 1×1 classifier.

    Input: softmax probabilities ``N×C×H×W``; output: one logit map ``N×1×H/16×W/16``.
    """

    def __init__(self, num_classes: int, ndf: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_classes, ndf, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, 3, stride=2, padding=1)
        self.classifier = nn.Conv2d(ndf * 8, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        self.leaky_relu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.relu(self.conv3(x))
        x = self.leaky_relu(self.conv4(x))
        return self.classifier(x)
