"""``dermatriage model ...``: build, evaluate and inspect diagnosis models."""

from __future__ import annotations

import json
import os
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
    """Diagnosis models: build, train, evaluate, show the card."""


@model.command("build-demo")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Weights file to write (default: var/models/demo-bcc.pt).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--if-missing", is_flag=True, help="Do nothing when the model already exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def build_demo(out: Path | None, seed: int, if_missing: bool, quiet: bool) -> None:
    """Train the demo model on synthetic images (CPU, under 15 minutes). Not for clinical use."""
    demo = building("services.modelling.demo")

    out = out or config.demo_model_path()
    if if_missing and out.exists():
        click.echo(f"demo model already present at {out}")
        return
    demo.build_demo(out, demo.TrainConfig(seed=seed), progress=not quiet, log=click.echo)


def _weights(text: str) -> tuple[float, ...]:
    """``--invariance``: non-negative weights separated by commas."""
    try:
        weights = tuple(float(part) for part in text.split(","))
    except ValueError:
        weights = ()
    if not weights or any(not 0 <= w <= 100 for w in weights):
        raise click.BadParameter(f"{text!r}: weights from 0 to 100 separated by commas, e.g. 0.05,0.0125",
                                 param_hint="--invariance")
    return weights


@model.command("train")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Weights file to write (default: var/models/real-bcc.pt).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--views", type=click.IntRange(1, 16), default=3, show_default=True,
              help="Versions of each image cached (view 0 unaugmented).")
@click.option("--augmentation", default="dihedral,dihedral+camera", show_default=True,
              help="How views 1, 2, ... are drawn, one per view separated by commas (the last "
                   "repeated): dihedral (one of the square's other 7 symmetries, lossless), "
                   "dihedral+camera (the same under another dermatoscope's colour) or full (the "
                   "seed's rotation, flips, blur, perspective and colour; docs/experiments.md).")
@click.option("--invariance", default="0.05,0.0125", show_default=True,
              help="Weight of each view's agreement with view 0 in the BCC and diagnosis read-outs, "
                   "views 1, 2, ... separated by commas, the last repeated (0: none).")
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True)
@click.option("--loss", type=click.Choice(["weighted", "focal"]), default="weighted", show_default=True)
@click.option("--solver", type=click.Choice(["exact", "adamw"]), default="exact", show_default=True,
              help="Heads fitted exactly (L-BFGS) or with the seed's staged AdamW.")
@click.option("--synthetic", type=click.IntRange(0, 100_000), default=600, show_default=True,
              help="Drawn images for the five pattern heads without real labels (0: untrained).")
@click.option("--limit", type=click.IntRange(8, 100_000), default=None,
              help="Use only this many images per data set (quick checks).")
@click.option("--add-dataset", "extra", type=click.Path(path_type=Path, file_okay=False, exists=True),
              multiple=True, help="A labels.csv folder to train and validate on as well, e.g. the "
                                  "export of a labelling set (`dermatriage labels export`).")
@click.option("--min-pattern-labels", type=click.IntRange(1, 100_000), default=10, show_default=True,
              help="Real positives and negatives a pattern needs for its head to count as validated.")
@click.option("--finetune-from", type=click.IntRange(0, 18), default=0, show_default=True,
              help="First backbone block that stage 2 fine-tunes (on cached activations of the "
                   "block before; 11-18), e.g. 14; 0 keeps the backbone frozen (the "
                   "build: see docs/experiments.md for what stage 2 measured).")
@click.option("--centre", type=click.IntRange(0, 7), default=3, show_default=True,
              help="Side of the central window of the 7x7 map that the BCC and diagnosis heads "
                   "read beside its global mean (0: the global mean alone).")
@click.option("--lesion/--no-lesion", default=True, show_default=True,
              help="The BCC and diagnosis heads also read the map's mean over the lesion "
                   "(the engine's Otsu mask; docs/experiments.md).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cpu: the frozen-backbone recipe (the build). cuda: stage 2 on images, every "
                   "block fine-tuned with fresh augmentation at every step (docs/model.md).")
@click.option("--ham-aspect", type=click.FloatRange(0.25, 4), default=None,
              help="Stretch HAM10000's squashed copies back to this width/height (4:3 = 1.3333) before "
                   "the engine's centre crop (an experiment: docs/experiments.md).")
@click.option("--out-of-source/--no-out-of-source", default=True, show_default=True,
              help="Also refit the BCC and diagnosis heads with each collection held out and put "
                   "those figures in the card (one more solve; docs/model.md).")
