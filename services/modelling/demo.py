"""Training the demo model on synthetic dermoscopy, on a 2-core CPU in under 15 minutes.

The seed paper fine-tunes ImageNet weights in three stages. The only ImageNet weights
reachable here are an int8 TFLite file, so the demo model trains from scratch, in one stage:
AdamW with a one-cycle schedule, dropout 0.3, BCE for the BCC head and focal loss for the
imbalanced patterns, flips/rotations and mild blur as augmentation.

Because the synthetic cases come with pattern masks, training adds an auxiliary dense loss:
a 1x1 convolution on the last feature map predicts each pattern's mask at feature
resolution. It teaches the backbone to keep pattern evidence where the pattern is, which is
what Grad-CAM reads; without it, ~800 CPU steps from scratch give maps that barely locate
patterns. The auxiliary layer is discarded: the served network is unchanged, and the card
says the model was trained this way.

Per-pattern thresholds are then chosen on a separate validation set (best F1 each) and
stored in the model card.
Everything depends only on the seed: data generation, initialisation, batch order and
augmentation use their own seeded generators, and torch runs single-process deterministic
kernels.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..diagnosis import artifact
from ..diagnosis.gradcam import signed_cams
from ..diagnosis.metrics import f1, region_stats
from ..diagnosis.network import INPUT_NORMS, Architecture, BCCPatternNet
from ..diagnosis.patterns import PATTERNS
from ..diagnosis.preprocess import PREPROCESSING_VERSION, to_unit
from . import reproducible
from .synthetic import SyntheticSet, concat, generate

DEMO_NAME = "dermatriage-demo-bcc"
DEMO_VERSION = "1.0.0"
VALIDATION_SEED_OFFSET = 1_000_003
DEMO_INTENDED_USE = (
    "DEMONSTRATION ONLY. Trained on synthetic images drawn by DermaTriage's generator, not on "
    "patients. Not for clinical use: its outputs say nothing about real lesions. It exists so "
    "the pipeline, explanations and audit trail can be run and tested end to end.")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    n_train: int = 5000
    n_val: int = 600
    # 6, not 5: on an AMD EPYC host the 5-epoch build (same seed, different float kernels)
    # reached mean-inside 0.56 on one evaluation seed, under the 0.57 target; 6 epochs gave
    # 0.60 / 0.62 inside and 0.14 / 0.15 outside on the two test seeds (~20% longer build).
    epochs: int = 6
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    focal_gamma: float = 0.0       # 0: plain BCE (learned faster than focal in our runs)
    pattern_loss_weight: float = 3.0
    mask_loss_weight: float = 1.0
    mask_pos_weight: float = 10.0  # pattern cells are ~3% of all cells
    # Penalty on the BCC map's mass off the lesion. Off by default: in our CPU budget it
    # trades pattern-map alignment for BCC-map focus (weight 0.3: BCC map on the lesion 0.35
    # -> 0.97, mean inside pattern masks 0.64-0.67 -> 0.58-0.60; weight 1.0: 0.99, but
    # 0.569 on one seed, below the 0.57 target). Worth turning on with more training steps.
    bcc_focus_weight: float = 0.0
    width_mult: float = 0.5
    input_size: int = 160
    output_stride: int = 16
    threads: int = 2


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float, alpha: float = 0.5) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017): down-weights easy negatives of rare patterns.
    With gamma = 0 (and alpha 0.5) it is plain binary cross-entropy."""
    if gamma == 0:
        return F.binary_cross_entropy_with_logits(logits, targets)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    a_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (2 * a_t * (1 - p_t) ** gamma * ce).mean()


