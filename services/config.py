"""Settings from environment variables, with embedded defaults that need no servers.

Embedded default (a laptop, `make run`): SQLite file, objects on local disk, Celery over
kombu's filesystem transport, all under ``var/``. Full stack: set DATABASE_URL
(postgresql+psycopg://...), BROKER_URL (redis://...), and OBJECT_STORE_URL
(s3://KEY:SECRET@host:port/bucket) or the MINIO_* variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .errors import ConfigurationError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SECRET_KEY = "dev-only-insecure-secret-key"
# Celery queue of the GPU analysis task (workers consume it; the web sends to it by name).
ANALYSIS_QUEUE = "analysis"   # model inference: GPU workers (one model per process)
CPU_QUEUE = "cpu"             # everything else a worker does: outbox sweeps, audit checkpoints
SHADOW_QUEUE = "shadow"       # the shadow model's readings: its own workers, never the champion's
WORKER_QUEUES = (ANALYSIS_QUEUE, CPU_QUEUE)          # what a worker consumes unless told
QUEUES = (ANALYSIS_QUEUE, CPU_QUEUE, SHADOW_QUEUE)   # what it may be told
PRIORITY_STEPS = (0, 3, 6, 9)


def _install_var() -> Path:
    """``var/`` of the source checkout, or of the working directory for an installed wheel."""
    return (PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").exists() else Path.cwd()) / "var"


def data_dir(env: dict | None = None) -> Path:
    """Where the embedded default keeps its database, objects, broker and keys:
    DERMATRIAGE_DATA_DIR, else the installation's ``var/``."""
    env = os.environ if env is None else env
    return Path(env.get("DERMATRIAGE_DATA_DIR", _install_var())).resolve()


def models_dir(env: dict | None = None) -> Path:
    """Where models are built and where the one in service is looked for:
    DERMATRIAGE_MODELS_DIR, else the installation's ``var/models``. Not under
    DERMATRIAGE_DATA_DIR: a second data directory (another database, other objects) still
    serves the model ``make install`` built, instead of asking for one of its own."""
    env = os.environ if env is None else env
    return Path(env.get("DERMATRIAGE_MODELS_DIR", _install_var() / "models")).resolve()


def demo_model_path(env: dict | None = None) -> Path:
    """The synthetic demo model (tests, and machines without the real data)."""
    return models_dir(env) / "demo-bcc.pt"


def real_model_path(env: dict | None = None) -> Path:
    """The model trained on real dermoscopic images (built where ../shared/data is present)."""
    return models_dir(env) / "real-bcc.pt"


def model_path(env: dict | None = None) -> Path:
    """Weights file of the model in service (its card sits beside it): DERMATRIAGE_MODEL_PATH,
    else the real-image model when it has been built, else the demo model."""
    env = os.environ if env is None else env
    if env.get("DERMATRIAGE_MODEL_PATH"):
        return Path(env["DERMATRIAGE_MODEL_PATH"])
    real = real_model_path(env)
    return real if real.exists() else demo_model_path(env)


def missing_model_message(path: Path, env: dict | None = None) -> str:
    """What to do when no model is in service, naming the variables that choose it."""
    env = os.environ if env is None else env
    if env.get("DERMATRIAGE_MODEL_PATH"):
        return (f"no model at {path} (DERMATRIAGE_MODEL_PATH): point it at a weights file, or "
                "unset it to serve the model `dermatriage model build` writes")
    return (f"no model in {models_dir(env)} (DERMATRIAGE_MODELS_DIR): run `dermatriage model build` "
            "(the real-image model where ../shared/data is present, else the demo model), or set "
            "DERMATRIAGE_MODELS_DIR or DERMATRIAGE_MODEL_PATH to where a model is")


