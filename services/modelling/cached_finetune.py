"""Stage 2 on cached activations (``--finetune-from 14``): the last blocks and the BCC and
diagnosis read-outs fine-tuned on the cached output of the block before them, then the
pattern heads refitted on the tuned features.

The build leaves it out (``finetune_from=0``): on 2 cores it gained nothing out of fold and
cost 8 minutes (docs/experiments.md, "Stage 2"). With it off, ``fit_model`` is stage 1 alone.
On a GPU the image-space version is ``image_finetune``.
"""

from __future__ import annotations

import torch

from ..diagnosis.network import BCCPatternNet, _out_channels
from .datasets import DIAGNOSES, Labels
from .features import Features
from .readouts import class_weights, fit_heads_exact, last_linear, pos_weight, readout_loss, train_heads
from .recipe import RealTrainConfig


def fit_model(model: BCCPatternNet, feats: Features, rows: torch.Tensor | None, labels: Labels,
              cfg: RealTrainConfig, seed: int) -> None:
    """The seed's three stages on the training rows (``rows``; None: every image): heads on
    the frozen features (stage 1), then the blocks from ``finetune_from`` on and the BCC and
    diagnosis heads together at a low rate (stage 2), then the pattern heads refitted on the
    fine-tuned features (stage 3: their labels are too few to steer the blocks, and the
    synthetic drawings must not)."""
    x = feats.real if rows is None else feats.real[:, rows]
    tuned = _stage_two(cfg, feats)
    # Stage 2 moves the heads again, so stage 1 only needs to bring them near their optimum.
    train_heads(model, x, labels, feats.synthetic, feats.synthetic_patterns, cfg, seed,
                max_iter=cfg.stage1_iter if tuned else None, patterns=not tuned)
    if not tuned:
        return
    inner = feats.inner if rows is None else feats.inner[:, rows]
    cells = feats.cells if rows is None or feats.cells is None else feats.cells[:, rows]
    finetune(model, inner, x, labels, cfg, seed, cells)
    pooled = tail_pooled(model, inner, x, cfg.finetune_from, cells)
    synthetic = (tail_pooled(model, feats.synthetic_inner[None], feats.synthetic[None], cfg.finetune_from,
                             None if feats.synthetic_cells is None else feats.synthetic_cells[None])[0]
                 if feats.synthetic_inner is not None and len(feats.synthetic) else feats.synthetic)
    fit_heads_exact(model, pooled, labels, synthetic, feats.synthetic_patterns, cfg, readouts=False)
    model.eval()


def _stage_two(cfg: RealTrainConfig, feats: Features) -> bool:
    # The seed-style AdamW heads (``solver="adamw"``) are the frozen recipe's comparison only.
    return bool(cfg.finetune_from) and feats.inner is not None and cfg.solver == "exact"


def one_solve(cfg: RealTrainConfig, feats: Features) -> bool:
    """Whether the folds' read-outs are one solve (``fit_readouts``): the exact fits on the
    frozen backbone; stage 2 and the AdamW heads go fold by fold."""
    return not _stage_two(cfg, feats) and cfg.solver == "exact"


def served_pooled(model: BCCPatternNet, feats: Features, rows: torch.Tensor, cfg: RealTrainConfig) -> torch.Tensor:
    """View 0 of ``rows`` as the (possibly fine-tuned) model pools it."""
    if not _stage_two(cfg, feats):
        return feats.real[0, rows]
    cells = None if feats.cells is None else feats.cells[:1, rows]
    return tail_pooled(model, feats.inner[:1, rows], feats.real[:1, rows], cfg.finetune_from, cells)[0]


def _tail(model: BCCPatternNet, x: torch.Tensor, start: int, cells: torch.Tensor | None = None) -> torch.Tensor:
    """Blocks ``start``.. on cached activations: the pooled vector of their taps alone,
    computed by the served network's own ``Hypercolumn`` and ``pool`` (``cells``: the
    images' lesion cells, for the lesion pooling)."""
    taps = []
    for i in range(start, len(model.features)):
        x = model.features[i](x)
        if i in model.arch.taps:
            taps.append(x)
    return model.pool(model.hypercolumn(*taps), cells)


