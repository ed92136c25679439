"""Fitting the referral triage to clinical targets, on out-of-fold predictions.

What the queue needs is one calibrated probability that a lesion is malignant or
premalignant, and tier thresholds a service can defend: "at least 97% of malignant lesions
are seen (routine or urgent), at least 90% of melanomas urgent, and no more urgent cases
than that takes". The build chooses how to combine the BCC and diagnosis heads (the
combination whose out-of-fold AUC is highest), calibrates it (Platt), fits both thresholds
to the targets, and reports per tier the share of all cases, the sensitivity per malignant
class and the low tier's NPV, with bootstrap intervals (cases resampled, thresholds refitted
each time, so the intervals include the fitting). ``risk.Triage`` serves the result.
"""

from __future__ import annotations

import math

import numpy as np

from ..diagnosis.metrics import auc_with_ci
from ..risk import COMBINATIONS, MALIGNANT, Triage, combine
from .datasets import DIAGNOSES
from .validation import fit_calibration

BOOTSTRAP = 500
CURVE_POINTS = 101


def threshold_for(p: np.ndarray, share: float) -> float:
    """The highest threshold t with at least ``share`` of ``p`` at or above it."""
    if not len(p):
        return 1.0
    s = np.sort(p)
    k = len(s) - int(np.ceil(share * len(s)))
    return float(s[max(k, 0)])


def _combined(name: str, p_bcc: np.ndarray, p_dx: np.ndarray) -> np.ndarray:
    return np.array([combine(name, b, dict(zip(DIAGNOSES, row))) for b, row in zip(p_bcc, p_dx)])


def _tiers(p: np.ndarray, dx: np.ndarray, routine: float, urgent: float) -> dict:
    malignant = np.isin(dx, [DIAGNOSES.index(c) for c in MALIGNANT])
    urgent_m, seen = p >= urgent, p >= routine
    out = {"share": {"urgent": float(urgent_m.mean()), "routine": float((seen & ~urgent_m).mean()),
                     "low": float((~seen).mean())},
           "urgent_sensitivity": {}, "seen_sensitivity": {}}
    for code in MALIGNANT:
        is_c = dx == DIAGNOSES.index(code)
        out["urgent_sensitivity"][code] = float(urgent_m[is_c].mean()) if is_c.any() else None
        out["seen_sensitivity"][code] = float(seen[is_c].mean()) if is_c.any() else None
    out["urgent_sensitivity"]["malignant"] = float(urgent_m[malignant].mean())
    out["seen_sensitivity"]["malignant"] = float(seen[malignant].mean())
    low = ~seen
    out["low_npv"] = float((~malignant[low]).mean()) if low.any() else None
    return out


def _curve(p: np.ndarray, dx: np.ndarray) -> dict:
    """The workload-sensitivity curve: cases sent first in order of p, against the share of
    melanomas and of malignant lesions among them."""
    order = np.argsort(-p)
    mel = (dx == DIAGNOSES.index("mel"))[order]
    mal = np.isin(dx, [DIAGNOSES.index(c) for c in MALIGNANT])[order]
    points = []
    for share in np.linspace(0, 1, CURVE_POINTS):
        n = int(round(share * len(p)))
        points.append([round(float(share), 3), round(float(mel[:n].sum() / max(mel.sum(), 1)), 4),
                       round(float(mal[:n].sum() / max(mal.sum(), 1)), 4)])
    return {"columns": ["share_sent_first", "melanoma_sensitivity", "malignant_sensitivity"], "points": points}


