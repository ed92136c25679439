"""Operating the product: database, accounts, worker, web server, health, outbox, audit.

``web`` and ``worker`` replace themselves with the real server process (gunicorn, Celery),
so the command line below is the one place that says how each is started: the Dockerfile,
docker-compose.yml and `dermatriage run` all go through these commands.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from services import config
from services.config import ANALYSIS_QUEUE, CPU_QUEUE, QUEUES, SHADOW_QUEUE, WORKER_QUEUES, Settings
from services.errors import DermaTriageError
from services.vocabulary import Role, values

DEMO_ACCOUNTS = (("gp", "gp-demo", "gp-demo-pass"),
                 ("dermatologist", "derm-demo", "derm-demo-pass"),
                 ("auditor", "audit-demo", "audit-demo-pass"),
                 ("admin", "admin-demo", "admin-demo-pass"))
WSGI_APP = "web.wsgi:app"


def settings() -> Settings:
    try:
        return Settings.from_env()
    except DermaTriageError as exc:
        raise click.ClickException(str(exc)) from exc


def runtime():
    from services.runtime import build
    return build(settings())


def web_server_command(host: str, port: int, workers: int, threads: int = 4) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-w", str(workers), "--threads", str(threads),
            "-b", f"{host}:{port}", "--access-logfile", "-", WSGI_APP]


def worker_node(queues: tuple[str, ...]) -> str:
    """Celery node name of a worker on these queues (%h: this host): analysis@host, cpu@host
    or worker@host (both). One worker process per host or container, so `dermatriage health
    worker --queues Q` pings exactly its own process."""
    return f"{queues[0] if len(queues) == 1 else 'worker'}@%h"


def worker_command(concurrency: int, loglevel: str, queues: tuple[str, ...] = WORKER_QUEUES) -> list[str]:
    # Pool: threads. One process holds one copy of the model (one CUDA context on a GPU box),
    # the threads feed its micro-batcher, and nothing forks after the model is loaded.
    return [sys.executable, "-m", "celery", "-A", "workers.worker", "worker", "-P", "threads",
            "-c", str(concurrency), "-Q", ",".join(queues), "--loglevel", loglevel,
            "-n", worker_node(queues), "--without-gossip", "--without-mingle"]


def parse_queues(value: str) -> tuple[str, ...]:
    queues = tuple(dict.fromkeys(q.strip() for q in value.split(",") if q.strip()))
    unknown = [q for q in queues if q not in QUEUES]
    if not queues or unknown:
        raise click.BadParameter(f"choose from {', '.join(QUEUES)} (comma-separated); "
                                 f"got {value!r}", param_hint="--queues")
    return queues


QUEUES_OPTION = click.option(
    "--queues", default=",".join(WORKER_QUEUES), show_default=True,
    help=f"Queues to consume: {ANALYSIS_QUEUE} (model inference, GPU), {CPU_QUEUE} "
         "(outbox sweeps, audit checkpoints, notifications; periodic jobs run only here) and/or "
         f"{SHADOW_QUEUE} (the shadow model's readings, on workers of their own).")


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    from services import migrate
    migrate.upgrade(settings().database_url, revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.option("--revision", required=True)
def db_downgrade(revision: str) -> None:
    from services import migrate
    migrate.downgrade(settings().database_url, revision)
    click.echo(f"database at {revision}")


@click.group()
def users() -> None:
    """Accounts: create, deactivate, reset a password, end sessions."""


def _password(stdin: bool) -> str:
    """From standard input (one line) or a hidden prompt with confirmation: never from the
    command line, where it would land in shell history and the process list."""
    if stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise click.ClickException("no password on standard input")
        return line
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


def _account_action(fn, *args) -> None:
    try:
        fn(runtime(), None, *args, "cli")
    except DermaTriageError as exc:
        raise click.ClickException(f"{exc.field + ': ' if exc.field else ''}{exc.message}") from exc


@users.command("create")
@click.option("--role", type=click.Choice(values(Role)), required=True)
@click.option("--username", required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password (10+ characters) from stdin.")
def users_create(role: str, username: str, password_stdin: bool) -> None:
    """A new account; the password is prompted for (or read from stdin)."""
    from services import users as accounts
    _account_action(lambda rt, admin, client: accounts.create_account(
        rt, admin, username, _password(password_stdin), role, client))
    click.echo(f"created {role} {username}")


@users.command("deactivate")
@click.argument("username")
def users_deactivate(username: str) -> None:
    """Deactivate an account: it can no longer log in; its sessions and tokens end."""
    from services import users as accounts
    _account_action(accounts.deactivate, username)
    click.echo(f"deactivated {username}")


@users.command("reset-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True)
def users_reset_password(username: str, password_stdin: bool) -> None:
    """Set a new password (prompted or from stdin); the account's sessions and tokens end."""
    from services import users as accounts
    _account_action(lambda rt, admin, client: accounts.reset_password(
        rt, admin, username, _password(password_stdin), client))
    click.echo(f"password of {username} reset")