def _assemble(model: BCCPatternNet, frozen: torch.Tensor, tail: torch.Tensor, start: int) -> torch.Tensor:
    """The pooled vector with the tail's part replaced. It is a run of equal segments (per
    pooling region, the global mean, the centre window, the lesion: means, then squares),
    each holding every tap's channels in block order; the tail's taps end each segment."""
    split = sum(_out_channels(model.features[i]) for i in model.arch.taps if i < start)
    segments = model.pooled_parts * (2 if model.arch.squares else 1)
    f, t = frozen.unflatten(1, (segments, -1)), tail.unflatten(1, (segments, -1))
    return torch.cat([f[:, :, :split], t], 2).flatten(1)


def _flat_cells(cells: torch.Tensor | None) -> torch.Tensor | None:
    return None if cells is None else cells.reshape(-1, *cells.shape[2:])


def tail_pooled(model: BCCPatternNet, inner: torch.Tensor, pooled: torch.Tensor, start: int,
                cells: torch.Tensor | None = None, batch: int = 256) -> torch.Tensor:
    """(views, n, C) pooled vectors recomputed through the current tail blocks."""
    views, n = inner.shape[:2]
    flat_inner, flat = inner.reshape(views * n, *inner.shape[2:]), pooled.reshape(views * n, -1)
    flat_cells = _flat_cells(cells)
    out = []
    with torch.inference_mode():
        for i in range(0, len(flat), batch):
            x = flat_inner[i:i + batch].float().contiguous(memory_format=torch.channels_last)
            c = None if flat_cells is None else flat_cells[i:i + batch]
            out.append(_assemble(model, flat[i:i + batch], _tail(model, x, start, c), start))
    return torch.cat(out).reshape(views, n, -1)


def finetune(model: BCCPatternNet, inner: torch.Tensor, pooled: torch.Tensor, labels: Labels,
             cfg: RealTrainConfig, seed: int, cells: torch.Tensor | None = None) -> None:
    """Stage 2: AdamW on the tail blocks and the BCC and diagnosis heads, one-cycle schedule,
    the exact fits' losses and L2 terms. The backbone stays in eval mode: its BatchNorm layers
    hold the identity after the TFLite reader folded them into the convolutions, and train
    mode would normalise by batch statistics and overwrite them (this, not over-fitting, is
    what made an earlier trial of this stage look useless)."""
    views, n = inner.shape[:2]
    flat_inner, flat = inner.reshape(views * n, *inner.shape[2:]), pooled.reshape(views * n, -1)
    flat_cells = _flat_cells(cells)
    dx, bcc = labels.dx.repeat(views), labels.bcc.repeat(views)
    dx_weight = class_weights(labels.dx, len(DIAGNOSES))
    bcc_pos = pos_weight(bcc[bcc >= 0])
    tail = model.features[cfg.finetune_from:]
    dx_head, bcc_head = last_linear(model.diagnosis_head), last_linear(model.bcc_head)
    params = list(tail.parameters()) + list(dx_head.parameters()) + list(bcc_head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.finetune_lr, weight_decay=1e-4)
    per_epoch = max(1, len(flat) // cfg.finetune_batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.finetune_lr,
                                                total_steps=per_epoch * cfg.finetune_epochs, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    with torch.enable_grad():
        for _ in range(cfg.finetune_epochs):
            order = torch.randperm(len(flat), generator=gen)
            for step in range(per_epoch):
                idx = order[step * cfg.finetune_batch:(step + 1) * cfg.finetune_batch]
                x = flat_inner[idx].float().contiguous(memory_format=torch.channels_last)
                c = None if flat_cells is None else flat_cells[idx]
                z = model.standardise(_assemble(model, flat[idx], _tail(model, x, cfg.finetune_from, c),
                                                cfg.finetune_from))
                loss = readout_loss(z, dx[idx], bcc[idx], dx_head, bcc_head, cfg, dx_weight, bcc_pos)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
