"""The heads' read-outs, fitted on cached pooled vectors.

Each head is one linear read-out, an L2-regularised logistic (softmax for the 7 diagnoses)
minimised exactly with L-BFGS: deterministic, and far closer to each head's optimum than a
shared minibatch loop that sees Derm7pt's 687 pattern labels a few times per epoch. The BCC
and diagnosis read-outs of several training sets (the folds and all images) are one solve
(``fit_readouts``), because on 2 cores each fit is bound by passes over the same matrix.
The seed's AdamW heads (``solver="adamw"``) stay as the comparison. Measurements:
docs/experiments.md, "Read-outs".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..diagnosis.network import BCCPatternNet
from ..diagnosis.patterns import PATTERNS
from .datasets import DIAGNOSES, Labels
from .recipe import RealTrainConfig, for_view


def class_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    counts = torch.bincount(labels[labels >= 0], minlength=classes).float().clamp_min(1)
    w = counts.sum() / (classes * counts)
    return w / w.mean()


def _focal(logits: torch.Tensor, target: torch.Tensor, gamma: float, weight=None) -> torch.Tensor:
    logp = F.log_softmax(logits, 1)
    pt = logp.gather(1, target[:, None]).squeeze(1).exp()
    ce = F.nll_loss(logp, target, weight=weight, reduction="none")
    return ((1 - pt) ** gamma * ce).mean()


def _binary(logits: torch.Tensor, target: torch.Tensor, cfg: RealTrainConfig, pos_weight) -> torch.Tensor:
    if cfg.loss == "focal":
        p = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        pt = p * target + (1 - p) * (1 - target)
        return ((1 - pt) ** cfg.focal_gamma * ce).mean() * 4
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)


def train_heads(model: BCCPatternNet, x: torch.Tensor, labels: Labels, synthetic: torch.Tensor,
                synthetic_patterns: np.ndarray, cfg: RealTrainConfig, seed: int,
                max_iter: int | None = None, patterns: bool = True) -> None:
    """Fit the heads on cached pooled vectors: x is (views, N, C) of the training images."""
    views, n, c = x.shape
    flat = x.reshape(views * n, c)
    model.pooled_mean.copy_(flat.mean(0))
    model.pooled_std.copy_(flat.std(0).clamp_min(1e-4))
    if cfg.solver == "adamw":
        _train_heads_adamw(model, x, labels, synthetic, synthetic_patterns, cfg, seed)
    else:
        fit_heads_exact(model, x, labels, synthetic, synthetic_patterns, cfg, max_iter=max_iter,
                        patterns=patterns)
    model.eval()


def fit_heads_exact(model: BCCPatternNet, x: torch.Tensor, labels: Labels, synthetic: torch.Tensor,
                    synthetic_patterns: np.ndarray, cfg: RealTrainConfig, readouts: bool = True,
                    patterns: bool = True, max_iter: int | None = None) -> None:
    """Each head is its own L2-regularised logistic (softmax for the diagnoses) fitted to
    convergence with L-BFGS on the whole training set. Why not the seed's AdamW: a shared
    minibatch loop serves the 687 Derm7pt rows (PN, AT) a few times per epoch among 13,000
    others and stops far from the optimum of each head (experiments.md, "Read-outs").
    Deterministic: no sampling."""
    views, n, c = x.shape
    z = model.standardise(x.reshape(views * n, c))
    dx, bcc, pat = labels.dx.repeat(views), labels.bcc.repeat(views), labels.patterns.repeat(views, 1)
    if readouts:
        has = dx >= 0
        w, b = _logistic(z[has], dx[has], cfg.l2_diagnosis, cfg, weight=class_weights(dx, len(DIAGNOSES)),
                         max_iter=max_iter, views=views)
        _set_linear(model.diagnosis_head, slice(None), w, b)
        has = bcc >= 0
        w, b = _logistic(z[has], bcc[has], cfg.l2_bcc, cfg, pos_weight=pos_weight(bcc[has]),
                         max_iter=max_iter, views=views)
        _set_linear(model.bcc_head, slice(None), w, b)
    zs = model.standardise(synthetic) if len(synthetic) else None
    # The pattern heads read the global mean only (zero weights on the centre window): with
    # it, PN and AT lost out of fold (687 Derm7pt images are too few for twice the inputs;
    # experiments.md, "Pooling").
    cols = model.map_channels          # the global mean's part of the pooled vector
    for j, code in enumerate(PATTERNS if patterns else ()):
        if code in labels.labelled:
            has = pat[:, j] >= 0
            zj, yj, blocks = z[has], pat[has, j], views
        elif zs is not None:
            # Synthetic drawings teach only the patterns no real label covers.
            zj, yj, blocks = zs, torch.from_numpy(synthetic_patterns[:, j].astype(np.int64)), 1
        else:
            continue
        if len(yj.unique()) < 2:
            continue
        w, b = _logistic(zj[:, :cols], yj, cfg.l2_patterns, cfg, pos_weight=pos_weight(yj), views=blocks)
        _set_linear(model.pattern_head, slice(j, j + 1), F.pad(w, (0, z.shape[1] - cols)), b)


def _disagreement(per_view: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Over images, the squared distance between their logits in view 0 and in each other
    view, weighted per view (``invariance_weights``): (views, images, outputs) -> scalar.
    Added to the read-outs' objective, it is a Tikhonov penalty on the weights along
    directions in which the views of one image differ, so the read-outs lean on what an
    image's symmetries and another camera's colour leave unchanged (measured gain:
    experiments.md, "Views" and "Collections")."""
    return ((per_view[1:] - per_view[:1]).square().sum(-1).mean(-1) * weights).sum()