@users.command("revoke")
@click.argument("username")
def users_revoke(username: str) -> None:
    """End every session and token of an account (it stays active)."""
    from services import users as accounts
    _account_action(accounts.revoke, username)
    click.echo(f"every session and token of {username} ended")


def ensure_demo_accounts(rt) -> None:
    from sqlalchemy import select
    from services.models import User
    from services.users import create_user

    with rt.transaction() as s:
        for role, name, password in DEMO_ACCOUNTS:
            if not s.scalar(select(User).where(User.username == name)):
                create_user(s, name, password, role)


@click.command()
@click.option("--concurrency", type=int, default=4, show_default=True,
              help="Threads feeding the model's micro-batcher.")
@click.option("--loglevel", default="INFO", show_default=True)
@QUEUES_OPTION
def worker(concurrency: int, loglevel: str, queues: str) -> None:
    """Start a worker (Celery, thread pool, one model per process on the analysis queue)."""
    settings()
    command = worker_command(concurrency, loglevel, parse_queues(queues))
    os.execvp(command[0], command)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=lambda: int(os.environ.get("PORT", 5000)))
@click.option("--workers", "web_workers", type=int, default=2, show_default=True)
def web(host: str, port: int, web_workers: int) -> None:
    """Start the web server (gunicorn)."""
    settings()
    command = web_server_command(host, port, web_workers)
    os.execvp(command[0], command)


@click.group()
def health() -> None:
    """Health checks for a running process (exit 0 when healthy): container healthchecks."""


@health.command("web")
@click.option("--port", type=int, default=lambda: int(os.environ.get("PORT", 5000)))
def health_web(port: int) -> None:
    """Ask the local web server's /healthz."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as resp:
            click.echo(resp.read().decode())
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"web server on port {port} is not healthy: {exc}") from exc


@health.command("worker")
@click.option("--timeout", type=float, default=5.0, show_default=True)
@QUEUES_OPTION
def health_worker(timeout: float, queues: str) -> None:
    """Ping this host's worker on these queues through the broker."""
    from celery.utils.nodenames import host_format
    node = host_format(worker_node(parse_queues(queues)))
    replies = runtime().celery.control.ping(destination=[node], timeout=timeout)
    if not any(node in r for r in replies):
        raise click.ClickException(f"worker {node} did not answer within {timeout:g} s")
    click.echo(f"{node}: ok")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=lambda: int(os.environ.get("PORT", 5000)))
