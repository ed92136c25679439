"""``dermatriage bench ...``: benchmarks that print side-by-side ratios."""

from __future__ import annotations

import json
from pathlib import Path

import click

from services import config
from .model import _load_engine


@click.group()
def bench() -> None:
    """Benchmarks (figures measured side by side in one run)."""


@bench.command("explain")
@click.option("--batch", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None)
@click.option("--device", default=None)
@click.option("--json", "as_json", is_flag=True)
def explain(batch: int, rounds: int, model_path: Path | None, device: str | None, as_json: bool) -> None:
    """Forward-only vs full analysis (8 maps + numbers) vs captum LayerGradCam."""
    from services.diagnosis.benchmark import bench_explain

    engine = _load_engine(model_path or config.model_path(), device)
    result = bench_explain(engine, batch=batch, rounds=rounds)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        m = result["median_s"]
        click.echo(f"batch {batch} on {result['device']}: forward {m['forward']:.3f}s  "
                   f"full {m['full']:.3f}s  captum {m['captum']:.3f}s")
        click.echo(f"full_over_forward {result['full_over_forward']}  "
                   f"captum_over_full {result['captum_over_full']}")
