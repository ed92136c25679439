"""Stage 2 on images: the backbone fine-tuned with fresh image-space augmentation at every
step, for a GPU (``dermatriage model train --device cuda``).

Why a recipe of its own: on 2 cores the build caches a few views of every image once and
trains on the cache, so every epoch sees the same few samples of each image; fine-tuning
through cached block-13 activations did not pay for its time (docs/experiments.md,
"Stage 2"). On a GPU each step can draw a new augmented image (the seed's rotation, flips, blur,
perspective and colour, ``views.augment``) and push gradients through every block, which is
what fine-tuning on this little data needs.

The stages follow the seed (SCIENCE.md s.1): the heads are first fitted exactly on the frozen
ImageNet features (the CPU build's stage 1); then the blocks from ``image_from`` on and the
BCC and diagnosis read-outs train together with AdamW at a low rate under a one-cycle
schedule, with bf16 autocast on CUDA; then every head is refitted exactly on the tuned
network's pooled vectors (the seed's third stage, heads only, with the exact fit in place of
a very low rate), which is also where the pattern heads learn (687 labelled images are too
few to steer the blocks, and the synthetic drawings must not).

The backbone stays in eval mode, as in ``cached_finetune.finetune``: the TFLite reader folded
BatchNorm into the convolutions, and train mode would normalise by batch statistics.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..diagnosis.network import BCCPatternNet
from ..diagnosis.patterns import PATTERNS
from ..diagnosis.preprocess import to_unit
from .datasets import DIAGNOSES, Labels, Sample
from .features import Features
from .readouts import (class_weights, fit_readouts, head_logits, last_linear, pos_weight, readout_loss,
                       train_heads)
from .recipe import RealTrainConfig
from .views import aspect_of, augment, load_image, view_of


def decode_all(samples: list[Sample], size: int, cfg: RealTrainConfig) -> np.ndarray:
    """Every image once, resized and cropped as served: (N, S, S, 3) uint8 (about 1 GB for
    the shared data at 224 px), so that epochs only augment."""
    return np.stack([np.asarray(load_image(s.path, size, aspect_of(s, cfg)), dtype=np.uint8) for s in samples])


class AugmentedImages(torch.utils.data.Dataset):
    """Image ``rows[j]`` freshly augmented for ``epoch``: the draw depends only on (seed,
    image, epoch), not on which loader worker makes it, so a run is a function of its seed."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, seed: int, epoch: int):
        self.images, self.rows, self.seed, self.epoch = images, rows, seed, epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int]:
        i = int(self.rows[j])
        rng = np.random.default_rng([self.seed, i, 1000 + self.epoch])
        img = augment(Image.fromarray(self.images[i]), rng)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()), i


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def deterministic_cuda(device: torch.device) -> None:
    """cuBLAS needs a fixed workspace to be deterministic; some CUDA backward kernels
    (adaptive average pooling's, used by the hypercolumn) have no deterministic version, so
    on CUDA torch warns instead of refusing: such a build is reproducible only as far as
    those kernels allow (the CPU build is exactly)."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def finetune_images(model: BCCPatternNet, images: np.ndarray, rows: np.ndarray, dx: torch.Tensor,
                    bcc: torch.Tensor, cfg, device: torch.device, seed: int,
                    progress: Callable[[int], None] = lambda n: None) -> None:
    """Stage 2: blocks ``cfg.image_from``.. and the BCC and diagnosis read-outs, AdamW at
    ``cfg.image_lr`` (one-cycle), ``cfg.image_epochs`` epochs over the training images
    ``rows``, each step a fresh augmentation; the exact fits' losses (class-weighted
    softmax, positive-weighted BCC) and their L2 terms. ``progress`` counts steps."""
    model.to(device).eval()
    train_dx, train_bcc = dx[rows], bcc[rows]
    dx_weight = class_weights(train_dx, len(DIAGNOSES)).to(device)
    bcc_pos = pos_weight(train_bcc[train_bcc >= 0]).to(device)
    dx_head, bcc_head = last_linear(model.diagnosis_head), last_linear(model.bcc_head)
    params = (list(model.features[cfg.image_from:].parameters()) + list(dx_head.parameters())
              + list(bcc_head.parameters()))
    opt = torch.optim.AdamW(params, lr=cfg.image_lr, weight_decay=1e-4)
    per_epoch = max(1, math.ceil(len(rows) / cfg.image_batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.image_lr,
                                                total_steps=per_epoch * cfg.image_epochs, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    dx, bcc = dx.to(device), bcc.to(device)
    with torch.enable_grad():
        for epoch in range(cfg.image_epochs):
            loader = torch.utils.data.DataLoader(
                AugmentedImages(images, rows, seed, epoch), batch_size=cfg.image_batch,
                sampler=torch.utils.data.RandomSampler(range(len(rows)), generator=gen),
                num_workers=cfg.image_workers, pin_memory=device.type == "cuda")
            for batch, idx in loader:
                x = to_unit(batch.numpy()).to(device, non_blocking=True).contiguous(
                    memory_format=torch.channels_last)
                idx = idx.to(device)
                with _autocast(device):
                    pooled = model.pooled(x)
                loss = readout_loss(model.standardise(pooled.float()), dx[idx], bcc[idx], dx_head, bcc_head,
                                    cfg, dx_weight, bcc_pos)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                progress(1)
    model.eval()


def pooled_views(model: BCCPatternNet, images: np.ndarray, cfg, device: torch.device) -> torch.Tensor:
    """(views, N, C) pooled vectors of every image through the (tuned) network, on the CPU:
    the build's cached views (``views.view_of``), for the exact refit of the heads."""
    return torch.stack([
        pooled_of(model, images if view == 0 else
                  np.stack([np.asarray(view_of(Image.fromarray(a), i, view, cfg)) for i, a in enumerate(images)]),
                  device)
        for view in range(cfg.views)])