def run(host: str, port: int) -> None:
    """Migrate, create demo accounts, then run web + worker until Ctrl-C."""
    s = settings()
    if not s.model_path.exists():
        raise click.ClickException(config.missing_model_message(s.model_path))
    from services import migrate
    migrate.upgrade(s.database_url)
    rt = runtime()
    if s.env != "production":
        ensure_demo_accounts(rt)
    exe = [sys.executable, "-m", "services.cli"]
    children = [subprocess.Popen(exe + ["worker", "--concurrency", "4"]),
                subprocess.Popen(exe + ["web", "--host", host, "--port", str(port)])]
    click.echo(f"\nDermaTriage is running at http://{host}:{port}/  (Ctrl-C stops it)")
    if s.env != "production":
        click.echo("Demo accounts (username / password):")
        for role, name, password in DEMO_ACCOUNTS:
            click.echo(f"  {role:14} {name} / {password}")
    click.echo(f"Storage: {s.database_url} · objects {s.object_store_url.split('@')[-1]} · broker {s.broker_url}\n")

    def stop(*_):
        for c in children:
            if c.poll() is None:
                c.terminate()
    signal.signal(signal.SIGTERM, stop)
    try:
        while all(c.poll() is None for c in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        for c in children:
            c.wait(timeout=30)


@click.group()
def jobs() -> None:
    """Analysis jobs (the outbox): re-send what was lost."""


@jobs.command("sweep")
def jobs_sweep() -> None:
    """Re-send undispatched, lost or stalled analysis jobs once."""
    from services import jobs as outbox
    click.echo(json.dumps(outbox.sweep(runtime())))


@click.group()
def audit() -> None:
    """The audit trail: verify, sign, export, the access log."""


@audit.command("access")
@click.option("--case", "case_id", default=None)
@click.option("--user", "username", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=200, show_default=True)
def audit_access(case_id: str | None, username: str | None, limit: int) -> None:
    """The access log (JSON lines, newest first), by case and/or by user."""
    from services import access
    for row in access.query(runtime(), None, case_id, username, limit=limit):
        click.echo(json.dumps(row))


@audit.command("verify")
@click.option("--skip-objects", is_flag=True, help="Check the hash chain only, not the stored objects.")
@click.option("--incremental", is_flag=True, help="Only the records since the last verified head.")
@click.option("--json", "as_json", is_flag=True)
def audit_verify(skip_objects: bool, incremental: bool, as_json: bool) -> None:
    """Re-walk the hash chain and its objects and check every signed checkpoint; exit 1 on
    the first broken link, object or checkpoint."""
    from services import checkpoints
    report = checkpoints.verify(runtime(), None, full=not incremental, check_objects=not skip_objects)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif report["ok"]:
        click.echo(f"OK: {report['records_walked']} records, {report['objects_checked']} objects verified, "
                   f"{report['checkpoints']} checkpoints")
    else:
        b = report["first_broken"]
        if b:
            click.echo(f"BROKEN at record {b['seq']} (case {b['case_id']}): {b['problem']}")
        for problem in report["problems"]:
            click.echo(f"BROKEN: {problem}")
    if not report["ok"]:
        sys.exit(1)


@audit.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign the chain's head now (the workers also do it every CHECKPOINT_INTERVAL_S)."""
    from services import checkpoints
    try:
        click.echo(json.dumps(checkpoints.make_checkpoint(runtime())))
    except DermaTriageError as exc:
        raise click.ClickException(exc.message) from exc


@audit.command("keygen")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
def audit_keygen(out: Path) -> None:
    """A new Ed25519 signing key (PEM, mode 600) for AUDIT_SIGNING_KEY_FILE; prints the public key."""
    from services import checkpoints
    if out.exists():
        raise click.ClickException(f"{out} exists; refusing to overwrite a signing key")
    checkpoints.generate_key(out)
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(out.read_bytes(), password=None)
    click.echo(checkpoints.public_pem(key).decode(), nl=False)


@audit.command("public-key")
def audit_public_key() -> None:
    """The checkpoints' verification key (PEM): publish it where auditors can fetch it."""
    from services import checkpoints
    click.echo(checkpoints.public_pem(checkpoints.public_key(runtime())).decode(), nl=False)


@audit.command("export")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
def audit_export(out: Path) -> None:
    """A self-contained bundle (zip: records.jsonl, checkpoints.jsonl, public_key.pem)."""
    from services import checkpoints
    click.echo(json.dumps(checkpoints.export_bundle(runtime(), None, out)))


@audit.command("verify-bundle")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--public-key", "key_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              required=True, help="The public key, obtained independently of the bundle.")
def audit_verify_bundle(bundle: Path, key_file: Path) -> None:
    """Verify an exported bundle offline: no database, no object store, only the public key."""
    from services import checkpoints
    try:
        report = checkpoints.verify_bundle(bundle, key_file.read_bytes())
    except (ValueError, KeyError, OSError) as exc:
        raise click.ClickException(f"cannot read the bundle or the key: {exc}") from exc
    click.echo(json.dumps(report, indent=2))
    if not report["ok"]:
        sys.exit(1)
