"""Labelling sets from the operator's shell: create, add cases, merge (Dawid-Skene), export."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import click

from services.errors import DermaTriageError

from .ops import runtime


@contextmanager
def _clear_errors():
    try:
        yield
    except DermaTriageError as exc:
        raise click.ClickException(f"{exc.field + ': ' if exc.field else ''}{exc.message}") from exc


@click.group()
def labels() -> None:
    """Labelling sets: several dermatologists' independent labels merged into one reference."""


@labels.command("create")
@click.option("--name", required=True)
@click.option("--reader", "readers", multiple=True, required=True,
              help="A dermatologist's username (give two or more).")
@click.option("--case", "case_ids", multiple=True, help="A case id (repeat; more with add-cases).")
@click.option("--blind-to-ai", is_flag=True, help="Readers do not see the AI's analysis.")
def labels_create(name: str, readers: tuple[str, ...], case_ids: tuple[str, ...], blind_to_ai: bool) -> None:
    """A labelling set: cases that two or more dermatologists label, each blind to the others."""
    from services import labelling
    with _clear_errors():
        click.echo(json.dumps(labelling.create_set(runtime(), None, name, readers, case_ids, blind_to_ai),
                              indent=2))


@labels.command("add-cases")
@click.option("--set", "ref", required=True, help="The set's name or id.")
@click.argument("case_ids", nargs=-1, required=True)
def labels_add_cases(ref: str, case_ids: tuple[str, ...]) -> None:
    """Add cases to a labelling set."""
    from services import labelling
    with _clear_errors():
        click.echo(json.dumps(labelling.add_cases(runtime(), None, ref, case_ids), indent=2))


@labels.command("consensus")
@click.option("--set", "ref", required=True, help="The set's name or id.")
@click.option("--json", "as_json", is_flag=True, help="The whole result as JSON.")
def labels_consensus(ref: str, as_json: bool) -> None:
    """Dawid-Skene EM per pattern and for the diagnosis: the single reference with posterior
    probabilities, each reader's sensitivity and specificity, and majority voting beside it."""
    from services import labelling
    with _clear_errors():
        result = labelling.consensus(runtime(), None, ref)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    click.echo(f"set {result['set']['name']}: {len(result['cases'])} cases, readers {', '.join(result['readers'])}")
    for code, p in result["patterns"].items():
        readers = "; ".join(f"{n} sens {r['sensitivity']:.2f} spec {r['specificity']:.2f}"
                            for n, r in p["readers"].items())
        click.echo(f"  {code}: {p['labelled_cases']} labelled, prevalence {p.get('prevalence', '-')}, "
                   f"{p.get('differs_from_majority_vote', 0)} differ from the vote. {readers}")
    d = result["diagnosis"]
    click.echo(f"  diagnosis: {d['labelled_cases']} labelled, {d.get('differs_from_majority_vote', 0)} "
               "differ from the vote")


@labels.command("export")
@click.option("--set", "ref", required=True, help="The set's name or id.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True)
def labels_export(ref: str, out: Path) -> None:
    """Images, reference labels (labels.csv) and region masks, for `model train|evaluate --dataset`."""
    from services import labelling
    if out.exists() and any(out.iterdir()):
        raise click.ClickException(f"{out} is not empty")
    with _clear_errors():
        click.echo(json.dumps(labelling.export(runtime(), None, ref, out)))
