"""Feature extraction: every view of every image through the frozen ImageNet backbone once,
pooled as the heads read it, and kept (optionally on disk) so that fitting never touches an
image again.

Why batches of 16 and not more: the 224-px activations of a large batch are fresh memory on
every pass, and page faults took a third of the CPU on 2 cores; below that, each pass's
threads wait (and sleep) at every layer, which smaller batches pay more often
(``RealTrainConfig.extract_batch``; docs/experiments.md, "Extraction").
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..diagnosis.network import BCCPatternNet
from ..diagnosis.patterns import PATTERNS
from ..diagnosis.preprocess import PREPROCESSING_VERSION, to_unit
from .datasets import Sample
from .recipe import RealTrainConfig
from .views import aspect_of, load_image, view_of


@dataclass
class Features:
    """Cached pooled maps: (views, N, C) for the real images, (M, C) for synthetic ones."""

    real: torch.Tensor
    synthetic: torch.Tensor
    synthetic_patterns: np.ndarray       # (M, 7)
    seconds: float = 0.0
    # Stage 2's input: the output of block ``finetune_from - 1``, half precision,
    # (views, N, C, H, W) and (M, C, H, W); empty when the backbone stays frozen.
    inner: torch.Tensor | None = None
    synthetic_inner: torch.Tensor | None = None
    # With stage 2 and the lesion pooling: the lesion's share of each map cell,
    # (views, N, 1, h, w) and (M, 1, h, w), which the tail's pooling needs again.
    cells: torch.Tensor | None = None
    synthetic_cells: torch.Tensor | None = None


def extract(model: BCCPatternNet, samples: list[Sample], cfg: RealTrainConfig,
            progress: Callable[[int], None]) -> Features:
    from .synthetic import generate

    started = time.perf_counter()
    size = model.arch.input_size
    model.eval()
    kept: list[torch.Tensor] = []
    kept_cells: list[torch.Tensor] = []
    hook = (model.features[cfg.finetune_from - 1].register_forward_hook(
        lambda _m, _i, out: kept.append(out.half().contiguous())) if cfg.finetune_from else None)

    def pooled(batch) -> torch.Tensor:
        x = to_unit(np.stack(batch)).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            features = model.embed(x)
            cells = model.lesion_cells(x, features)
            if hook is not None and cells is not None:
                kept_cells.append(cells)
            return model.pool(features, cells).float()

    def inner() -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if hook is None:
            return None, None
        out, cells = torch.cat(kept), (torch.cat(kept_cells) if kept_cells else None)
        kept.clear()
        kept_cells.clear()
        return out, cells

    views, inners, cells = [], [], []
    for view in range(cfg.views):
        out, batch = [], []
        for i, s in enumerate(samples):
            batch.append(np.asarray(view_of(load_image(s.path, size, aspect_of(s, cfg)), i, view, cfg), dtype=np.uint8))
            if len(batch) == cfg.extract_batch or i == len(samples) - 1:
                out.append(pooled(batch))
                progress(len(batch))
                batch = []
        views.append(torch.cat(out))
        kept_inner, kept_cells_of_view = inner()
        inners.append(kept_inner)
        cells.append(kept_cells_of_view)
    synthetic = torch.zeros(0, views[0].shape[1])
    synthetic_inner = synthetic_cells = None
    patterns = np.zeros((0, len(PATTERNS)), np.uint8)
    if cfg.synthetic:
        drawn = generate(cfg.synthetic, cfg.seed + 7, size)
        synthetic = torch.cat([pooled(list(drawn.images[i:i + cfg.extract_batch]))
                               for i in range(0, cfg.synthetic, cfg.extract_batch)])
        synthetic_inner, synthetic_cells = inner()
        patterns = drawn.patterns
        progress(cfg.synthetic)
    if hook is not None:
        hook.remove()
    return Features(torch.stack(views), synthetic, patterns, time.perf_counter() - started,
                    torch.stack(inners) if hook is not None else None, synthetic_inner,
                    torch.stack(cells) if hook is not None and model.arch.lesion else None, synthetic_cells)


def cache_key(samples: list[Sample], cfg: RealTrainConfig) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.path}|{s.path.stat().st_size}\n".encode())
    h.update(repr((cfg.seed, cfg.views, cfg.augmentation, cfg.synthetic, cfg.taps, cfg.centre, cfg.lesion,
                   cfg.finetune_from, cfg.ham_aspect, PREPROCESSING_VERSION)).encode())
    return h.hexdigest()


def load_cached(path: str | None, key: str) -> Features | None:
    if not path or not Path(path).is_file():
        return None
    stored = torch.load(path, weights_only=True)
    if stored.get("key") != key:
        return None
    return Features(stored["real"], stored["synthetic"], stored["synthetic_patterns"].numpy(),
                    float(stored["seconds"]), stored.get("inner"), stored.get("synthetic_inner"),
                    stored.get("cells"), stored.get("synthetic_cells"))


def save_cached(path: str | None, key: str, feats: Features) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "real": feats.real, "synthetic": feats.synthetic,
                    "synthetic_patterns": torch.from_numpy(np.asarray(feats.synthetic_patterns)),
                    "seconds": feats.seconds, "inner": feats.inner,
                    "synthetic_inner": feats.synthetic_inner, "cells": feats.cells,
                    "synthetic_cells": feats.synthetic_cells}, path)
