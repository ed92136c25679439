"""The real-image build (``dermatriage model train``): the shared data's features through the
frozen ImageNet backbone, the heads fitted fold by fold and on all images, the figures and
the card.

Where each step lives: the recipe (``recipe``), data and labels (``datasets``), the cached
views (``views``) and features (``features``), the read-outs and their solver
(``readouts``), cross-validation, calibration and operating points (``validation``), the
optional stage 2 (``cached_finetune`` on the CPU, ``image_finetune`` on a GPU). What the
recipe measured, and what was tried and dropped: docs/experiments.md.

Everything depends only on the seed: views, folds, initialisation and batch order use their
own seeded generators, and torch runs deterministic single-process kernels.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import config
from ..diagnosis import artifact
from ..diagnosis.network import BCCPatternNet
from ..diagnosis.patterns import PATTERNS
from ..diagnosis.preprocess import PREPROCESSING_VERSION
from . import reproducible
from .cached_finetune import one_solve
from .datasets import DIAGNOSES, Labels, Sample, load_dataset, shared_samples
from .features import cache_key, extract, load_cached, save_cached
from .image_finetune import out_of_fold_images
from .imagenet import SHARED_FILE, read_tflite
from .out_of_source import validate as out_of_source
from .recipe import (INTENDED_USE, MODEL_NAME, MODEL_VERSION, NOT_VALIDATED, VALIDATED, RealTrainConfig,
                     clinical_photos)
from .scope_gate import build_gate, load_clinical
from .triage import fit_triage
from .validation import assess, calibrated, grouped_folds, out_of_fold


def build_real(out: Path, cfg: RealTrainConfig = RealTrainConfig(), progress: bool = True,
               log=print) -> artifact.ModelCard:
    from tqdm import tqdm

    started = time.perf_counter()
    reproducible(cfg.seed, cfg.threads)
    samples = shared_samples(cfg.limit)
    for folder in cfg.extra_datasets:
        samples += load_dataset(Path(folder))[:cfg.limit]
    labels = Labels.of(samples, cfg.min_pattern_labels)
    model = BCCPatternNet(cfg.architecture())
    weights = read_tflite(config.shared_models_dir() / SHARED_FILE)
    model.features.load_state_dict(weights.features)
    model = model.to(memory_format=torch.channels_last).eval()
    total = len(samples) * cfg.views + cfg.synthetic
    key = cache_key(samples, cfg)
    feats = load_cached(cfg.feature_cache, key)
    if feats is None:
        with tqdm(total=total, desc="ImageNet features (cached views)", unit="img",
                  disable=not progress) as bar:
            feats = extract(model, samples, cfg, bar.update)
        save_cached(cfg.feature_cache, key, feats)
    folds = grouped_folds(samples, cfg.folds, cfg.seed)
    t0 = time.perf_counter()
    if cfg.image_finetune:
        steps = sum(math.ceil(int((folds != k).sum()) / cfg.image_batch) for k in range(cfg.folds))
        total = (steps + math.ceil(len(samples) / cfg.image_batch)) * cfg.image_epochs
        with tqdm(total=total, desc=f"fine-tuning on images ({cfg.folds} folds + all, {cfg.device})",
                  unit="step", disable=not progress) as bar:
            oof_t, oof_d = out_of_fold_images(model, samples, feats, labels, folds, cfg, bar.update)
    else:
        desc, total, unit = ((f"heads of {cfg.folds} folds + all images (one L-BFGS solve)", cfg.max_iter,
                              "eval") if one_solve(cfg, feats) else (f"{cfg.folds}-fold heads", cfg.folds, "fold"))
        with tqdm(total=total, desc=desc, unit=unit, disable=not progress) as bar:
            oof_t, oof_d = out_of_fold(model, feats, labels, folds, cfg,
                                       _capped(bar, total))
    heads_seconds = time.perf_counter() - t0
    result = assess(oof_t, oof_d, labels, cfg)
    triage = fit_triage(calibrated(oof_t[:, 0], result["calibration"]["BCC"]),
                        calibrated(oof_d, result["calibration"]["diagnosis"], softmax=True),
                        labels.dx.numpy(), config.triage_targets(), cfg.seed)
    t0 = time.perf_counter()
    elsewhere = None
    if cfg.out_of_source and len({s.collection for s in samples}) > 1:
        with tqdm(total=cfg.max_iter, desc="heads with each collection held out (one L-BFGS solve)",
                  unit="eval", disable=not progress) as bar:
            elsewhere = out_of_source(model, feats.real, samples, labels, cfg, result,
                                      _capped(bar, cfg.max_iter), out_of_fold=(oof_t, oof_d))
    t_gate = time.perf_counter()
    gate = None
    if model.scope_head is not None:
        photos = clinical_photos()
        with tqdm(total=len(load_clinical(photos)[:cfg.limit]), desc="scope gate (clinical photos, held-out folds)",
                  unit="img", disable=not progress) as bar:
            gate = build_gate(model, feats.real[0], samples, photos, cfg.extract_batch, cfg.seed,
                              bar.update, limit=cfg.limit)
    elapsed = time.perf_counter() - started
    timings = {"feature_extraction_s": round(feats.seconds, 1),
               "heads_s": round(heads_seconds, 1),  # the folds and the final fit
               "out_of_source_s": round(t_gate - t0, 1),
               "scope_gate_s": round(time.perf_counter() - t_gate, 1),
               "total_s": round(elapsed, 1)}
    card = make_card(cfg, samples, labels.labelled, result, timings)
    if elsewhere is not None:
        card.metrics["out_of_source"] = elsewhere
    if gate is not None:
        card.scope = gate
    card.triage = triage
    artifact.save(model, card, Path(out))
    f = result["figures"]
    patterns = "".join(f", {c} {f[c]['auc']}" for c in labels.labelled)
    log(f"real model written to {out} in {elapsed:.0f} s; out-of-fold AUC: BCC {f['BCC']['auc']}, "
        f"melanoma {f['diagnoses']['mel']['auc']}{patterns}; "
        f"balanced accuracy (7) {f['balanced_accuracy_7']}")
    t = triage["figures"]
    log(f"triage ({triage['combination']}): urgent {t['share.urgent']:.1%} of cases, melanomas urgent "
        f"{t['urgent_sensitivity.mel']:.1%}, malignant seen {t['seen_sensitivity.malignant']:.1%}, "
        f"low tier NPV {t['low_npv']:.4f}")
    if elsewhere is not None:
        worst = elsewhere["plan_with"]
        log("lowest with a collection held out: " + ", ".join(
            f"{t} {v['auc'] if 'auc' in v else v['value']} ({v['collection']})" for t, v in worst.items()))
    return card


def _capped(bar, total: int):
    """A progress callback for an L-BFGS solve, whose evaluations can exceed its iterations."""
    return lambda k: bar.update(k) if bar.n < total else None


def make_card(cfg: RealTrainConfig, samples: list[Sample], labelled: tuple[str, ...], result: dict,
              timings: dict) -> artifact.ModelCard:
    n_ham = sum(s.source == "ham10000" for s in samples)
    n_d7 = sum(s.source == "derm7pt" for s in samples)
    data = {
        "BCC": f"HAM10000 ({n_ham}) + Derm7pt ({n_d7}) images, BCC yes/no",
        "diagnoses": f"HAM10000 ({n_ham}) + Derm7pt images whose diagnosis maps to the 7 classes",
        "PN": f"Derm7pt ({n_d7}): pigment_network != absent (expert labels)",
        "AT": f"Derm7pt ({n_d7}): vascular_structures == arborizing (expert labels)",
    }
    n_extra = sum(s.source == "csv" for s in samples)
    validation = {"BCC": VALIDATED, "diagnoses": VALIDATED}
    for code in PATTERNS:
        validation[code] = VALIDATED if code in labelled else NOT_VALIDATED
        real = [s for s in samples if s.source == "csv" and getattr(s, code) is not None]
        if code not in labelled:
            data[code] = (f"synthetic drawings only ({cfg.synthetic} images); "
                          f"{len(real)} real labels (fewer than {cfg.min_pattern_labels} per class)"
                          if cfg.synthetic else "untrained: no real labels")
        elif real:
            data[code] = (data.get(code, "") + ("; " if code in data else "")
                          + f"{len(real)} reviewed images (readers' consensus, {', '.join(cfg.extra_datasets)})")
    return artifact.ModelCard(
        name=MODEL_NAME, version=MODEL_VERSION, weights_sha256="",
        architecture=cfg.architecture().to_dict(), preprocessing_version=PREPROCESSING_VERSION,
        patterns=list(PATTERNS), thresholds=result["thresholds"], bcc_threshold=result["bcc_threshold"],
        training_data={"sources": ["HAM10000 (ham10000-224)", "Derm7pt"]
                       + [f"labels.csv: {d} ({n_extra} images in all)" for d in cfg.extra_datasets],
                       "images": len(samples),
                       "per_target": data, "initialisation": f"ImageNet MobileNet-V2 ({SHARED_FILE})",
                       "views_per_image": cfg.views, "synthetic_images": cfg.synthetic},
        metrics={"out_of_fold": result["figures"],
                 "validation_scheme": f"{cfg.folds}-fold cross-validation, stratified by diagnosis, "
                                      "grouped by lesion; view 0 (unaugmented); 95% bootstrap intervals",
                 "timings_s": timings, "training_config": asdict(cfg)},
        intended_use=INTENDED_USE, clinical_use=False,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        calibration=result["calibration"], validation=validation,
        evidence_patterns=list(labelled), operating_points=result["operating_points"],
        diagnoses=list(DIAGNOSES),
    )
