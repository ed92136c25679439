"""Side-by-side timing of inference, our full analysis and captum's Grad-CAM.

All three run in one process on the same model and the same preprocessed batch, one after
the other in each round, so machine noise hits them alike; medians over rounds are reported
with their ratios. Image decoding is outside all three (it is the same for each).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from ..diagnosis.engine import Engine
from ..diagnosis.preprocess import to_unit
from ..modelling.synthetic import generate


def captum_maps(engine: Engine, x: torch.Tensor) -> torch.Tensor:
    """The reference: captum LayerGradCam on the last feature map, one call per target."""
    from captum.attr import LayerGradCam

    model = engine.model
    lgc = LayerGradCam(model, model.map_layer())
    x = x.to(engine.device).contiguous(memory_format=torch.channels_last)
    maps = [lgc.attribute(x, target=t, relu_attributions=True) for t in range(8)]
    raw = torch.cat(maps, dim=1)
    return F.interpolate(raw, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _jpeg(rgb) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _sync(engine: Engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize()


def _analyse(engine: Engine, images: list[bytes], gate: bool):
    engine.scope_enabled = gate
    try:
        return engine.analyse(images)
    finally:
        engine.scope_enabled = True


def bench_explain(engine: Engine, batch: int = 32, rounds: int = 5, seed: int = 0) -> dict:
    drawn = generate(batch, seed, engine.input_size).images
    x = to_unit(drawn)
    jpegs = [_jpeg(rgb) for rgb in drawn]
    runs = {
        "forward": lambda: engine.forward(x),
        "full": lambda: engine.explain_tensors(x),
        "captum": lambda: captum_maps(engine, x),
        # The engine's whole analysis from bytes, with the scope gate (intake's pixel screen,
        # the read-out, the verdict) and without it.
        "analyse": lambda: _analyse(engine, jpegs, True),
        "analyse_no_gate": lambda: _analyse(engine, jpegs, False),
    }
    if engine.device.type == "cpu":
        # The whole batch in one pass, against the engine's passes of CPU_PASS images.
        runs["full_one_pass"] = lambda: engine.explain_tensors(x, pass_size=len(x))
    for fn in runs.values():          # warm-up: allocator, kernels, captum hooks
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    paired = ("analyse", "analyse_no_gate")
    for r in range(rounds):
        # The gate pair back to back, in alternating order: whichever ran after captum (its
        # allocations) or first in a round would otherwise carry that cost (measured: +20%).
        order = [n for n in runs if n not in paired] + list(paired if r % 2 == 0 else paired[::-1])
        for name in order:
            _sync(engine)
            t = time.perf_counter()
            runs[name]()
            _sync(engine)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ours = engine.explain_tensors(x)
    ref = captum_maps(engine, x).detach()
    up_ref = ref / ref.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return {
        "batch": batch, "rounds": rounds, "device": str(engine.device),
        "threads": torch.get_num_threads(), "model": engine.model_info,
        "input_size": engine.input_size,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "images_per_s": {k: round(batch / v, 1) for k, v in med.items()},
        "full_over_forward": round(med["full"] / med["forward"], 3),
        "captum_over_full": round(med["captum"] / med["full"], 2),
        "gate_overhead": round(med["analyse"] / med["analyse_no_gate"] - 1, 4),
        **({"one_pass_over_passes": round(med["full_one_pass"] / med["full"], 2)} if "full_one_pass" in med else {}),
        "max_abs_diff_normalised_vs_captum": float((ours.normalised.cpu() - up_ref.cpu()).abs().max()),
        "goals": {"full_over_forward_max": 1.25, "captum_over_full_min": 5.0, "gate_overhead_max": 0.10},
    }
