"""The diagnosis network: MobileNet-V2 features, global pooling, three-layer heads.

One head gives the BCC logit, one the seven pattern logits (multi-label) and, in models
trained on real images, one the HAM10000 diagnoses (softmax: nv, mel, bcc, akiec, bkl, df,
vasc), so that the referral risk knows melanoma and squamous/precancer too. All heads read
the same pooled vector, so Grad-CAM for every target needs the last feature map once and
the heads' gradients with respect to the pooled vector (see ``gradcam.py``).

The network takes images scaled to [0, 1] and normalises them itself with the statistics
its backbone was trained with (``Architecture.input_norm``): ImageNet mean/std for
torchvision-style weights, x * 2 - 1 for Keras-converted ones.

The map the heads read (and Grad-CAM explains) is either the last feature map, or, with
``taps``, a hypercolumn: the outputs of several blocks, each average-pooled to the last
map's grid and stacked along channels, with their squares when ``squares`` is set (so the
pooled vector holds each channel's mean and mean square, its spread). Frozen ImageNet
features read this way separate dermoscopic diagnoses far better than the last layer alone
(measured in services/modelling/train.py's notes), and Grad-CAM stays exact: the heads
still read only the spatial mean of one map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn, Tensor

from .lesion import lesion_cells, lesion_masks
from .mobilenet_v2 import MobileNetV2Features, init_weights
from .patterns import PATTERNS

INPUT_NORMS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),      # Keras: x / 127.5 - 1
}


@dataclass(frozen=True)
class Architecture:
    """What is needed to rebuild the network; stored in the model card."""

    name: str = "mobilenet_v2"
    width_mult: float = 1.0
    output_stride: int = 32
    input_size: int = 224
    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.3
    input_norm: str = "imagenet"
    same_padding: bool = False
    diagnoses: tuple[str, ...] = ()
    taps: tuple[int, ...] = ()
    squares: bool = False
    # Side of a central window of the map's grid whose mean is read beside the global mean
    # (0: the global mean alone). Dermoscopy centres the lesion; the window's mean is the
    # lesion's texture without the surrounding skin (measured gain in train.py's notes).
    centre: int = 0
    # Also read the map's mean over the lesion (the engine's Otsu mask, per cell of the map):
    # the centre window assumes where the lesion is, the mask finds it (train.py's notes).
    lesion: bool = False
    # The scope gate's read-out (``scope.py``): two logits (dermoscopic vs not, lesion vs not)
    # on the standardised pooled vector. Fitted after the heads (``modelling/scope_gate.py``).
    scope: bool = False

    def to_dict(self) -> dict:
        return {"name": self.name, "width_mult": self.width_mult,
                "output_stride": self.output_stride, "input_size": self.input_size,
                "hidden": list(self.hidden), "dropout": self.dropout,
                "input_norm": self.input_norm, "same_padding": self.same_padding,
                "diagnoses": list(self.diagnoses), "taps": list(self.taps),
                "squares": self.squares, "centre": self.centre, "lesion": self.lesion,
                "scope": self.scope}

    @classmethod
    def from_dict(cls, d: dict) -> "Architecture":
        if d.get("name", "mobilenet_v2") != "mobilenet_v2":
            raise ValueError(f"unknown architecture {d.get('name')!r}")
        if d.get("input_norm", "imagenet") not in INPUT_NORMS:
            raise ValueError(f"unknown input normalisation {d.get('input_norm')!r}")
        return cls(name="mobilenet_v2", width_mult=float(d["width_mult"]),
                   output_stride=int(d["output_stride"]), input_size=int(d["input_size"]),
                   hidden=tuple(d["hidden"]), dropout=float(d["dropout"]),
                   input_norm=d.get("input_norm", "imagenet"),
                   same_padding=bool(d.get("same_padding", False)),
                   diagnoses=tuple(d.get("diagnoses", ())), taps=tuple(d.get("taps", ())),
                   squares=bool(d.get("squares", False)), centre=int(d.get("centre", 0)),
                   lesion=bool(d.get("lesion", False)), scope=bool(d.get("scope", False)))


def classifier(in_features: int, hidden: tuple[int, ...], out_features: int,
               dropout: float) -> nn.Sequential:
    """Three linear layers with dropout, as in the seed paper's classifier; with no hidden
    sizes, one linear layer after dropout (a regularised linear read-out)."""
    if not hidden:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, out_features))
    h1, h2 = hidden
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(in_features, h1), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(h1, h2), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(h2, out_features),
    )


class Hypercolumn(nn.Module):
    """Stacks block outputs on the grid of the last one (and their squares). No parameters:
    a module so that hooks (captum's LayerGradCam in the tests and benchmark) see the map."""

    def __init__(self, squares: bool):
        super().__init__()
        self.squares = squares

    def forward(self, *taps: Tensor) -> Tensor:
        grid = taps[-1].shape[-2:]
        stacked = torch.cat([t if t.shape[-2:] == grid else F.adaptive_avg_pool2d(t, grid)
                             for t in taps], dim=1)
        return torch.cat([stacked, stacked * stacked], dim=1) if self.squares else stacked


def _out_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class BCCPatternNet(nn.Module):
    """Eight map-target logits per image (BCC, then PN UL BO MG ML SW AT), and optionally
    one logit per diagnosis."""

    def __init__(self, arch: Architecture = Architecture()):
        super().__init__()
        self.arch = arch
        backbone = MobileNetV2Features(arch.width_mult, arch.output_stride, arch.same_padding)
        # ``features`` sits at the top level so torchvision's keys load unchanged.
        self.features = backbone.features
        if arch.taps:
            if sorted(set(arch.taps)) != list(arch.taps) or arch.taps[-1] != len(self.features) - 1:
                raise ValueError("taps must be increasing block indices ending with the last block")
            channels = sum(_out_channels(self.features[i]) for i in arch.taps)
        else:
            channels = backbone.out_channels
        channels *= 2 if arch.squares else 1
        self.map_channels = channels
        self.hypercolumn = Hypercolumn(arch.squares) if arch.taps else None
        if arch.centre < 0:
            raise ValueError("centre must be 0 (global mean only) or a window side")
        # The pooled vector: global mean, centre window's mean, lesion's mean (those used).
        self.pooled_parts = 1 + bool(arch.centre) + arch.lesion
        channels *= self.pooled_parts
        # Standardises the pooled vector for the heads (set from training data; identity
        # until then). Linear, so Grad-CAM's gradients pass through it exactly. Saved only
        # for hypercolumn models (the demo's artifacts predate it and need none).
        self.register_buffer("pooled_mean", torch.zeros(channels), persistent=bool(arch.taps))
        self.register_buffer("pooled_std", torch.ones(channels), persistent=bool(arch.taps))
        self.bcc_head = classifier(channels, arch.hidden, 1, arch.dropout)
        self.pattern_head = classifier(channels, arch.hidden, len(PATTERNS), arch.dropout)
        self.diagnosis_head = (classifier(channels, arch.hidden, len(arch.diagnoses), arch.dropout)
                               if arch.diagnoses else None)
        self.scope_head = nn.Linear(channels, 2) if arch.scope else None
        mean, std = INPUT_NORMS[arch.input_norm]
        # Not in the state dict: they follow from the architecture.
        self.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        # torchvision's N(0, 0.01) for linear layers suits its single-layer classifier; through
        # three layers it shrinks the signal ~150x and the pattern head barely learns, so the
        # heads keep PyTorch's default (Kaiming-uniform) initialisation.
        init_weights(self.features)

    def embed(self, x: Tensor) -> Tensor:
        """The map the heads read, for (B, 3, S, S) images in [0, 1]."""
        x = (x - self.input_mean) / self.input_std
        if not self.arch.taps:
            return self.features(x)
        wanted, taps = set(self.arch.taps), []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in wanted:
                taps.append(x)
        return self.hypercolumn(*taps)

    def map_layer(self) -> nn.Module:
        """The module whose output is the map the heads read (Grad-CAM's target layer)."""
        return self.hypercolumn if self.hypercolumn is not None else self.features

    def lesion_cells(self, x: Tensor, features: Tensor, mask: Tensor | None = None) -> Tensor | None:
        """What ``pool`` needs besides the map: the lesion's share of each map cell, from
        ``mask`` (B, S, S) or else found in the (B, 3, S, S) images ``x`` in [0, 1]; None
        when the heads do not read the lesion."""
        if not self.arch.lesion:
            return None
        if mask is None:
            mask, _ = lesion_masks(x.float())
        return lesion_cells(mask, features.shape[-2:])

    def pool(self, features: Tensor, cells: Tensor | None = None) -> Tensor:
        """The vector the heads read from a (B, C, h, w) map: its global mean, then (with
        ``centre``) the mean of the central ``centre`` x ``centre`` window, then (with
        ``lesion``) its mean weighted by the lesion's share of each cell, ``cells``."""
        parts = [features.mean(dim=(2, 3))]
        h, w = features.shape[-2:]
        if k := self.arch.centre:
            if k > min(h, w):
                raise ValueError(f"centre window {k} is larger than the {h}x{w} map")
            top, left = (h - k) // 2, (w - k) // 2
            parts.append(features[:, :, top:top + k, left:left + k].mean(dim=(2, 3)))
        if self.arch.lesion:
            if cells is None or cells.shape[-2:] != (h, w):
                raise ValueError(f"the lesion pooling needs the lesion's share of each of the {h}x{w} cells")
            cells = cells.to(features.dtype)
            parts.append((features * cells).sum(dim=(2, 3)) / cells.sum(dim=(2, 3)).clamp_min(1e-6))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def pooled(self, x: Tensor) -> Tensor:
        """The heads' input for (B, 3, S, S) images in [0, 1]."""
        features = self.embed(x)
        return self.pool(features, self.lesion_cells(x, features))

    def channel_gradients(self, d_pooled: Tensor) -> Tensor:
        """Gradients with respect to the pooled vector (..., pooled channels), summed per map
        channel (..., C). Grad-CAM's weight a_k is the mean over positions of dy/dA^k_ij:
        the global part contributes dy/dp_k / hw at every position, the centre part
        dy/dq_k / k^2 at k^2 positions and the lesion part dy/dr_k w_ij / sum(w) at each
        position ij; each sums to its gradient / hw, so a_k = (dy/dp_k + dy/dq_k + dy/dr_k) / hw."""
        if self.pooled_parts == 1:
            return d_pooled
        return d_pooled.unflatten(-1, (self.pooled_parts, self.map_channels)).sum(-2)

    def standardise(self, pooled: Tensor) -> Tensor:
        """The pooled vector as the heads read it: standardised by the training images'."""
        return (pooled - self.pooled_mean) / self.pooled_std

    def heads(self, pooled: Tensor) -> Tensor:
        """The eight Grad-CAM targets' logits."""
        z = self.standardise(pooled)
        return torch.cat([self.bcc_head(z), self.pattern_head(z)], dim=1)

    def diagnosis_logits(self, pooled: Tensor) -> Tensor | None:
        if self.diagnosis_head is None:
            return None
        return self.diagnosis_head(self.standardise(pooled))

    def scope_readout(self, pooled: Tensor) -> tuple[Tensor, Tensor] | None:
        """The scope gate's (B, 2) logits (dermoscopic, lesion) and each image's typicality:
        the mean squared z-score of its pooled vector against the training images' (about 1
        for images like them, far higher for anything else). None without a gate."""
        if self.scope_head is None:
            return None
        z = self.standardise(pooled.float())
        return self.scope_head(z), z.square().mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.heads(self.pooled(x))
