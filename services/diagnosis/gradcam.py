"""Grad-CAM for every target at once, from one forward pass.

Grad-CAM needs, per target c, the weights a_k = mean_ij dy_c/dA^k_ij of the last feature
map A. Our heads read only the global average of A, p_k = mean_ij A^k_ij, so
dy_c/dA^k_ij = (1/HW) dy_c/dp_k for every position, and a_k = (1/HW) dy_c/dp_k (with the
real model's centre window, a second mean q_k over it adds its gradient to the same sum:
``BCCPatternNet.channel_gradients``). The
backbone never needs a backward pass: the Jacobian of the small heads with respect to the
pooled vector (8 targets x channels) gives all weights, and one batched contraction with A
gives all maps. captum's LayerGradCam, by contrast, runs a forward and a backward through
the whole network per target; tests/diagnosis/test_gradcam.py checks both agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .network import BCCPatternNet


@dataclass
class CamOutput:
    logits: Tensor        # (B, T) the same logits a plain forward gives
    signed: Tensor        # (B, T, h, w) sum_k a_k A^k before the ReLU (negative = against)
    raw: Tensor           # (B, T, h, w) ReLU(signed) at feature-map resolution
    normalised: Tensor    # (B, T, S, S) raw upsampled to the input, divided by its maximum
    peak_raw: Tensor      # (B, T) max of raw: the absolute strength behind each normalised map
    pooled: Tensor        # (B, C) the pooled vector every head reads


def signed_cams(features: Tensor, d_logits_d_pooled: Tensor) -> Tensor:
    """The Grad-CAM formula, once: (B, C, h, w) features and (B, T, C) gradients of T target
    logits with respect to the pooled vector -> (B, T, h, w) maps before the ReLU.

    a_k = dy/dA^k_ij averaged over positions = (1/hw) dy/dp_k, because p = mean_ij A. It is
    differentiable, so training can shape the maps it would serve."""
    b, _, h, w = features.shape
    weights = d_logits_d_pooled / (h * w)
    # (B,T,C) x (B,C,h*w) -> (B,T,h,w): one batched matmul over images and targets.
    return torch.bmm(weights, features.flatten(2)).view(b, -1, h, w)


def head_jacobian(model: BCCPatternNet, pooled: Tensor) -> tuple[Tensor, Tensor]:
    """Logits (B, T) and d logit_t / d pooled (B, T, C), through the heads only."""
    with torch.enable_grad():
        p = pooled.detach().float().requires_grad_(True)
        logits = model.heads(p)
        targets = logits.shape[1]
        grads = [torch.autograd.grad(logits[:, t].sum(), p, retain_graph=t < targets - 1)[0]
                 for t in range(targets)]
    return logits.detach(), torch.stack(grads, dim=1)


def all_target_cams(model: BCCPatternNet, x: Tensor, out_size: int | None = None,
                    lesion: Tensor | None = None) -> CamOutput:
    """Logits and Grad-CAM maps for all targets of a batch; no backbone backward pass.
    ``lesion``: the images' lesion masks where the caller has them already."""
    with torch.no_grad():
        features = model.embed(x)
    # The backbone may run under autocast; heads and maps stay in float32 (they are cheap,
    # and the maps' numbers are reported to four decimals).
    with torch.autocast(device_type=x.device.type, enabled=False):
        features = features.float().contiguous()
        pooled = model.pool(features, model.lesion_cells(x, features, lesion))
        logits, jac = head_jacobian(model, pooled)
        signed = signed_cams(features, model.channel_gradients(jac))
        raw = torch.relu(signed)
        size = out_size or x.shape[-1]
        up = F.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False)
    peak = raw.amax(dim=(2, 3))
    normalised = up / up.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return CamOutput(logits=logits, signed=signed, raw=raw, normalised=normalised, peak_raw=peak,
                     pooled=pooled)