@click.option("--if-missing", is_flag=True, help="Do nothing when the model already exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(out: Path | None, seed: int, views: int, folds: int, loss: str, solver: str, synthetic: int,
          augmentation: str, invariance: str,
          limit: int | None, extra: tuple[Path, ...] = (), min_pattern_labels: int = 10,
          finetune_from: int = 0, centre: int = 3, lesion: bool = True, device: str = "cpu",
          out_of_source: bool = True, ham_aspect: float | None = None, if_missing: bool = False,
          quiet: bool = False) -> None:
    """Train the real-image model on ../shared/data (HAM10000, Derm7pt) from ImageNet weights."""
    if 0 < finetune_from < 11:
        # Earlier blocks' activations are 4-16x larger: gigabytes of cache on this data.
        raise click.BadParameter("must be 0 (frozen) or between 11 and 18", param_hint="--finetune-from")
    trainer = building("services.modelling.train")
    recipe = building("services.modelling.recipe")
    try:
        building("services.modelling.views").per_view(augmentation)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--augmentation") from None
    weights = _weights(invariance)
    out = out or config.real_model_path()
    if if_missing and out.exists():
        click.echo(f"real-image model already present at {out}")
        return
    gpu = {}
    if device == "cuda":
        import torch

        if finetune_from:
            raise click.BadParameter("stage 2 on cached activations is the CPU's; --device cuda "
                                     "fine-tunes on images", param_hint="--finetune-from")
        if not torch.cuda.is_available():
            raise click.ClickException("--device cuda: no CUDA device is available here "
                                       "(the CPU recipe is the default)")
        gpu = dict(image_finetune=True, device="cuda", image_workers=min(8, os.cpu_count() or 1))
    cfg = recipe.RealTrainConfig(seed=seed, views=views, augmentation=augmentation, invariance=weights,
                                 folds=folds, loss=loss, solver=solver,
                                 synthetic=synthetic, limit=limit, extra_datasets=tuple(map(str, extra)),
                                 min_pattern_labels=min_pattern_labels, finetune_from=finetune_from,
                                 centre=centre, lesion=lesion, out_of_source=out_of_source,
                                 ham_aspect=ham_aspect, **gpu)
    try:
        trainer.build_real(out, cfg, progress=not quiet, log=click.echo)
    except DermaTriageError as exc:
        raise click.ClickException(exc.message) from exc


