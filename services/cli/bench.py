"""``dermatriage bench ...``: benchmarks that print side-by-side ratios."""

from __future__ import annotations

import json
from pathlib import Path

import click

from services import config
from .model import building, load_engine


def served_model(model_path: Path | None) -> Path:
    """--model, else the model in service; a clear message when it is not there."""
    model = model_path or config.model_path()
    if not model.exists():
        raise click.ClickException(f"no model at {model} (--model)" if model_path
                                   else config.missing_model_message(model))
    return model


@click.group()
def bench() -> None:
    """Benchmarks (figures measured side by side in one run)."""


def _shared_data() -> Path:
    """The shared data folder, or a clear error when HAM10000 is not there."""
    shared = config.shared_data_dir()
    if not (shared / "ham10000-224" / "metadata.csv").exists():
        raise click.ClickException(f"HAM10000 images not found under {shared}")
    return shared


@bench.command("explain")
@click.option("--batch", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None)
@click.option("--device", default=None)
@click.option("--json", "as_json", is_flag=True)
def explain(batch: int, rounds: int, model_path: Path | None, device: str | None, as_json: bool) -> None:
    """Forward-only vs full analysis (8 maps + numbers) vs captum LayerGradCam; and the
    engine's analysis from bytes with the scope gate against without it."""
    explain_bench = building("services.bench.explain")
    engine = load_engine(model_path or config.model_path(), device)
    result = explain_bench.bench_explain(engine, batch=batch, rounds=rounds)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        m = result["median_s"]
        click.echo(f"batch {batch} on {result['device']}: forward {m['forward']:.3f}s  "
                   f"full {m['full']:.3f}s  captum {m['captum']:.3f}s")
        click.echo(f"full_over_forward {result['full_over_forward']}  "
                   f"captum_over_full {result['captum_over_full']}"
                   + (f"  one_pass_over_passes {result['one_pass_over_passes']}"
                      if "one_pass_over_passes" in result else ""))
        click.echo(f"analyse from bytes: with the scope gate {m['analyse']:.3f}s  without "
                   f"{m['analyse_no_gate']:.3f}s  gate_overhead {result['gate_overhead']:+.1%}")


@bench.command("pipeline")
@click.option("--cases", "n", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--stack", "stacks", type=click.Choice(["embedded", "full", "both"]), default="both",
              show_default=True)
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None)
@click.option("--postgres-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
              show_default=True, help="A temporary database is created through this and dropped.")
@click.option("--redis-url", default="redis://127.0.0.1:6379/3", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def pipeline(n: int, stacks: str, model_path: Path | None, postgres_admin_url: str, redis_url: str,
             as_json: bool) -> None:
    """Cases/s through the HTTP API and a worker, live and draining a backlog, against the engine."""
    pipeline_bench = building("services.bench.pipeline")
    model = served_model(model_path)
    shared = _shared_data()
    chosen = ["embedded", "full"] if stacks == "both" else [stacks]
    result = pipeline_bench.bench_pipeline(n, chosen, model, shared, postgres_admin_url, redis_url)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"engine alone: {result['engine_images_per_s']} images/s")
    for r in result["results"]:
        live, backlog = r["live"], r["backlog"]
        click.echo(f"{r['stack']}: live: intake {live['intake_rps']} req/s, analysis {live['cases_per_s']} "
                   f"cases/s ({live['over_engine']:.0%} of the engine), latency p50 "
                   f"{live['latency_p50_s']} s p95 {live['latency_p95_s']} s; backlog: "
                   f"{backlog['cases_per_s']} cases/s ({backlog['over_engine']:.0%} of the engine)")


@bench.command("worker")
@click.option("--cases", "n", type=click.IntRange(4, 10_000), default=40, show_default=True)
@click.option("--batch", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None)
@click.option("--postgres-admin-url", default=None,
              help="Also measure audit appends/s with 1, 4 and 16 writers (a temporary database "
                   "is created through this URL and dropped), e.g. "
                   "postgresql+psycopg://postgres@127.0.0.1:5432/test")
@click.option("--json", "as_json", is_flag=True)
def worker(n: int, batch: int, model_path: Path | None, postgres_admin_url: str | None, as_json: bool) -> None:
    """The analysis hot path against inference alone, in one process (embedded stack)."""
    worker_bench = building("services.bench.worker")
    model = served_model(model_path)
    result = worker_bench.bench_worker(n, model, _shared_data(), batch, postgres_admin_url)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(json.dumps(result))


@bench.command("chaos")
@click.option("--cases", "n", type=click.IntRange(8, 100_000), default=1000, show_default=True)
@click.option("--outage", "outage_s", type=click.FloatRange(1, 600), default=20, show_default=True,
              help="Seconds the broker is down (at half of the submissions).")
@click.option("--lease", "lease_s", type=click.IntRange(2, 3600), default=30, show_default=True)
@click.option("--sweep", "sweep_s", type=click.IntRange(1, 600), default=5, show_default=True)
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None)
@click.option("--postgres-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
              show_default=True, help="A temporary database is created through this and dropped.")
