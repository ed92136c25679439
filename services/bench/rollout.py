"""Rolling a model out and back under load, with real worker processes.

A temporary PostgreSQL database, Redis as the broker (a database index of its own, emptied
first) and a temporary object store. The model in service (A) and a twin of it (B: the same
weights nudged in the last decimals, a new version) are registered; A is the champion.
``workers`` analysis worker processes run while cases are submitted at a steady ``rate``:

1. ``phase_s`` seconds with A; then B is promoted; ``phase_s`` seconds; then rolled back;
   ``phase_s`` seconds; then the stream stops and every case is waited for.
   Reported: seconds until every worker's first job with the new champion (promotion and
   rollback), jobs analysed by each version, and the cases lost (never analysed), analysed
   twice (more than one version or prediction per image) and analysed by a version that was
   not the champion when the job started (the registry's event log is the timeline).
2. Shadow cost: ``phase_s`` seconds of the stream with no shadow, then ``phase_s`` with B as
   the shadow and a shadow worker reading every case: the champion's latency (submit to
   queued), p50 and p95, of the two phases side by side. All on the same machine: on two
   CPU cores the shadow worker competes with the champion's for the cores, which a
   deployment avoids by giving it hardware of its own.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from .pipeline import _images, _terminate


def _twin(model: Path, folder: Path) -> Path:
    """B: A's weights nudged by 1e-4 in one bias, as a new version."""
    import torch

    from ..diagnosis import artifact
    loaded = artifact.load(model, "cpu")
    net, card = loaded.model, loaded.card
    with torch.no_grad():
        next(p for p in net.parameters() if p.ndim == 1).add_(1e-4)
    card.version = f"{card.version}-twin"
    out = folder / "twin.pt"
    artifact.save(net, card, out)
    return out


def _stream(rt, gp, images: list[bytes], rate: float, stop: threading.Event, ids: list[str]) -> None:
    from .. import cases
    i = 0
    next_at = time.monotonic()
    while not stop.is_set():
        form = {"patient_pseudonym": f"R{i}", "age": "61", "sex": "male", "body_site": "back"}
        ids.append(cases.submit_case(rt, gp, form, [cases.Upload(f"{i}.jpg", images[i % len(images)])]).id)
        i += 1
        next_at += 1.0 / rate
        stop.wait(max(0.0, next_at - time.monotonic()))


@contextmanager
def _streaming(rt, gp, images: list[bytes], rate: float):
    """Cases submitted steadily while the block runs; yields their ids as they come."""
    ids: list[str] = []
    stop = threading.Event()
    feeder = threading.Thread(target=_stream, args=(rt, gp, images, rate, stop, ids))
    feeder.start()
    try:
        yield ids
    finally:
        stop.set()
        feeder.join()


