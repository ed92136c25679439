"""``dermatriage model ...``: build, evaluate and inspect diagnosis models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from services import config
from services.errors import DermaTriageError


def load_engine(path: Path, device: str | None):
    from services.diagnosis.engine import Engine

    try:
        return Engine.load(path, device)
    except DermaTriageError as exc:
        raise click.ClickException(exc.message) from exc


def building(module: str):
    """Import a model-building module; a clear message when the `build` extra is missing."""
    import importlib
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("services"):
            raise
        raise click.ClickException(
            f"{exc.name} is not installed: model building needs `pip install 'dermatriage[build]'` "
            "(make install does this)") from exc


@click.group()
def model() -> None:
    """Diagnosis models: build the demo, evaluate, show a card."""


@model.command("build-demo")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Weights file to write (default: DERMATRIAGE_MODEL_PATH).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--if-missing", is_flag=True, help="Do nothing when the model already exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def build_demo(out: Path | None, seed: int, if_missing: bool, quiet: bool) -> None:
    """Train the demo model on synthetic images (CPU, under 15 minutes). Not for clinical use."""
    demo = building("services.modelling.demo")

    out = out or config.model_path()
    if if_missing and out.exists():
        click.echo(f"demo model already present at {out}")
        return
    demo.build_demo(out, demo.TrainConfig(seed=seed), progress=not quiet, log=click.echo)


@model.command("evaluate")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Weights file (default: DERMATRIAGE_MODEL_PATH).")
@click.option("--synthetic", "n", type=click.IntRange(1, 100_000), required=True,
              help="Number of freshly generated synthetic images.")
@click.option("--seed", type=int, default=12345, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--json", "as_json", is_flag=True)
def evaluate(model_path: Path | None, n: int, seed: int, device: str | None, as_json: bool) -> None:
    """Diagnosis, pattern, clinical-rule and Grad-CAM alignment metrics."""
    evaluation = building("services.modelling.evaluation")
    engine = load_engine(model_path or config.model_path(), device)
    result = evaluation.evaluate(engine, n, seed)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    a = result.get("gradcam_alignment", {})
    click.echo(f"BCC accuracy {result['bcc']['accuracy']:.3f}  "
               f"(precision {result['bcc']['precision']:.3f}, recall {result['bcc']['recall']:.3f})")
    click.echo("pattern F1  " + "  ".join(f"{c} {v['f1']:.2f}" for c, v in result["patterns"].items()))
    click.echo(f"head/rule agreement {result['clinical_rule']['head_rule_agreement']:.3f}")
    if a:
        click.echo(f"Grad-CAM inside {a['mean_inside']:.3f}  outside {a['mean_outside']:.3f}  "
                   f"pointing {a['pointing_game']:.3f}  relevance mass {a['relevance_mass']:.3f}")


@model.command("card")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None)
def card(model_path: Path | None) -> None:
    """Print the model card after checking the weights against it."""
    engine = load_engine(model_path or config.model_path(), "cpu")
    json.dump(engine.card.to_dict(), sys.stdout, indent=2)
    click.echo()