def augment(x: torch.Tensor, masks: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Dihedral flips/rotations (lesions have no up), brightness, occasional blur.

    The geometric part is applied to the (feature-resolution) masks too."""
    b = x.shape[0]
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    masks = torch.rot90(masks, k, dims=(2, 3))
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    masks = torch.where(flip[:, None, None, None], masks.flip(3), masks)
    gain = 1 + 0.15 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    mean = torch.tensor(INPUT_NORMS["imagenet"][0]).view(1, 3, 1, 1)
    x = mean + (x - mean) * gain          # contrast around the mean, as on normalised input
    blur = torch.rand(b, generator=gen) < 0.2
    if blur.any():
        kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
        k2 = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
        blurred = F.conv2d(x, k2, padding=1, groups=3)
        x = torch.where(blur[:, None, None, None], blurred, x)
    return x, masks


def off_lesion_share(bcc_logit: torch.Tensor, pooled: torch.Tensor, features: torch.Tensor,
                     lesion: torch.Tensor) -> torch.Tensor:
    """Share of the BCC target's Grad-CAM mass that lies off the lesion, differentiably.

    Without it the BCC head learns partly from the skin around lesions (its maps light the
    background), which is no explanation a dermatologist can use. The map is the served one
    (gradcam.signed_cams), from the heads' gradient with respect to the pooled vector."""
    grads = torch.autograd.grad(bcc_logit.sum(), pooled, create_graph=True)[0]
    cam = torch.relu(signed_cams(features, grads[:, None, :]))[:, 0].flatten(1)
    on_lesion = region_stats(cam, lesion.flatten(1))["relevance_mass"]
    # An empty map puts nothing off the lesion (and has no gradient to follow anyway).
    return torch.where(cam.sum(1) > 0, 1 - on_lesion, torch.zeros_like(on_lesion)).mean()


def feature_masks(pattern_masks: np.ndarray, stride: int) -> torch.Tensor:
    """(N, 7, S, S) bool -> (N, 7, S/stride, S/stride) share of each cell covered."""
    t = torch.from_numpy(pattern_masks).float()
    return F.avg_pool2d(t.flatten(0, 1)[:, None], stride).view(t.shape[0], t.shape[1], *
                                                               (s // stride for s in t.shape[2:]))


def generate_parallel(n: int, seed: int, size: int, workers: int, progress) -> "SyntheticSet":
    """Same cases as ``generate(n, seed, size)`` (each depends only on its index), drawn in
    several processes."""
    from concurrent.futures import ProcessPoolExecutor

    chunk = 250
    starts = list(range(0, n, chunk))
    if workers <= 1:
        parts = []
        for s in starts:
            parts.append(generate(min(chunk, n - s), seed, size, start=s))
            progress(len(parts[-1]))
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(generate, min(chunk, n - s), seed, size, s) for s in starts]
            parts = []
            for f in futures:
                parts.append(f.result())
                progress(len(parts[-1]))
    return concat(parts)


def best_thresholds(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    out = {}
    for j, code in enumerate(PATTERNS):
        f1s = [f1(labels[:, j], probs[:, j] >= t) for t in grid]
        out[code] = float(grid[int(np.argmax(f1s))])
    return out


def predict(model: BCCPatternNet, images: np.ndarray, batch: int = 64) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = to_unit(images[i:i + batch]).contiguous(memory_format=torch.channels_last)
            out.append(torch.sigmoid(model(x)))
    return torch.cat(out).numpy()


def build_demo(out: Path, config: TrainConfig = TrainConfig(), progress: bool = True,
               log=print) -> artifact.ModelCard:
    from tqdm import tqdm

    started = time.perf_counter()
    reproducible(config.seed, config.threads)
    size = config.input_size
    total_images = config.n_train + config.n_val
    with tqdm(total=total_images, desc="generating synthetic images", unit="img",
              disable=not progress) as bar:
        train = generate_parallel(config.n_train, config.seed, size, config.threads, bar.update)
        val = generate_parallel(config.n_val, config.seed + VALIDATION_SEED_OFFSET, size,
                                config.threads, bar.update)
    arch = Architecture(width_mult=config.width_mult, output_stride=config.output_stride,
                        input_size=size)
    model = BCCPatternNet(arch).to(memory_format=torch.channels_last)
    mask_head = torch.nn.Conv2d(model.features[-1][0].out_channels, len(PATTERNS), 1)
    stride = config.output_stride
    # Pattern masks plus, as the last channel, the lesion mask: all at feature resolution.
    m_all = feature_masks(np.concatenate([train.pattern_masks, train.lesion_masks[:, None]], 1), stride)
    x_all = to_unit(train.images)
    y_bcc = torch.from_numpy(train.bcc.astype(np.float32))[:, None]
    y_pat = torch.from_numpy(train.patterns.astype(np.float32))
    steps_per_epoch = math.ceil(config.n_train / config.batch_size)
    opt = torch.optim.AdamW(list(model.parameters()) + list(mask_head.parameters()),
                            lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr,
                                                total_steps=steps_per_epoch * config.epochs,
                                                pct_start=0.2)
    gen = torch.Generator().manual_seed(config.seed)
    pos_weight = torch.tensor(config.mask_pos_weight)
    with tqdm(total=steps_per_epoch * config.epochs, desc="training", unit="step",
              disable=not progress) as bar:
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(config.n_train, generator=gen)
            for s in range(steps_per_epoch):
                idx = order[s * config.batch_size:(s + 1) * config.batch_size]
                x, m = augment(x_all[idx], m_all[idx], gen)
                features = model.embed(x.contiguous(memory_format=torch.channels_last))
                pooled = model.pool(features)
                logits = model.heads(pooled)
                loss = (F.binary_cross_entropy_with_logits(logits[:, :1], y_bcc[idx])
                        + config.pattern_loss_weight
                        * focal_loss(logits[:, 1:], y_pat[idx], config.focal_gamma)
                        + config.mask_loss_weight
                        * F.binary_cross_entropy_with_logits(mask_head(features), m[:, :-1],
                                                             pos_weight=pos_weight))
                if config.bcc_focus_weight:
                    loss = loss + config.bcc_focus_weight * off_lesion_share(
                        logits[:, 0], pooled, features, m[:, -1])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    probs = predict(model, val.images)
    thresholds = best_thresholds(probs[:, 1:], val.patterns)
    val_metrics = {
        "bcc_accuracy": round(float(np.mean((probs[:, 0] >= 0.5) == val.bcc)), 4),
        "pattern_f1": {c: round(f1(val.patterns[:, j], probs[:, 1 + j] >= thresholds[c]), 4)
                       for j, c in enumerate(PATTERNS)},
    }
    elapsed = time.perf_counter() - started
    card = artifact.ModelCard(
        name=DEMO_NAME, version=DEMO_VERSION, weights_sha256="", architecture=arch.to_dict(),
        preprocessing_version=PREPROCESSING_VERSION, patterns=list(PATTERNS),
        thresholds=thresholds, bcc_threshold=0.5,
        training_data={
            "source": "synthetic (services/modelling/synthetic.py)",
            "train_images": config.n_train, "validation_images": config.n_val,
            "seed": config.seed, "validation_seed": config.seed + VALIDATION_SEED_OFFSET,
            "real_patient_images": 0,
            "supervision": "image labels (BCC, 7 patterns) plus pattern masks through an "
                           "auxiliary 1x1 convolution on the last feature map, discarded "
                           "after training",
        },
        metrics={"validation": val_metrics, "training_seconds": round(elapsed, 1),
                 "training_config": asdict(config)},
        intended_use=DEMO_INTENDED_USE, clinical_use=False,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    artifact.save(model, card, Path(out))
    log(f"demo model written to {out} in {elapsed:.0f} s; validation {val_metrics}")
    return card