def shared_data_dir() -> Path:
    """Real dermoscopic data sets (read-only, never committed): ../shared/data by default."""
    return Path(os.environ.get("DERMATRIAGE_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def shared_models_dir() -> Path:
    """Pretrained weights (read-only, never committed): ../shared/models by default."""
    return Path(os.environ.get("DERMATRIAGE_SHARED_MODELS", PROJECT_ROOT.parent / "shared" / "models"))


def _object_store_url(env: dict, base: Path) -> str:
    if env.get("OBJECT_STORE_URL"):
        return env["OBJECT_STORE_URL"]
    if env.get("MINIO_ENDPOINT"):
        secure = env.get("MINIO_SECURE", "false")
        return (f"s3://{quote(env.get('MINIO_ACCESS_KEY', ''), safe='')}:"
                f"{quote(env.get('MINIO_SECRET_KEY', ''), safe='')}@{env['MINIO_ENDPOINT']}/"
                f"{env.get('MINIO_BUCKET', 'dermatriage')}?secure={secure}")
    return (base / "objects").as_uri()


DEPLOYMENTS = ("development", "test", "production")


def deployment(raw: str) -> str:
    """DERMATRIAGE_ENV, spelled any case; anything else is refused rather than read as
    development (a typo must never run production with development's defaults)."""
    value = raw.strip().lower() or "development"
    if value not in DEPLOYMENTS:
        raise ConfigurationError(f"DERMATRIAGE_ENV must be one of {', '.join(DEPLOYMENTS)}, not {raw!r}")
    return value


def strong_secret(key: str) -> bool:
    """At least 32 characters and not a repetition of a few: about 128 bits or more when
    the key was drawn at random (hex, base64), which is what the error message asks for."""
    if len(key) < 32 or len(set(key)) < 12:
        return False
    return not any(key == key[:n] * (len(key) // n) + key[:len(key) % n] for n in range(1, 9))


@dataclass(frozen=True)
class Settings:
    env: str
    secret_key: str
    database_url: str
    broker_url: str
    object_store_url: str
    model_path: Path
    data_dir: Path
    token_max_age_s: int = 8 * 3600
    session_idle_s: int = 30 * 60        # a page session unused this long ends
    session_max_s: int = 12 * 3600       # and none lasts longer than this
    max_upload_bytes: int = 60 * 1024 * 1024
    max_images_per_case: int = 6
    max_task_attempts: int = 3
    job_lease_s: int = 300
    sweep_interval_s: float = 15.0
    batch_max: int = 16
    batch_wait_ms: float = 25.0
    queue_cache_s: float = 1.0
    # The Ed25519 key that signs audit checkpoints: a file the database cannot reach (and its
    # administrators cannot read), created on first use on the embedded default.
    audit_key_file: Path | None = None
    # Every checkpoint is also appended here (ship it to write-once storage): with the key,
    # the evidence that survives someone who can rewrite the whole database.
    checkpoint_log: Path | None = None
    audit_public_key_file: Path | None = None   # verifiers need only this (AUDIT_PUBLIC_KEY_FILE)
    checkpoint_interval_s: float = 300.0
    # Where EHRs reach this service: the base of the links in FHIR notifications, which the
    # workers send without a request to take the host from.
    public_url: str = "http://localhost:5000/"
    # The promotion gate (services/registry.py): a new champion's AUC on the reviewed cases
    # both models read may be at most this much below the champion's (lower 95% bound of the
    # paired difference), on at least this many reviewed cases.
    promotion_margin: float = 0.02
    promotion_min_reviewed: int = 30

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "Settings":
        env = dict(os.environ if environ is None else environ)
        base = data_dir(env)
        settings = cls(
            env=deployment(env.get("DERMATRIAGE_ENV", "")),
            secret_key=env.get("SECRET_KEY", DEFAULT_SECRET_KEY),
            database_url=env.get("DATABASE_URL", f"sqlite:///{base / 'dermatriage.db'}"),
            broker_url=env.get("BROKER_URL", "filesystem://"),
            object_store_url=_object_store_url(env, base),
            model_path=model_path(env),
            data_dir=base,
            token_max_age_s=int(env.get("TOKEN_MAX_AGE_S", 8 * 3600)),
            session_idle_s=int(env.get("SESSION_IDLE_S", 30 * 60)),
            session_max_s=int(env.get("SESSION_MAX_S", 12 * 3600)),
            max_task_attempts=int(env.get("MAX_TASK_ATTEMPTS", 3)),
            job_lease_s=int(env.get("JOB_LEASE_S", 300)),
            sweep_interval_s=float(env.get("SWEEP_INTERVAL_S", 15)),
            batch_max=int(env.get("BATCH_MAX", 16)),
            batch_wait_ms=float(env.get("BATCH_WAIT_MS", 25)),
            queue_cache_s=float(env.get("QUEUE_CACHE_S", 1.0)),
            audit_key_file=Path(env.get("AUDIT_SIGNING_KEY_FILE", base / "keys" / "audit-ed25519.pem")),
            checkpoint_log=Path(env.get("AUDIT_CHECKPOINT_LOG", base / "keys" / "checkpoints.jsonl")),
            checkpoint_interval_s=float(env.get("CHECKPOINT_INTERVAL_S", 300)),
            audit_public_key_file=(Path(env["AUDIT_PUBLIC_KEY_FILE"]) if env.get("AUDIT_PUBLIC_KEY_FILE")
                                   else None),
            public_url=env.get("PUBLIC_URL", "http://localhost:5000/").rstrip("/") + "/",
            promotion_margin=float(env.get("DERMATRIAGE_PROMOTION_MARGIN", 0.02)),
            promotion_min_reviewed=int(env.get("DERMATRIAGE_PROMOTION_MIN_REVIEWED", 30)),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.env == "production":
            if self.secret_key == DEFAULT_SECRET_KEY or not strong_secret(self.secret_key):
                raise ConfigurationError(
                    "DERMATRIAGE_ENV=production needs SECRET_KEY set to a random value of at "
                    "least 32 characters (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`); "
                    "refusing to start with the default key or a guessable one")
            if self.database_url.startswith("sqlite"):
                raise ConfigurationError("production needs DATABASE_URL pointing to PostgreSQL")

    @property
    def broker_transport_options(self) -> dict:
        if self.broker_url.startswith("filesystem"):
            folder = self.data_dir / "broker"
            return {"data_folder_in": str(folder / "queue"), "data_folder_out": str(folder / "queue"),
                    "processed_folder": str(folder / "processed"), "store_processed": False,
                    # kombu would otherwise write its control (pidbox) files into the cwd
                    "control_folder": str(folder / "control"),
                    # kombu's default (1 s) is also how long a worker whose threads are all
                    # busy sleeps before it takes the next message: it capped the embedded
                    # worker at one batch per second (bench pipeline: 8 cases/s). A listing
                    # of the queue folder every 50 ms costs nothing.
                    "polling_interval": 0.05}
        # Priorities (Redis): one list per step, the lowest step served first; a job the
        # sweeper re-sends goes to step 0, ahead of the backlog (services/broker.py).
        return {"visibility_timeout": self.job_lease_s * 4, "queue_order_strategy": "priority",
                "priority_steps": list(PRIORITY_STEPS), "sep": ":"}

    def celery_config(self) -> dict:
        """Celery's settings, the same for the web (which only sends) and the workers."""
        return {
            "broker_url": self.broker_url,
            "broker_transport_options": self.broker_transport_options,
            "broker_connection_retry_on_startup": True,
            "broker_connection_timeout": 3,
            "task_ignore_result": True,
            # A task is acknowledged only after it finished; if the worker dies mid-task the
            # message goes back (the sweeper covers transports that cannot redeliver).
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "worker_prefetch_multiplier": 1,
            "task_default_queue": ANALYSIS_QUEUE,
            "worker_hijack_root_logger": False,
        }


def triage_targets(env: dict | None = None) -> dict:
    """The clinical targets the referral tiers are fitted to at build time (risk.py): the
    share of malignant lesions that must be routine or urgent, and of melanomas urgent."""
    env = os.environ if env is None else env
    return {"malignant_seen": _share(env.get("DERMATRIAGE_TRIAGE_MALIGNANT_SEEN", "0.97"),
                                     "DERMATRIAGE_TRIAGE_MALIGNANT_SEEN"),
            "melanoma_urgent": _share(env.get("DERMATRIAGE_TRIAGE_MELANOMA_URGENT", "0.90"),
                                      "DERMATRIAGE_TRIAGE_MELANOMA_URGENT")}


def _share(raw: str, var: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{var} must be a share between 0 and 1, not {raw!r}") from None
    if not 0 < value <= 1:
        raise ConfigurationError(f"{var} must be a share between 0 and 1, not {raw!r}")
    return value
