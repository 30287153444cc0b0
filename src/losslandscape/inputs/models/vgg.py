"""VGG-9, the small VGG of Li et al.'s loss-landscape code.

References:
- Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
  Recognition", ICLR 2015 (the 3x3-conv, max-pool design).
- Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural
  Nets", NeurIPS 2018, and its code (tomgoldstein/loss-landscape,
  cifar10/models/vgg.py): seven conv-BN-ReLU layers
  [64, 64, M, 128, 128, M, 256, 256, 256, M], then Linear(256*4*4, 256)-BN-ReLU
  and a linear classifier, nine weight layers in all.

Parameter names (features, fc, classifier) follow that code so its checkpoints load.
"""

import torch
import torch.nn as nn

# "M" is a 2x2 max pool; numbers are conv output channels
VGG9_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M")

# Li et al.'s fc layer sees the 4x4 map a 32x32 image leaves after three pools
FC_GRID = 4


class VGG(nn.Module):
    """Conv-BN-ReLU features, a BN'd hidden fc layer, a linear classifier.

    Inputs of any size >= 8x8 work: the feature map is average-pooled
    adaptively to FC_GRID x FC_GRID, which is the identity on 32x32 CIFAR
    images and so keeps Li et al.'s network and parameter count there.
    """

    def __init__(self, layers=VGG9_LAYERS, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        modules: list[nn.Module] = []
        channels = in_channels
        for x in layers:
            if x == "M":
                # ceil_mode as in Li et al.: odd sizes keep their last row and column
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                modules += [nn.Conv2d(channels, x, 3, padding=1), nn.BatchNorm2d(x), nn.ReLU()]
                channels = x
        self.features = nn.Sequential(*modules)
        self.pool = nn.AdaptiveAvgPool2d(FC_GRID)
        self.fc = nn.Sequential(
            nn.Linear(channels * FC_GRID * FC_GRID, channels),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)  # (B, 256, ceil(H/8), ceil(W/8))
        out = self.pool(out).flatten(1)  # (B, 256*4*4)
        out = self.fc(out)  # (B, 256)
        return self.classifier(out)  # (B, num_classes)


def vgg9(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """Li et al.'s VGG-9 with BatchNorm."""
    return VGG(VGG9_LAYERS, num_classes, in_channels)