@model.command("build")
@click.option("--if-missing", is_flag=True, help="Do nothing when that model already exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def build(ctx: click.Context, if_missing: bool, quiet: bool) -> None:
    """Build the model this installation serves: the real-image model where the shared data
    and ImageNet weights are present, else the synthetic demo model."""
    shared = config.shared_data_dir()
    real_ready = ((shared / "ham10000-224" / "metadata.csv").is_file()
                  and (shared / "derm7pt" / "meta.csv").is_file()
                  and (config.shared_models_dir() / "mobilenet_v2_1.0_224_imagenet_int8.tflite").is_file())
    if real_ready:
        ctx.invoke(train, if_missing=if_missing, quiet=quiet)
    else:
        click.echo(f"no real data under {shared}: building the synthetic demo model instead "
                   "(not for clinical use)")
        ctx.invoke(build_demo, if_missing=if_missing, quiet=quiet)


@model.command("evaluate")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Weights file (default: the model in service).")
@click.option("--synthetic", "n", type=click.IntRange(1, 100_000), default=None,
              help="Number of freshly generated synthetic images (for the demo model).")
@click.option("--dataset", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="A labelled image folder: HAM10000 (metadata.csv), Derm7pt (meta.csv) or "
                   "labels.csv (image, dx, bcc, PN, AT, group).")
@click.option("--plots", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder for roc.png and reliability.png (with --dataset).")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=None,
              help="Evaluate only the first N images of the dataset.")
@click.option("--seed", type=int, default=12345, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--json", "as_json", is_flag=True)
def evaluate(model_path: Path | None, n: int | None, dataset: Path | None, plots: Path | None,
             limit: int | None, seed: int, device: str | None, as_json: bool) -> None:
    """Metrics on synthetic images (--synthetic N) or on a labelled real-image folder (--dataset)."""
    if (n is None) == (dataset is None):
        raise click.UsageError("give exactly one of --synthetic N or --dataset DIR")
    evaluation = building("services.modelling.evaluation")
    engine = load_engine(model_path or config.model_path(), device)
    if dataset is not None:
        samples = _samples(dataset, limit)
        result = evaluation.evaluate_dataset(engine, samples, plots_dir=plots, seed=seed)
        click.echo(json.dumps(result, indent=2) if as_json else _real_summary(result))
        _keep_as_evidence(engine.card.weights_sha256, dataset, result, as_json)
        return
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


def _keep_as_evidence(sha: str, dataset: Path, result: dict, quiet: bool) -> None:
    """A registered model keeps the report's figures as evidence (the registry; the promotion
    page shows them). A model not registered, or no database, is said and skipped."""
    import getpass

    from services import registry
    from .ops import runtime
    summary = {"dataset": str(dataset), "images": result["images"],
               "targets": {k: {"auc": t["auc"], "ci95": t["ci95"]} for k, t in result["targets"].items()},
               "balanced_accuracy": result.get("balanced_accuracy")}
    try:
        kept = registry.add_evaluation(runtime(), sha, summary, f"cli:{getpass.getuser()}")
    except Exception as exc:  # no database here: the report stands on its own
        kept, why = None, f"the registry could not be reached ({type(exc).__name__})"
    else:
        why = "this model is not registered"
    if not quiet:
        click.echo(f"kept as evidence of {kept['name']} {kept['version']} in the registry" if kept
                   else f"not kept as registry evidence: {why}")


def _samples(dataset: Path, limit: int | None) -> list:
    """A labelled folder's samples (``datasets.load_dataset``), its errors as CLI messages."""
    datasets = building("services.modelling.datasets")
    try:
        return datasets.load_dataset(dataset)[:limit]
    except DermaTriageError as exc:
        raise click.ClickException(exc.message) from exc


def _real_summary(result: dict) -> str:
    lines = [f"{result['images']} images, model {result['model']['name']} {result['model']['version']}"]
    for name, t in result["targets"].items():
        extra = (f"  sens {t['sensitivity']:.3f} spec {t['specificity']:.3f} at {t['threshold']}"
                 if "sensitivity" in t else "")
        lines.append(f"{name:10} AUC {t['auc']} {t['ci95']}  ECE {t['ece']}{extra}")
    if "balanced_accuracy" in result:
        lines.append(f"balanced accuracy {result['balanced_accuracy']}")
    for name, c in result.get("by_collection", {}).items():
        lines.append(f"{name:14} {c['images']:5} images  " + "  ".join(
            f"{t} AUC {c[t]['auc']} {c[t]['ci95']}" for t in ("BCC", "melanoma", "malignant") if t in c))
    lines.append(f"map mass on the lesion: {result['lesion_share']}")
    return "\n".join(lines)


@model.command("triage")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Weights file (default: the model in service).")
@click.option("--dataset", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="A labelled image folder to run the served tiers on (default: the card's "
                   "out-of-fold figures).")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=None,
              help="Only the first N images of the dataset.")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=Path("triage.png"),
              show_default=True, help="Where to draw the workload-sensitivity curve (PNG).")
@click.option("--json", "as_json", is_flag=True)
def triage(model_path: Path | None, dataset: Path | None, limit: int | None, plot: Path, as_json: bool) -> None:
    """The referral tiers against their targets: per tier the share of cases, the sensitivity
    per malignant class and the low tier's NPV, and the workload-sensitivity curve."""
    fitting = building("services.modelling.triage")
    engine = load_engine(model_path or config.model_path(), "cpu")
    section = engine.card.triage
    if not section:
        raise click.ClickException(f"model {engine.card.name} {engine.card.version} has no triage "
                                   "section (the synthetic demo model scores by its BCC head); "
                                   "build the real-image model with `dermatriage model build`")
    title = "out-of-fold"
    if dataset is not None:
        samples = _samples(dataset, limit)
        section = fitting.on_dataset(engine, samples, section)
        if not section["images"]:
            raise click.ClickException(f"no image in {dataset} has a diagnosis among the model's classes")
        title = dataset.name
    section["plot"] = fitting.curve_png(section, plot, f"Workload vs sensitivity ({title})")
    click.echo(json.dumps(section, indent=2) if as_json else
               fitting.report(section) + f"\ncurve: {section['plot']}")


@model.command("card")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None)
def card(model_path: Path | None) -> None:
    """Print the card of the model in service (after checking its weights): which model runs."""
    path = model_path or config.model_path()
    engine = load_engine(path, "cpu")
    json.dump({"active_model": str(path), **engine.card.to_dict()}, sys.stdout, indent=2)
    click.echo()