def _fit(p: np.ndarray, dx: np.ndarray, targets: dict) -> tuple[float, float]:
    mel = dx == DIAGNOSES.index("mel")
    malignant = np.isin(dx, [DIAGNOSES.index(c) for c in MALIGNANT])
    urgent = threshold_for(p[mel], targets["melanoma_urgent"])
    routine = min(threshold_for(p[malignant], targets["malignant_seen"]), urgent)
    return routine, urgent


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def fit_triage(p_bcc: np.ndarray, p_dx: np.ndarray, dx: np.ndarray, targets: dict, seed: int) -> dict:
    """The card's ``triage`` section from calibrated out-of-fold head outputs.

    p_bcc: (N,) BCC head; p_dx: (N, 7) diagnosis head; dx: (N,) index into DIAGNOSES, -1
    where unknown (left out)."""
    known = dx >= 0
    p_bcc, p_dx, dx = p_bcc[known], p_dx[known], dx[known]
    malignant = np.isin(dx, [DIAGNOSES.index(c) for c in MALIGNANT]).astype(int)
    candidates = {name: auc_with_ci(malignant, _combined(name, p_bcc, p_dx), seed=seed)["auc"]
                  for name in COMBINATIONS}
    best = max(COMBINATIONS, key=lambda n: candidates[n])
    raw = np.clip(_combined(best, p_bcc, p_dx), 1e-6, 1 - 1e-6)
    cal = fit_calibration(np.log(raw / (1 - raw)), malignant)
    # Rounded as the card stores them, before anything is fitted on them.
    cal = {"scale": round(float(cal["scale"]), 6), "bias": round(float(cal["bias"]), 6)}
    triage = Triage(best, cal["scale"], cal["bias"], 0.0, 1.0)
    p = np.array([triage.probability(b, dict(zip(DIAGNOSES, row))) for b, row in zip(p_bcc, p_dx)])
    # Floored as the card stores them: a threshold rounded up could drop the last case in.
    routine, urgent = (math.floor(t * 1e6) / 1e6 for t in _fit(p, dx, targets))
    served = Triage(best, triage.scale, triage.bias, routine, urgent)
    achieved = _tiers(p, dx, routine, urgent)

    rng = np.random.default_rng(seed)
    draws: dict[str, list] = {}
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, len(p), len(p))
        r, u = _fit(p[i], dx[i], targets)
        for k, v in _flat({"thresholds": {"routine": r, "urgent": u}, **_tiers(p[i], dx[i], r, u)}).items():
            if v is not None:
                draws.setdefault(k, []).append(v)
    ci = {k: [round(float(np.quantile(v, 0.025)), 4), round(float(np.quantile(v, 0.975)), 4)]
          for k, v in draws.items()}

    curve = _curve(p, dx)
    scores = np.array([served.score(v) for v in p])
    met = {"melanoma_urgent": achieved["urgent_sensitivity"]["mel"] >= targets["melanoma_urgent"],
           "malignant_seen": achieved["seen_sensitivity"]["malignant"] >= targets["malignant_seen"]}
    rounded = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in _flat(achieved).items()}
    return {
        "combination": best,
        "candidates_auc": candidates,
        "calibration": cal,
        "targets": dict(targets),
        "thresholds": {"routine": routine, "urgent": urgent},
        "figures": rounded,
        "ci95": ci,
        "met": met,
        "ordering_auc": {"malignancy_probability": auc_with_ci(malignant, p, seed=seed)["auc"],
                         "queue_neutral_answers": auc_with_ci(malignant, scores, seed=seed)["auc"]},
        "curve": curve,
        "validation": f"out-of-fold predictions of {len(p)} images with a diagnosis; Platt "
                      f"calibration; {BOOTSTRAP} bootstrap resamples with the thresholds refitted",
    }


