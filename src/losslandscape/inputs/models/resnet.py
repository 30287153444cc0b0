"""CIFAR ResNets, with and without skip connections, and their wide variants.

References:
- He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
  section 4.2: 6n+2 layers, three stages of 2n 3x3 convs with 16/32/64 channels,
  global average pooling, a linear classifier; shortcut "option A" (identity,
  stride-2 subsampling and zero-padded channels where shapes change), which has
  no parameters and gives the paper's counts (ResNet-20: 0.27M, -56: 0.85M,
  -110: 1.7M).
- Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural
  Nets", NeurIPS 2018: the same networks with the skip connection removed
  ("_noshort") and widened by k ("wrn56_k", Zagoruyko & Komodakis, BMVC 2016).

Parameter names (conv1, bn1, layer1..3, linear; blocks conv1, bn1, conv2, bn2)
follow the widely used option-A CIFAR ResNet code (akamaster/pytorch_resnet_cifar10),
and so does the symmetric channel padding, so its checkpoints load and compute
the same function.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

STAGE_WIDTHS = (16, 32, 64)


def pad_shortcut(x: torch.Tensor, in_channels: int, out_channels: int, stride: int) -> torch.Tensor:
    """Option-A shortcut: subsample by `stride`, zero-pad channels up to `out_channels`.

    (B, C, H, W) -> (B, out_channels, ceil(H/stride), ceil(W/stride)); the new
    channels are split evenly before and after the old ones.
    """
    if stride != 1:
        # same positions a 3x3, padding-1 conv of this stride centres on
        x = x[:, :, ::stride, ::stride]
    extra = out_channels - in_channels  # from the constructor, not x.shape: keeps the model fx-traceable
    if extra:
        x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
    return x


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; with `shortcut`, the input is added before the last ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = shortcut
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, C_out, H/s, W/s)
        out = self.bn2(self.conv2(out))
        if self.shortcut:
            out = out + pad_shortcut(x, self.in_channels, self.out_channels, self.stride)
        return F.relu(out)

    def extra_repr(self) -> str:
        return f"shortcut={self.shortcut}"


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: stem conv, three stages of n blocks, pool, linear.

    `width` multiplies the stage widths (16, 32, 64); the stem keeps 16 channels,
    as in Zagoruyko & Komodakis, so with width > 1 the first block of stage 1
    also widens (zero-padded shortcut). Any input of at least 8x8 works: the
    pooling is adaptive.
    """

    def __init__(
        self,
        depth: int,
        width: int = 1,
        shortcut: bool = True,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        channels = STAGE_WIDTHS[0]
        stages = []
        for i, base in enumerate(STAGE_WIDTHS):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(channels, base * width, stride, shortcut))
                channels = base * width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He et al.'s initialisation ("Delving Deep into Rectifiers", ICCV 2015)."""
        if self.conv1.weight.is_meta:
            return  # nothing to draw (list_models counts on the meta device, where drawing is slow)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        out = self.layer1(out)  # (B, 16k, H, W)
        out = self.layer2(out)  # (B, 32k, H/2, W/2)
        out = self.layer3(out)  # (B, 64k, H/4, W/4)
        out = self.pool(out).flatten(1)  # (B, 64k)
        return self.linear(out)  # (B, num_classes)


def cifar_resnet(
    depth: int,
    width: int = 1,
    shortcut: bool = True,
    num_classes: int = 10,
    in_channels: int = 3,
) -> CifarResNet:
    """ResNet-`depth` (6n+2), stage widths times `width`, with or without skip connections."""
    return CifarResNet(depth, width, shortcut, num_classes, in_channels)