def chaos(n: int, outage_s: float, lease_s: int, sweep_s: int, model_path: Path | None,
          postgres_admin_url: str) -> None:
    """Full stack with a worker SIGKILL and a broker outage mid-run (JSON): lost, duplicated,
    messages and re-sends per job."""
    chaos_bench = building("services.bench.chaos")
    model = served_model(model_path)
    click.echo(json.dumps(chaos_bench.bench_chaos(n, model, _shared_data(), postgres_admin_url,
                                                  outage_s, lease_s, sweep_s), indent=2))


@bench.command("audit")
@click.option("--records", "n", type=click.IntRange(100, 50_000_000), default=1_000_000, show_default=True)
@click.option("--postgres-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
              show_default=True, help="A temporary database is created through this and dropped.")
def audit(n: int, postgres_admin_url: str) -> None:
    """Verifying N chained records (no map objects) and the auditor's pages at that size (JSON)."""
    audit_bench = building("services.bench.audit")
    click.echo(json.dumps(audit_bench.bench_audit(n, postgres_admin_url), indent=2))


@bench.command("fhir")
@click.option("--referrals", "n", type=click.IntRange(2, 10_000), default=40, show_default=True,
              help="Referrals sent each way (FHIR Bundle and JSON API), alternately, same images.")
@click.option("--cases", type=click.IntRange(100, 10_000_000), default=100_000, show_default=True,
              help="Analysed cases seeded beside them before the report reads.")
@click.option("--reads", type=click.IntRange(10, 100_000), default=300, show_default=True)
@click.option("--postgres-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
              show_default=True, help="A temporary database is created through this and dropped.")
def fhir(n: int, cases: int, reads: int, postgres_admin_url: str) -> None:
    """Referrals/s through /fhir against the JSON API (fhir_over_api), and report read p95
    among CASES seeded cases, through the real web server (JSON)."""
    from services.bench.fhir import bench_fhir
    click.echo(json.dumps(bench_fhir(n, cases, reads, _shared_data(), postgres_admin_url), indent=2))


@bench.command("rollout")
@click.option("--rate", type=click.FloatRange(0.2, 100), default=3.0, show_default=True,
              help="Cases submitted per second, steadily.")
@click.option("--phase", "phase_s", type=click.FloatRange(2, 600), default=20, show_default=True,
              help="Seconds of each phase (before and after the promotion, after the rollback; "
                   "without and with a shadow).")
@click.option("--workers", type=click.IntRange(1, 8), default=2, show_default=True)
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None)
@click.option("--postgres-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
              show_default=True, help="A temporary database is created through this and dropped.")
@click.option("--redis-url", default="redis://127.0.0.1:6379/13", show_default=True,
              help="The broker; this Redis database is emptied first.")
def rollout(rate: float, phase_s: float, workers: int, model_path: Path | None, postgres_admin_url: str,
            redis_url: str) -> None:
    """Promote then roll back under a steady stream with real workers: seconds until every
    worker serves the new champion, jobs per version, none lost, twice or by a non-champion;
    and the champion's latency without and with a shadow model (JSON)."""
    from services.bench.rollout import bench_rollout
    click.echo(json.dumps(bench_rollout(served_model(model_path), _shared_data(), postgres_admin_url, redis_url,
                                        rate, phase_s, workers), indent=2))


@bench.command("build")
@click.option("--images", type=click.IntRange(8, 100_000), default=400, show_default=True,
              help="Images per data set in the reduced build.")
@click.option("--competitor", "competitors", type=click.Choice(["python", "torch"]), multiple=True,
              default=("python", "torch"), show_default=True)
@click.option("--json", "as_json", is_flag=True)
def build(images: int, competitors: tuple[str, ...], as_json: bool) -> None:
    """The real-image build idle and beside a competing busy process (wall-time ratios)."""
    build_bench = building("services.bench.build")
    _shared_data()
    result = build_bench.bench_build(images, competitors=competitors)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for r in result["runs"]:
        click.echo(f"OMP_WAIT_POLICY={r['policy']:<8} competitor={r['competitor'] or 'none':<7} "
                   f"{r['seconds']:7.1f} s  x{r['ratio']}")
    click.echo(f"worst busy/idle with PASSIVE (what dermatriage sets): x{result['worst_passive_ratio']} "
               f"(limit x{result['limit_ratio']})")


@bench.command("queue")
@click.option("--cases", "n", type=click.IntRange(1000, 20_000_000), default=1_000_000, show_default=True)
@click.option("--waiting", "shares", type=click.FloatRange(0.001, 1.0), multiple=True,
              default=(0.03, 0.30), show_default=True, help="Share of the cases waiting (repeatable).")
@click.option("--seconds", type=click.FloatRange(1, 600), default=10, show_default=True,
              help="How long the 20 pollers run.")
@click.option("--postgres-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
              show_default=True, help="A temporary database is created through this and dropped.")
@click.option("--web-workers", type=click.IntRange(1, 64), default=2, show_default=True)
def queue_bench(n: int, shares: tuple[float, ...], seconds: float, postgres_admin_url: str,
                web_workers: int) -> None:
    """The queue API at scale on PostgreSQL: latency, pollers' throughput, old vs new query (JSON)."""
    queue_module = building("services.bench.queue")
    try:
        result = queue_module.bench_queue(n, list(shares), postgres_admin_url, seconds=seconds,
                                          web_workers=web_workers)
    except Exception as exc:       # a benchmark: say what failed, exit non-zero
        raise click.ClickException(f"queue benchmark failed: {exc}") from exc
    click.echo(json.dumps(result, indent=2))