def _latency(rt, ids: list[str]) -> dict:
    from sqlalchemy import select

    from ..models import Case
    with rt.read() as s:
        rows = s.execute(select(Case.created_at, Case.queued_at).where(Case.id.in_(ids))).all()
    lat = sorted((q - c).total_seconds() for c, q in rows if q is not None)
    return {"cases": len(ids), "p50_s": round(statistics.median(lat), 3),
            "p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3)}


def _wait_all(rt, ids: list[str], timeout: float) -> int:
    from sqlalchemy import func, select

    from ..models import AnalysisJob
    from ..vocabulary import JobStatus
    end = time.time() + timeout
    while True:
        with rt.read() as s:
            open_jobs = s.scalar(select(func.count()).select_from(AnalysisJob).where(
                AnalysisJob.case_id.in_(ids), AnalysisJob.status.not_in((JobStatus.DONE, JobStatus.FAILED))))
        if open_jobs == 0 or time.time() > end:
            return open_jobs
        time.sleep(0.2)


def _switch_seconds(rt, at, version: str) -> dict:
    """Per worker: seconds from the change to its first job analysed by ``version``."""
    from sqlalchemy import select

    from ..models import AnalysisJob, Prediction
    with rt.read() as s:
        rows = s.execute(select(AnalysisJob.worker, AnalysisJob.started_at).join(
            Prediction, Prediction.case_id == AnalysisJob.case_id).where(
            Prediction.model_version == version, AnalysisJob.started_at >= at)).all()
    first: dict[str, float] = {}
    for worker, started in rows:
        seconds = (started - at).total_seconds()
        first[worker] = min(first.get(worker, seconds), seconds)
    return first


def _audit_versions(rt, ids: list[str]) -> dict:
    """Jobs per version; lost, twice, and by a version that was not champion at the start."""
    from collections import Counter

    from sqlalchemy import select

    from ..models import AnalysisJob, ModelEvent, ModelVersion, Prediction
    from ..vocabulary import JobStatus
    with rt.read() as s:
        label = {v.id: v.version for v in s.scalars(select(ModelVersion))}
        timeline = [(e.at, label[e.version_id]) for e in s.scalars(select(ModelEvent).where(
            ModelEvent.action.in_(("promote", "override", "rollback"))).order_by(ModelEvent.id))]
        jobs = {j.case_id: j for j in s.scalars(select(AnalysisJob).where(AnalysisJob.case_id.in_(ids)))}
        preds: dict[str, list] = {}
        for p in s.scalars(select(Prediction).where(Prediction.case_id.in_(ids))):
            preds.setdefault(p.case_id, []).append(p)

    def champion_at(t):
        current = None
        for at, version in timeline:
            if at <= t:
                current = version
        return current
    by_version: Counter = Counter()
    lost = twice = wrong = 0
    for case_id in ids:
        job, mine = jobs.get(case_id), preds.get(case_id, [])
        if job is None or job.status != JobStatus.DONE or not mine:
            lost += 1
            continue
        versions = {p.model_version for p in mine}
        if len(versions) > 1 or len({p.image_id for p in mine}) != len(mine):
            twice += 1
        version = mine[0].model_version
        by_version[version] += 1
        wrong += version != champion_at(job.started_at)
    return {"jobs_by_version": dict(by_version), "lost": lost, "analysed_twice": twice,
            "analysed_by_a_version_not_champion_then": wrong}


def bench_rollout(model: Path, shared: Path, postgres_admin_url: str, redis_url: str, rate: float = 3.0,
                  phase_s: float = 20.0, workers: int = 2) -> dict:
    from sqlalchemy import create_engine, text

    from .. import migrate, registry
    from ..config import PROJECT_ROOT, Settings
    from ..models import utcnow
    from ..runtime import Runtime
    from ..users import create_user

    import redis as redis_lib
    redis_lib.Redis.from_url(redis_url).flushdb()
    name = f"dt_bench_rollout_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres_admin_url.rsplit("/", 1)[0] + f"/{name}"
    tmp = Path(tempfile.mkdtemp(prefix="dt-bench-rollout-"))
    env = {**os.environ, "DATABASE_URL": url, "BROKER_URL": redis_url, "DERMATRIAGE_DATA_DIR": str(tmp),
           "SECRET_KEY": uuid.uuid4().hex * 2, "DERMATRIAGE_ENV": "test", "DERMATRIAGE_MODEL_PATH": str(model),
           "SWEEP_INTERVAL_S": "2"}
    procs: list[subprocess.Popen] = []
    logs = open(tmp / "processes.log", "ab")

    def start(queues: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "services.cli", "worker", "--queues", queues,
                              "--concurrency", "2", "--loglevel", "WARNING"], env=env, cwd=PROJECT_ROOT,
                             stdout=logs, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p
    try:
        migrate.upgrade(url)
        rt = Runtime(Settings.from_env(env))
        with rt.transaction() as s:
            gp = create_user(s, "bench-gp", "bench-gp-password", "gp")
            s.flush()
            s.expunge(gp)
        a = registry.register(rt, model, "bench")[0]
        registry.promote(rt, a["id"], "bench", "the model in service", override=True)
        b = registry.register(rt, _twin(model, tmp), "bench")[0]
        images = _images(shared, 40)
        for _ in range(workers):
            start("analysis")
        start("cpu")
        with _streaming(rt, gp, images, 1.0) as warm:
            time.sleep(3)
        if _wait_all(rt, warm, 180):
            raise RuntimeError(f"the workers did not analyse the warm-up cases; see {tmp / 'processes.log'}")

        # 1. promotion and rollback under a steady stream
        with _streaming(rt, gp, images, rate) as ids:
            time.sleep(phase_s)
            promoted_at = utcnow()
            registry.promote(rt, b["id"], "bench", "rollout bench", override=True)
            time.sleep(phase_s)
            rolled_at = utcnow()
            registry.rollback(rt, "bench", "rollout bench")
            time.sleep(phase_s)
        open_jobs = _wait_all(rt, ids, 300)
        to_b = _switch_seconds(rt, promoted_at, b["version"])
        to_a = _switch_seconds(rt, rolled_at, a["version"])
        rollout = {"cases": len(ids), "workers": workers, "rate_per_s": rate, "still_open": open_jobs,
                   "promotion_s_until_every_worker": round(max(to_b.values()), 2) if len(to_b) == workers else None,
                   "rollback_s_until_every_worker": round(max(to_a.values()), 2) if len(to_a) == workers else None,
                   "per_worker": {"promotion": to_b, "rollback": to_a}, **_audit_versions(rt, ids)}

        # 2. the champion's latency without and with a shadow reading every case
        with _streaming(rt, gp, images, rate) as plain:
            time.sleep(phase_s)
        _wait_all(rt, plain, 300)
        registry.shadow(rt, b["id"], "bench", "shadow cost")
        start("shadow")
        with _streaming(rt, gp, images, rate) as shadowed:
            time.sleep(phase_s)
        _wait_all(rt, shadowed, 300)
        from sqlalchemy import func, select

        from ..models import ShadowReading
        deadline = time.time() + 120
        while time.time() < deadline:
            with rt.read() as s:
                read = s.scalar(select(func.count()).select_from(ShadowReading).where(
                    ShadowReading.case_id.in_(shadowed)))
            if read >= len(shadowed):
                break
            time.sleep(0.5)
        without, with_shadow = _latency(rt, plain), _latency(rt, shadowed)
        return {"rollout": rollout,
                "shadow_cost": {"without_shadow": without, "with_shadow": with_shadow,
                                "shadow_readings": read,
                                "p50_ratio": round(with_shadow["p50_s"] / max(without["p50_s"], 1e-6), 2),
                                "p95_ratio": round(with_shadow["p95_s"] / max(without["p95_s"], 1e-6), 2)}}
    finally:
        for p in procs:
            _terminate(p)
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
