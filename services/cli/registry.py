"""`dermatriage model register|list|show|shadow|promote|rollback|compare`: the model registry
(services/registry.py); services/cli/__init__.py adds them to the ``model`` group. Every
change is recorded with who made it (``--by``, default the operating-system user) and why."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import click

from services import config
from services.errors import DermaTriageError

from .ops import runtime

BY = click.option("--by", default=None, help="Who is doing this (default: the operating-system user).")


def _by(by: str | None) -> str:
    return by or f"cli:{getpass.getuser()}"


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except DermaTriageError as exc:
        raise click.ClickException(exc.message) from exc


@click.command("register")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--in-service", is_flag=True, help="Register the model file in service (DERMATRIAGE_MODEL_PATH, "
              "else the real-image model if built, else the demo model).")
@click.option("--promote", "then_promote", is_flag=True, help="Then make it the champion (gated; see promote).")
@click.option("--override", is_flag=True, help="With --promote: go ahead if the gate refuses (recorded as such).")
@click.option("--reason", default="", help="Why (needed with --promote).")
@click.option("--bootstrap", is_flag=True, help="If the registry has no champion yet, make this one the "
              "champion (`make install`; recorded as the installation's override).")
@BY
def register(path: Path | None, in_service: bool, then_promote: bool, override: bool, reason: str,
             bootstrap: bool, by: str | None) -> None:
    """Copy a built model (weights and card) into the registry as a candidate."""
    from services import registry
    if (path is None) == (not in_service):
        raise click.UsageError("give PATH or --in-service (not both)")
    path = path or config.model_path()
    rt = runtime()
    version, created = _call(registry.register, rt, path, _by(by))
    click.echo(f"{'registered' if created else 'already registered'}: {version['name']} {version['version']} "
               f"({version['id']}, {version['status']})")
    if bootstrap and registry.champion(rt) is None:
        then_promote, override = True, True
        reason = reason or "installation: the registry had no champion; the model this installation built serves"
    if then_promote and version["status"] != registry.CHAMPION:
        done = _call(registry.promote, rt, version["id"], _by(by), reason, override)
        click.echo(f"{done['action']}: {done['name']} {done['version']} is the champion")


@click.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_models(as_json: bool) -> None:
    """Every registered version and its status."""
    from services import registry
    items = registry.versions(runtime())
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no model registered (`dermatriage model register PATH`)")
    for v in items:
        click.echo(f"{v['status']:<10} {v['name']} {v['version']}  {v['id']}  {v['weights_sha256'][:12]}  "
                   f"registered {v['registered_at'][:19]} by {v['registered_by']}")


@click.command("show")
@click.argument("version")
def show(version: str) -> None:
    """One version: status, evidence and its events (JSON)."""
    from services import registry
    found = _call(registry.show, runtime(), version)
    found.pop("card", None)
    click.echo(json.dumps(found, indent=2))


@click.command("shadow")
@click.argument("version")
@click.option("--reason", default="")
@BY
def shadow(version: str, reason: str, by: str | None) -> None:
    """Analyse live cases with VERSION beside the champion (results kept apart)."""
    from services import registry
    v = _call(registry.shadow, runtime(), version, _by(by), reason)
    click.echo(f"shadow: {v['name']} {v['version']}")


@click.command("promote")
@click.argument("version")
@click.option("--reason", required=True, help="Why (recorded with the evidence).")
@click.option("--override", is_flag=True, help="Promote even if the evidence gate refuses (recorded as an override).")
@BY
def promote(version: str, reason: str, override: bool, by: str | None) -> None:
    """Make VERSION the champion: every worker serves it within seconds."""
    from services import registry
    v = _call(registry.promote, runtime(), version, _by(by), reason, override)
    click.echo(f"{v['action']}: {v['name']} {v['version']} is the champion")


@click.command("rollback")
@click.option("--reason", required=True)
@BY
def rollback(reason: str, by: str | None) -> None:
    """Back to the champion before the current one."""
    from services import registry
    v = _call(registry.rollback, runtime(), _by(by), reason)
    click.echo(f"rollback: {v['name']} {v['version']} is the champion again")


@click.command("compare")
@click.argument("champion")
@click.argument("shadow")
@click.option("--json", "as_json", is_flag=True)
def compare(champion: str, shadow: str, as_json: bool) -> None:
    """CHAMPION against SHADOW on the live cases both read: tiers, and AUC and calibration
    against the dermatologists' reviews (bootstrap intervals); the largest disagreements."""
    from services import comparison, registry
    rt = runtime()
    a, b = _call(registry.show, rt, champion), _call(registry.show, rt, shadow)
    result = comparison.compare(rt, a["id"], b["id"], rt.settings.promotion_margin,
                                rt.settings.promotion_min_reviewed)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    t, r = result["tiers"], result["reviewed"]
    click.echo(f"{result['champion']['model']} (champion) against {result['shadow']['model']} (shadow): "
               f"{result['cases_both_read']} cases both read")
    if result["cases_both_read"]:
        click.echo(f"tiers: {t['agree']} agree ({t['agreement']:.1%}); {t['would_move_up']} would move up, "
                   f"{t['would_move_down']} down")
    if "auc" in r:
        ca, sa, d = r["auc"]["champion"], r["auc"]["shadow"], r["difference"]
        click.echo(f"reviewed: {r['cases']} ({r['malignant']} malignant); AUC champion {ca['auc']:.3f} "
                   f"{ca['ci95']}, shadow {sa['auc']:.3f} {sa['ci95']}; difference {d['value']:+.3f} {d['ci95']}")
    click.echo(f"non-inferior: {'yes' if result['non_inferior'] else 'no'} ({result['why']})")
    for item in result["disagreements"]:
        click.echo(f"  case {item['case_id']}: champion {item['champion']['probability']:.2f} "
                   f"{item['champion']['tier']}, shadow {item['shadow']['probability']:.2f} "
                   f"{item['shadow']['tier']}, review {item['review'] or '-'}")


COMMANDS = (register, list_models, show, shadow, promote, rollback, compare)
