"""FHIR from the command line: what an EHR would file for one case, written to a file."""

from __future__ import annotations

import json
from pathlib import Path

import click

from services.errors import DermaTriageError

from .ops import runtime, settings


@click.group()
def fhir() -> None:
    """FHIR R5: export a case's report Bundle."""


@fhir.command("export")
@click.option("--case", "case_id", required=True, help="The case id (the DiagnosticReport's id).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the Bundle here (default: standard output).")
@click.option("--base-url", default=None,
              help="The service's address for the Bundle's links (default: PUBLIC_URL).")
def fhir_export(case_id: str, out: Path | None, base_url: str | None) -> None:
    """A collection Bundle: the DiagnosticReport, its ServiceRequest and Patient, and a
    Provenance per version; every resource checked against the R5 models."""
    from services.fhir.read import export_bundle
    base = (base_url.rstrip("/") + "/") if base_url else settings().public_url
    try:
        bundle = export_bundle(runtime(), case_id, base)
    except DermaTriageError as exc:
        raise click.ClickException(exc.message) from exc
    text = json.dumps(bundle, indent=2)
    if out is None:
        click.echo(text)
    else:
        out.write_text(text + "\n")
        click.echo(f"wrote {out} ({len(bundle['entry'])} resources)")