def pooled_of(model: BCCPatternNet, images: np.ndarray, device: torch.device, batch: int = 64) -> torch.Tensor:
    """Pooled vectors of (N, S, S, 3) uint8 images, ``batch`` at a time, as float32 on the CPU."""
    out = []
    with torch.inference_mode(), _autocast(device):
        for start in range(0, len(images), batch):
            x = to_unit(images[start:start + batch]).to(device).contiguous(memory_format=torch.channels_last)
            out.append(model.pooled(x).float().cpu())
    return torch.cat(out)


def out_of_fold_images(model: BCCPatternNet, samples: list[Sample], feats: Features, labels: Labels,
                       folds: np.ndarray, cfg: RealTrainConfig,
                       progress: Callable[[int], None]) -> tuple[np.ndarray, np.ndarray]:
    """``out_of_fold`` with stage 2 on images (``image_finetune.py``): per fold, and then for
    all images, the read-outs fitted on the frozen features (one solve, as the CPU build),
    the backbone fine-tuned on the fold's training images, and every head refitted exactly
    on the tuned network's views of them; the fold's images are then predicted by its tuned
    network. The model is left tuned on every image, on the CPU."""
    from .synthetic import generate

    device = torch.device(cfg.device)
    deterministic_cuda(device)
    size = model.arch.input_size
    images = decode_all(samples, size, cfg)
    drawn = np.asarray(generate(cfg.synthetic, cfg.seed + 7, size).images) if cfg.synthetic else None
    n = len(samples)
    targets = np.zeros((n, 1 + len(PATTERNS)), np.float32)
    diagnoses = np.zeros((n, len(DIAGNOSES)), np.float32)
    sets = [torch.from_numpy(folds != k) for k in range(cfg.folds)] + [torch.ones(n, dtype=torch.bool)]
    readouts = fit_readouts(feats.real, labels, sets, cfg)
    imagenet = {k: v.clone() for k, v in model.features.state_dict().items()}
    for k, (rows, readout) in enumerate(zip(sets, readouts)):
        model.cpu()
        model.features.load_state_dict(imagenet)     # every fold starts from ImageNet
        readout.install(model)
        finetune_images(model, images, np.flatnonzero(rows.numpy()), labels.dx, labels.bcc, cfg,
                        device, cfg.seed + 101 * (k + 1), progress)
        tuned = pooled_views(model, images, cfg, device)
        synthetic = feats.synthetic if drawn is None else pooled_of(model, drawn, device)
        model.cpu()
        train_heads(model, tuned[:, rows], labels.subset(rows), synthetic, feats.synthetic_patterns, cfg,
                    cfg.seed + 101 * (k + 1))
        if rows is not sets[-1]:
            test = ~rows
            targets[test.numpy()], diagnoses[test.numpy()] = head_logits(model, tuned[0, test])
    model.cpu().eval()
    return targets, diagnoses