def on_dataset(engine, samples, triage_section: dict, batch: int = 32, progress=None) -> dict:
    """The card's triage (thresholds as served, not refitted) on a labelled folder, through the
    engine: what ``model triage --dataset`` prints. Images the scope gate refuses are counted
    apart; the figures are over the images it passed."""
    served = Triage.from_card(triage_section)
    p, dx, refused = [], [], 0
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        for s, r in zip(chunk, engine.analyse([s.path.read_bytes() for s in chunk])):
            if s.dx not in DIAGNOSES or not r.diagnosis_probabilities:
                continue
            if r.scope is not None and not r.scope.applicable:
                refused += 1
                continue
            p.append(served.probability(r.bcc_probability, r.diagnosis_probabilities))
            dx.append(DIAGNOSES.index(s.dx))
        if progress:
            progress(len(chunk))
    p, dx = np.array(p), np.array(dx)
    malignant = np.isin(dx, [DIAGNOSES.index(c) for c in MALIGNANT])
    scores = np.array([served.score(v) for v in p])
    achieved = _tiers(p, dx, served.routine_at, served.urgent_at)
    return {"images": len(p), "refused_by_scope_gate": refused, "combination": served.combination,
            "targets": triage_section.get("targets", {}), "thresholds": triage_section["thresholds"],
            "figures": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in _flat(achieved).items()},
            "ordering_auc": {"malignancy_probability": auc_with_ci(malignant, p)["auc"],
                             "queue_neutral_answers": auc_with_ci(malignant, scores)["auc"]},
            "curve": _curve(p, dx)}


def report(section: dict) -> str:
    """Per tier: share of all cases; sensitivity per malignant class; the low tier's NPV."""
    f, ci = section["figures"], section.get("ci95", {})

    def v(key: str) -> str:
        value = f.get(key)
        if value is None:
            return "n/a"
        return f"{value:.1%}" + (f" [{ci[key][0]:.1%}, {ci[key][1]:.1%}]" if key in ci else "")
    t, th = section.get("targets", {}), section["thresholds"]
    lines = [f"combination: {section['combination']}; tiers: routine from p = {th['routine']:.4f}, "
             f"urgent from p = {th['urgent']:.4f}"]
    if "images" in section:
        lines.append(f"{section['images']} images "
                     f"({section.get('refused_by_scope_gate', 0)} refused by the scope gate)")
    lines.append(f"{'tier':8} {'share of cases':>28}")
    for tier in ("urgent", "routine", "low"):
        lines.append(f"{tier:8} {v('share.' + tier):>28}")
    lines.append(f"{'class':10} {'urgent':>28} {'routine or urgent':>28}")
    for code in (*MALIGNANT, "malignant"):
        lines.append(f"{code:10} {v('urgent_sensitivity.' + code):>28} {v('seen_sensitivity.' + code):>28}")
    lines.append(f"low tier NPV: {v('low_npv')}")
    for key, name in (("melanoma_urgent", "urgent_sensitivity.mel"), ("malignant_seen", "seen_sensitivity.malignant")):
        if key in t and f.get(name) is not None:
            gap = f[name] - t[key]
            lines.append(f"target {key} {t[key]:.0%}: " + ("met" if gap >= 0 else f"missed by {-gap:.1%}"))
    o = section.get("ordering_auc", {})
    if o:
        lines.append(f"ordering AUC (malignant vs benign): malignancy probability {o['malignancy_probability']}, "
                     f"queue with neutral answers {o['queue_neutral_answers']}")
    return "\n".join(lines)


def curve_png(section: dict, path, title: str) -> str:
    """The workload-sensitivity curve: share of cases sent first against the share of
    melanomas and of all malignant lesions among them, with the tiers marked."""
    from pathlib import Path

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = np.array(section["curve"]["points"])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot(pts[:, 0], pts[:, 1], label="melanomas")
    ax.plot(pts[:, 0], pts[:, 2], label="all malignant / premalignant")
    f = section["figures"]
    urgent = f["share.urgent"]
    seen = urgent + f["share.routine"]
    ax.axvline(urgent, color="tab:red", linestyle="--", label=f"urgent tier ({urgent:.0%} of cases)")
    ax.axvline(seen, color="tab:orange", linestyle=":", label=f"urgent + routine ({seen:.0%})")
    for key, style in (("melanoma_urgent", "tab:blue"), ("malignant_seen", "tab:green")):
        if key in section.get("targets", {}):
            ax.axhline(section["targets"][key], color=style, linewidth=0.6, linestyle="-.")
    ax.set(xlabel="share of cases, highest risk first", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)