def invariance_weights(cfg: RealTrainConfig, views: int) -> torch.Tensor:
    """The weight of each view's agreement with view 0 (views 1..): ``cfg.invariance``, the last
    weight repeated for the views beyond."""
    return torch.tensor([for_view(cfg.invariance, v) for v in range(1, views)], dtype=torch.float32)


def pos_weight(y: torch.Tensor) -> torch.Tensor:
    return ((y == 0).sum().clamp_min(1) / (y == 1).sum().clamp_min(1)).float()


def _logistic(z: torch.Tensor, y: torch.Tensor, l2: float, cfg: RealTrainConfig, weight=None,
              pos_weight=None, max_iter: int | None = None,
              views: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean loss + l2 * |w|^2 (softmax when ``weight`` is given, else binary), plus
    the views' disagreement weighted by ``cfg.invariance`` when z's rows are ``views`` blocks
    of the same images."""
    classes = 1 if weight is None else len(weight)
    w = torch.zeros(z.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    agreement = invariance_weights(cfg, views)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter or cfg.max_iter, tolerance_change=1e-7,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        # The gradient of z @ w is z.T @ g; autograd computes exactly that product, and
        # on some hosts' BLAS that transposed product with a handful of columns takes a
        # slow path, over 10x slower than (g.T @ z).T (experiments.md, "Read-outs"). So the
        # matmul's gradient is taken by hand; the loss's own gradient (small) comes from
        # autograd.
        zw = (z @ w.detach()).requires_grad_()
        logits = zw + b
        if classes > 1:
            loss = (_focal(logits, y, cfg.focal_gamma, weight) if cfg.loss == "focal"
                    else F.cross_entropy(logits, y, weight=weight))
        else:
            loss = _binary(logits[:, 0], y.float(), cfg, pos_weight)
        if agreement.any():
            loss = loss + _disagreement(zw.view(views, -1, classes), agreement)
        loss.backward()
        with torch.no_grad():
            w.grad = (zw.grad.T @ z).T.contiguous() + 2 * l2 * w
            return loss + l2 * (w * w).sum()
    opt.step(closure)
    return w.detach().T, b.detach()


def _set_linear(head: torch.nn.Sequential, rows: slice, w: torch.Tensor, b: torch.Tensor) -> None:
    linear = [m for m in head if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        linear.weight[rows] = w
        linear.bias[rows] = b


# --- the BCC and diagnosis read-outs of every fold in one solve --------------------------------
@dataclass
class Readout:
    """A fitted BCC and diagnosis read-out and the standardisation it was fitted in."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor      # (C, 7 + 1): the diagnoses' columns, then BCC's
    bias: torch.Tensor

    def install(self, model: BCCPatternNet) -> None:
        model.pooled_mean.copy_(self.mean)
        model.pooled_std.copy_(self.std)
        k = len(DIAGNOSES)
        _set_linear(model.diagnosis_head, slice(None), self.weight[:, :k].T, self.bias[:k])
        _set_linear(model.bcc_head, slice(None), self.weight[:, k:].T, self.bias[k:])


def _in_every_view(images: torch.Tensor, views: int, n: int) -> torch.Tensor:
    """Rows of ``images`` in the (views * n) stacked views, view by view."""
    return (images[None] + n * torch.arange(views)[:, None]).flatten()


def fit_readouts(x: torch.Tensor, labels: Labels, sets: list[torch.Tensor], cfg: RealTrainConfig,
                 progress: Callable[[int], None] = lambda n: None) -> list[Readout]:
    """The BCC and diagnosis logistics of several training sets (``sets``: (N,) masks over the
    images of x, (views, N, C); the folds and all images) minimised together with L-BFGS.

    Why together: on 2 cores these fits are bound by the two products of the (views * N, C)
    matrix with a few columns per closure, so solving every set in one pass of the matrix
    costs little more than one set alone. The objective is the sum of the sets' own
    objectives, which share nothing, so its minimum is each one's minimum. Like the separate
    fits, the solve stops at ``cfg.max_iter`` iterations, which the build's 6 sets use in
    full; what that moved is in experiments.md, "Read-outs".

    Each set keeps its own standardisation, as ``train_heads`` sets it: with x standardised
    once over all rows (Z), a set's z = (x - m) / s = Z * a + c, where a = s_all / s and
    c = (m_all - m) / s, so its logits are Z @ (a * w) + c @ w + b and the matmul's gradient
    is a * (Z.T @ g): one product of Z for all sets, forwards and backwards. The views'
    disagreement (``cfg.invariance``) is read off the same product: a set's logits differ
    between an image's views only through it."""
    views, n, c = x.shape
    flat = x.reshape(views * n, c)
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-4)
    z = (flat - mean) / std
    k, q = len(sets), len(DIAGNOSES) + 1
    dx, bcc = labels.dx.repeat(views), labels.bcc.repeat(views)
    stats, problems = [], []
    for rows in sets:
        r = rows.repeat(views)
        sub = flat[r]
        stats.append((sub.mean(0), sub.std(0).clamp_min(1e-4)))
        del sub
        d_images = torch.nonzero(rows & (labels.dx >= 0))[:, 0]
        b_images = torch.nonzero(rows & (labels.bcc >= 0))[:, 0]
        d_rows, b_rows = _in_every_view(d_images, views, n), _in_every_view(b_images, views, n)
        problems.append((d_rows, dx[d_rows], class_weights(dx[r], len(DIAGNOSES)),
                         b_rows, bcc[b_rows].float(), pos_weight(bcc[b_rows]), d_images, b_images))
    scale = torch.stack([std / s for _, s in stats])                 # (k, C): a
    shift = torch.stack([(mean - m) / s for m, s in stats])          # (k, C): c
    w = torch.zeros(k, c, q, requires_grad=True)
    b = torch.zeros(k, q, requires_grad=True)
    agreement = invariance_weights(cfg, views)
    opt = torch.optim.LBFGS([w, b], max_iter=cfg.max_iter, tolerance_change=1e-7, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        # As in ``_logistic``, the big products are taken by hand (one each way); autograd
        # only sees the logits and the small terms.
        zv = (z @ (scale[:, :, None] * w.detach()).permute(1, 0, 2).reshape(c, k * q)).requires_grad_()
        logits = zv.view(-1, k, q) + (torch.einsum("kc,kcq->kq", shift, w) + b)[None]
        loss = cfg.l2_diagnosis * w[:, :, :-1].square().sum() + cfg.l2_bcc * w[:, :, -1].square().sum()
        for i, (d_rows, d_y, d_weight, b_rows, b_y, b_pos, d_images, b_images) in enumerate(problems):
            out = logits[d_rows, i, :-1]
            loss = loss + (_focal(out, d_y, cfg.focal_gamma, d_weight) if cfg.loss == "focal"
                           else F.cross_entropy(out, d_y, weight=d_weight))
            loss = loss + _binary(logits[b_rows, i, -1], b_y, cfg, b_pos)
            if agreement.any():
                # A set's logits differ between views only through zv (its shift and bias
                # are the same for every view of an image). Over the images each read-out
                # is fitted on, as ``_logistic`` does.
                per_view = zv.view(views, n, k, q)
                loss = loss + (_disagreement(per_view[:, d_images, i, :-1], agreement)
                               + _disagreement(per_view[:, b_images, i, -1:], agreement))
        loss.backward()
        with torch.no_grad():
            w.grad += scale[:, :, None] * (zv.grad.T @ z).T.reshape(c, k, q).permute(1, 0, 2)
        progress(1)
        return loss
    opt.step(closure)
    return [Readout(m, s, w[i].detach().clone(), b[i].detach().clone()) for i, (m, s) in enumerate(stats)]


def _train_heads_adamw(model: BCCPatternNet, x: torch.Tensor, labels: Labels, synthetic: torch.Tensor,
                       synthetic_patterns: np.ndarray, cfg: RealTrainConfig, seed: int) -> None:
    """The seed's stages 1 and 3 (heads at ``lr``, then at ``low_lr``) with AdamW and dropout."""
    views, n, c = x.shape
    flat = x.reshape(views * n, c)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for head in (model.bcc_head, model.pattern_head, model.diagnosis_head):
        for layer in head:
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
    dx = labels.dx.repeat(views)
    bcc = labels.bcc.repeat(views)
    pat = labels.patterns.repeat(views, 1)
    if len(synthetic):
        flat = torch.cat([flat, synthetic])
        dx = torch.cat([dx, torch.full((len(synthetic),), -1)])
        bcc = torch.cat([bcc, torch.full((len(synthetic),), -1)])
        syn = torch.from_numpy(synthetic_patterns.astype(np.int64))
        # Synthetic images teach only the patterns no real label covers.
        for code in labels.labelled:
            syn[:, PATTERNS.index(code)] = -1
        pat = torch.cat([pat, syn])
    dx_weight = class_weights(labels.dx, len(DIAGNOSES))
    bcc_pos = (bcc == 0).sum().clamp_min(1) / (bcc == 1).sum().clamp_min(1)
    pat_pos = ((pat == 0).sum(0).clamp_min(1) / (pat == 1).sum(0).clamp_min(1)).float()
    params = [p for h in (model.bcc_head, model.pattern_head, model.diagnosis_head) for p in h.parameters()]
    for lr, epochs in ((cfg.lr, cfg.epochs), (cfg.low_lr, cfg.low_epochs)):
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        steps = max(1, math.ceil(len(flat) / cfg.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps * epochs)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(flat), generator=gen)
            for s in range(steps):
                idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                z = model.standardise(flat[idx])
                out_bcc = model.bcc_head(z)[:, 0]
                out_pat = model.pattern_head(z)
                out_dx = model.diagnosis_head(z)
                loss = torch.zeros(())
                has = dx[idx] >= 0
                if has.any():
                    loss = loss + (_focal(out_dx[has], dx[idx][has], cfg.focal_gamma, dx_weight)
                                   if cfg.loss == "focal" else
                                   F.cross_entropy(out_dx[has], dx[idx][has], weight=dx_weight))
                has = bcc[idx] >= 0
                if has.any():
                    loss = loss + _binary(out_bcc[has], bcc[idx][has].float(), cfg, bcc_pos)
                for j in range(len(PATTERNS)):
                    has = pat[idx, j] >= 0
                    if has.any():
                        loss = loss + 0.5 * _binary(out_pat[has, j], pat[idx, j][has].float(), cfg,
                                                    pat_pos[j])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()


def readout_loss(z: torch.Tensor, dx: torch.Tensor, bcc: torch.Tensor, dx_head: torch.nn.Linear,
                 bcc_head: torch.nn.Linear, cfg: RealTrainConfig, dx_weight: torch.Tensor,
                 bcc_pos: torch.Tensor) -> torch.Tensor:
    """Stage 2's loss on a minibatch of standardised pooled vectors ``z``: the exact fits'
    class-weighted softmax and positive-weighted BCC terms and their L2 terms, over the rows
    with a label (-1: none)."""
    loss = cfg.l2_diagnosis * dx_head.weight.square().sum() + cfg.l2_bcc * bcc_head.weight.square().sum()
    has = dx >= 0
    if has.any():
        loss = loss + F.cross_entropy(dx_head(z[has]), dx[has], weight=dx_weight)
    has = bcc >= 0
    if has.any():
        loss = loss + _binary(bcc_head(z[has])[:, 0], bcc[has].float(), cfg, bcc_pos)
    return loss


def last_linear(head: torch.nn.Sequential) -> torch.nn.Linear:
    return [m for m in head if isinstance(m, torch.nn.Linear)][-1]


def head_logits(model: BCCPatternNet, pooled: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        return model.heads(pooled).numpy(), model.diagnosis_logits(pooled).numpy()
