"""MobileNet-V2 in plain torch.

torchvision has no CPU build on our machines, so the backbone is written here. Module and
parameter names follow torchvision's ``mobilenet_v2`` exactly (``features.0.0.weight``,
``features.1.conv.0.0.weight`` ... ``features.18.1.running_var``) so that a torchvision
ImageNet state dict loads by key with ``load_state_dict(strict=False)`` on the backbone.

``output_stride=16`` replaces the last stride-2 convolution by dilation (as DeepLab does).
Parameter shapes and names do not change; Grad-CAM maps get twice the resolution, which
matters for locating small dermoscopic patterns, at the price of more compute in the
last blocks.

``same_padding=True`` pads strided convolutions the way TensorFlow does, for weights
converted from Keras (``services/modelling/imagenet.py``).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn, Tensor

# (expansion t, output channels c, repeats n, first stride s) from Sandler et al. 2018.
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channel counts the way torchvision does, so widths match its checkpoints."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class SamePadConv2d(nn.Conv2d):
    """A strided convolution padded as TensorFlow's "same" does: the odd extra row and column
    go at the bottom and right (PyTorch pads both sides). Keras-trained weights (the shared
    ImageNet MobileNet-V2) expect this; parameter names are those of nn.Conv2d."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                                 reversed(self.stride), reversed(self.dilation)):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def conv(in_ch: int, out_ch: int, kernel: int, stride: int, dilation: int, groups: int,
         same_padding: bool) -> nn.Conv2d:
    if same_padding and stride > 1:
        return SamePadConv2d(in_ch, out_ch, kernel, stride, 0, dilation=dilation, groups=groups,
                             bias=False)
    return nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2 * dilation,
                     dilation=dilation, groups=groups, bias=False)


class ConvBNReLU(nn.Sequential):
    """Conv2d + BatchNorm2d + ReLU6, indexed 0/1/2 like torchvision's Conv2dNormActivation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1,
                 groups: int = 1, dilation: int = 1, activation: bool = True,
                 same_padding: bool = False):
        layers: list[nn.Module] = [
            conv(in_ch, out_ch, kernel, stride, dilation, groups, same_padding),
            nn.BatchNorm2d(out_ch),
        ]
        if activation:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int,
                 dilation: int = 1, same_padding: bool = False):
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(in_ch, hidden, kernel=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden, dilation=dilation,
                       same_padding=same_padding),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_ch

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Features(nn.Module):
    """The ``features`` part of MobileNet-V2; its output is the last feature map."""

    def __init__(self, width_mult: float = 1.0, output_stride: int = 32, same_padding: bool = False):
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError("output_stride must be 16 or 32")
        input_channel = make_divisible(32 * width_mult)
        self.out_channels = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU(3, input_channel, stride=2, same_padding=same_padding)]
        current_stride, dilation = 2, 1
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                block_dilation = dilation
                if stride == 2 and current_stride * 2 > output_stride:
                    # Keep resolution; grow the receptive field by dilation instead.
                    dilation *= 2
                    stride = 1
                elif stride == 2:
                    current_stride *= 2
                layers.append(InvertedResidual(input_channel, out_ch, stride, t,
                                               dilation=block_dilation if i == 0 else dilation,
                                               same_padding=same_padding))
                input_channel = out_ch
        layers.append(ConvBNReLU(input_channel, self.out_channels, kernel=1))
        self.features = nn.Sequential(*layers)
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def init_weights(module: nn.Module) -> None:
    """torchvision's initialisation, so from-scratch training starts where theirs does."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
