"""The diagnosis network: MobileNet-V2 features, global pooling, two three-layer heads.

One head gives the BCC logit, the other the seven pattern logits (multi-label). Both read the
same pooled vector, so Grad-CAM for all eight targets needs the last feature map once and the
heads' gradients with respect to the pooled vector (see ``gradcam.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn, Tensor

from .mobilenet_v2 import MobileNetV2Features, init_weights
from .patterns import PATTERNS


@dataclass(frozen=True)
class Architecture:
    """What is needed to rebuild the network; stored in the model card."""

    name: str = "mobilenet_v2"
    width_mult: float = 1.0
    output_stride: int = 32
    input_size: int = 224
    hidden: tuple[int, int] = (256, 128)
    dropout: float = 0.3

    def to_dict(self) -> dict:
        return {"name": self.name, "width_mult": self.width_mult,
                "output_stride": self.output_stride, "input_size": self.input_size,
                "hidden": list(self.hidden), "dropout": self.dropout}

    @classmethod
    def from_dict(cls, d: dict) -> "Architecture":
        if d.get("name", "mobilenet_v2") != "mobilenet_v2":
            raise ValueError(f"unknown architecture {d.get('name')!r}")
        return cls(name="mobilenet_v2", width_mult=float(d["width_mult"]),
                   output_stride=int(d["output_stride"]), input_size=int(d["input_size"]),
                   hidden=tuple(d["hidden"]), dropout=float(d["dropout"]))


def classifier(in_features: int, hidden: tuple[int, int], out_features: int,
               dropout: float) -> nn.Sequential:
    """Three linear layers with dropout, as in the seed paper's classifier."""
    h1, h2 = hidden
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(in_features, h1), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(h1, h2), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(h2, out_features),
    )


class BCCPatternNet(nn.Module):
    """Outputs eight logits per image: BCC, then PN UL BO MG ML SW AT."""

    def __init__(self, arch: Architecture = Architecture()):
        super().__init__()
        self.arch = arch
        backbone = MobileNetV2Features(arch.width_mult, arch.output_stride)
        # ``features`` sits at the top level so torchvision's keys load unchanged.
        self.features = backbone.features
        channels = backbone.out_channels
        self.bcc_head = classifier(channels, arch.hidden, 1, arch.dropout)
        self.pattern_head = classifier(channels, arch.hidden, len(PATTERNS), arch.dropout)
        # torchvision's N(0, 0.01) for linear layers suits its single-layer classifier; through
        # three layers it shrinks the signal ~150x and the pattern head barely learns, so the
        # heads keep PyTorch's default (Kaiming-uniform) initialisation.
        init_weights(self.features)

    def heads(self, pooled: Tensor) -> Tensor:
        return torch.cat([self.bcc_head(pooled), self.pattern_head(pooled)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.heads(self.features(x).mean(dim=(2, 3)))
