"""The analysis use case a worker runs for one job: exactly once in effect.

Idempotent at every step, so a redelivered or re-dispatched job is harmless:
- a job already done or failed is left alone;
- each image gets at most one prediction per model version (a unique constraint; a
  concurrent duplicate loses at commit and is skipped);
- map objects have deterministic keys and contents, so rewriting them changes nothing;
- the prediction and its audit record commit in one transaction.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Callable

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from . import audit, risk
from .errors import Unavailable
from .models import AnalysisJob, Case, CaseImage, Prediction, utcnow
from .runtime import Runtime
from .storage import StorageError
from .vocabulary import CaseStatus, ImageKind, JobStatus

if TYPE_CHECKING:
    from .batching import MicroBatcher
    from .diagnosis.engine import AnalysisResult

log = logging.getLogger(__name__)

# Errors worth retrying: the database or object store was briefly unreachable.
TRANSIENT = (Unavailable, OperationalError, StorageError, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    weights_sha256: str
    thresholds: dict
    bcc_threshold: float
    operating_points: dict | None = None      # diagnosis operating points for the risk
    calibration: dict | None = None
    triage: dict | None = None                # the card's triage section (risk.Triage)

    @classmethod
    def of(cls, card) -> "ModelInfo":
        return cls(card.name, card.version, card.weights_sha256, dict(card.thresholds), card.bcc_threshold,
                   dict(card.operating_points), dict(card.calibration), dict(card.triage))


@dataclass
class Analyser:
    """The model a worker process serves, behind its micro-batcher, and the group commit
    that stores each micro-batch's results in one transaction."""

    batcher: "MicroBatcher"
    model: ModelInfo
    writer: "MicroBatcher"
    key: str = ""              # what it was loaded from: the weights' hash, or the file's path
    users: int = 0             # jobs analysing with it now
    retiring: bool = False     # replaced: closed when its last job is done

    def analyse(self, images: list[bytes]) -> list["AnalysisResult"]:
        return self.batcher.run(images)

    def commit(self, write: Callable[[Session], None]) -> None:
        outcome = self.writer.run([write])[0]
        if outcome is not None:
            raise outcome

    def close(self) -> None:
        self.batcher.close()
        self.writer.close()


_analyser_lock = threading.Lock()


def _source(rt: Runtime) -> tuple[str, "Callable[[], object]"]:
    """What this worker should serve now: the registry's champion (fetched from the object
    store and checked), else, while the registry is empty, the file at DERMATRIAGE_MODEL_PATH."""
    from . import registry
    champion = registry.champion(rt)
    if champion is None:
        return str(rt.settings.model_path), lambda: rt.settings.model_path
    return champion.weights_sha256, lambda: registry.fetch(rt, champion)


def load_analyser(rt: Runtime) -> Analyser:
    """The process's engine for the model in service now, loaded on first use and again when
    the champion changes (no restart); the one it replaces finishes its jobs, then closes.

    Loaded lazily inside the worker process (never in a parent that forks), so CUDA is
    initialised only where it is used."""
    key, locate = _source(rt)
    loaded = getattr(rt, "_analyser", None)
    if loaded is not None and loaded.key == key:
        return loaded
    with _analyser_lock:
        loaded = getattr(rt, "_analyser", None)
        if loaded is None or loaded.key != key:
            from .batching import MicroBatcher
            from .diagnosis.engine import Engine

            engine = Engine.load(locate())
            card = engine.card
            # The jobs of one inference batch reach the writer within a millisecond of each
            # other; a short wait gathers them without delaying a lone job noticeably.
            fresh = Analyser(MicroBatcher(engine.analyse, rt.settings.batch_max, rt.settings.batch_wait_ms),
                             ModelInfo.of(card),
                             MicroBatcher(lambda writes: commit_together(rt, writes), rt.settings.batch_max, 5.0),
                             key=key)
            if loaded is not None:
                log.info("model %s %s replaces %s %s", card.name, card.version, loaded.model.name,
                         loaded.model.version)
                loaded.retiring = True
                if loaded.users == 0:
                    loaded.close()
            rt._analyser = loaded = fresh
            log.info("model %s %s loaded on %s", card.name, card.version, engine.device)
    return loaded


def analyse_with_champion(rt: Runtime, job_id: str) -> str:
    """A worker's job: analysed wholly by the model that is champion when it starts. A
    promotion or rollback that lands between picking the model and starting the job is
    caught at the start (StaleModel) and the job taken again with the new champion."""
    from . import registry
    for _ in range(3):
        with serving(rt) as analyser:
            sha = analyser.key if len(analyser.key) == 64 else None     # registry-served
            try:
                return run_job(rt, job_id, analyser.analyse, analyser.model, analyser.commit, serving_sha=sha)
            except StaleModel as exc:
                log.info("job %s: %s; taking it with the new champion", job_id, exc)
                registry.forget_champion(rt)
    raise Unavailable("the champion kept changing while this job started; it will be retried")


@contextmanager
def serving(rt: Runtime):
    """The analyser for one job: the model in service when the job starts analyses all of
    it, even if a promotion or rollback lands meanwhile."""
    while True:
        analyser = load_analyser(rt)
        with _analyser_lock:
            if not analyser.retiring:      # not replaced (and closed) between the two steps
                analyser.users += 1
                break
    try:
        yield analyser
    finally:
        with _analyser_lock:
            analyser.users -= 1
            done = analyser.retiring and analyser.users == 0
        if done:
            analyser.close()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class StaleModel(Exception):
    """The champion changed after this worker picked its model: take the job with the new one."""


def start_job(rt: Runtime, job_id: str, now=None, serving_sha: str | None = None) -> bool:
    """Mark the job running; False if there is nothing to do (done, failed, or being run
    by a live worker right now). With ``serving_sha`` (a worker serving the registry's
    champion), in the same transaction: the champion must still be that model, else
    ``StaleModel`` (nothing changed), so a job is only ever started by the version that is
    champion at that moment."""
    from .models import ModelVersion
    now = now or utcnow()
    with rt.transaction() as s:
        job = s.scalar(select(AnalysisJob).where(AnalysisJob.id == job_id).with_for_update())
        if job is None:
            log.warning("job %s does not exist", job_id)
            return False
        if serving_sha is not None:
            champion = s.scalar(select(ModelVersion.weights_sha256).where(ModelVersion.status == "champion"))
            if champion is not None and champion != serving_sha:
                raise StaleModel(f"the champion is now {champion[:12]}")
        job.deliveries += 1
        if job.status in (JobStatus.DONE, JobStatus.FAILED):
            return False
        lease = timedelta(seconds=rt.settings.job_lease_s)
        alive_at = job.heartbeat_at or job.started_at
        if job.status == JobStatus.RUNNING and alive_at and now - alive_at < lease:
            return False
        job.status, job.started_at, job.worker = JobStatus.RUNNING, now, worker_name()
        job.heartbeat_at = None
        job.attempts += 1
        s.get(Case, job.case_id).status = CaseStatus.ANALYSING
    return True


def run_job(rt: Runtime, job_id: str, analyse: Callable[[list[bytes]], list["AnalysisResult"]],
            model: ModelInfo, commit: Callable[[Callable[[Session], None]], None] | None = None,
            serving_sha: str | None = None) -> str:
    """Analyse every dermoscopic image of the job's case not yet analysed by this model.

    Everything the job writes (its predictions, their audit records, the case's risk and
    the job's end) goes to ``commit`` as one unit: a worker passes its group commit, which
    puts the units of a whole micro-batch in one transaction; alone, it is a transaction."""
    if not start_job(rt, job_id, serving_sha=serving_sha):
        return "skipped"
    with rt.read() as s:
        job = s.get(AnalysisJob, job_id)
        case_id = job.case_id
        done = set(s.scalars(select(Prediction.image_id).where(
            Prediction.case_id == case_id, Prediction.model_name == model.name,
            Prediction.model_version == model.version)))
        todo = [(i.id, i.object_key, i.sha256) for i in s.scalars(
            select(CaseImage).where(CaseImage.case_id == case_id, CaseImage.kind == ImageKind.DERMOSCOPIC)
            .order_by(CaseImage.position)) if i.id not in done]
    with heartbeat(rt, job_id):
        stored = []
        if todo:
            data = [rt.store.get(key) for _, key, _ in todo]
            for (image_id, _, sha), blob in zip(todo, data):
                if hashlib.sha256(blob).hexdigest() != sha:
                    raise StorageError(f"stored image {image_id} does not match its sha256")
            results = analyse(data)
            stored = [(image_id, sha, result, _put_map_array(rt, image_id, result, model))
                      for (image_id, _, sha), result in zip(todo, results)]

        def write(s: Session) -> None:
            for image_id, sha, result, map_array in stored:
                _store_prediction(s, case_id, image_id, sha, result, model, map_array)
            _finish_job(s, job_id, model)
        if commit is None:
            with rt.transaction() as s:
                write(s)
        else:
            commit(write)
    return "done"


def commit_together(rt: Runtime, writes: list[Callable[[Session], None]]) -> list:
    """Group commit: run the writes of several jobs in one transaction, each in a savepoint.

    Why: a micro-batch ends for all its jobs at once, and a transaction per job costs a
    commit (an fsync) and, on PostgreSQL, a turn on the audit chain's lock each; one
    transaction per micro-batch takes both once. A write that raises is rolled back alone
    and its job gets the error; if the commit itself fails, every job gets that error (and
    retries: nothing of it was stored)."""
    outcomes: list = []
    with rt.transaction() as s:
        for write in writes:
            try:
                with s.begin_nested():
                    write(s)
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(exc)
    return outcomes


@contextmanager
def heartbeat(rt: Runtime, job_id: str):
    """While the block runs, stamp the job every lease / 3, so that the sweeper can tell this
    (alive, maybe slow) worker from a dead one without waiting for a fixed timeout."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(rt.settings.job_lease_s / 3):
            try:
                with rt.transaction() as s:
                    s.execute(update(AnalysisJob).where(AnalysisJob.id == job_id,
                                                        AnalysisJob.status == JobStatus.RUNNING)
                              .values(heartbeat_at=utcnow()))
            except Exception as exc:  # a missed beat only makes the job look older
                log.warning("heartbeat of job %s failed: %s", job_id, exc)
    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def _put_map_array(rt: Runtime, image_id: str, result: "AnalysisResult", model: ModelInfo) -> dict:
    """The hot path stores one compact object per prediction: all maps as one array. Overlay
    PNGs are rendered when someone asks for one (cases.get_map) and cached there. The key
    names the contents' hash: two deliveries of one job that race (or a GPU and a CPU worker,
    or two versions of the encoder during an upgrade) never overwrite the object that the
    winner's audit record vouches for."""
    from .diagnosis.render import encode_map_array

    array = encode_map_array([m.normalised for m in result.maps])
    digest = hashlib.sha256(array).hexdigest()
    ref = {"key": f"maps/{image_id}/{model.name}-{model.version}/{digest[:16]}.npz",
           "sha256": digest,
           "targets": [m.target for m in result.maps],
           "shape": [len(result.maps), *result.maps[0].normalised.shape]}
    rt.store.put(ref["key"], array, "application/octet-stream")
    return ref


def _store_prediction(s: Session, case_id: str, image_id: str, image_sha: str,
                      result: "AnalysisResult", model: ModelInfo, map_array: dict) -> None:
    maps: dict = {}
    summary = result.summary()
    try:
        with s.begin_nested():
            pred = Prediction(
                image_id=image_id, case_id=case_id, model_name=model.name,
                model_version=model.version, model_sha256=model.weights_sha256,
                preprocessing_version=result.preprocessing_version,
                bcc_probability=result.bcc_probability, diagnosis=result.clinical.diagnosis,
                diagnosis_probabilities=result.diagnosis_probabilities,
                pattern_probabilities=result.pattern_probabilities,
                patterns_present=result.patterns_present, clinical=summary["clinical"],
                map_numbers=summary["map_numbers"], maps=maps, map_array=map_array,
                quality=summary["quality"], scope=summary["scope"])
            s.add(pred)
            s.flush()
            audit.append(s, case_id, {
                "kind": "explanation", "case_id": case_id, "prediction_id": pred.id,
                "image_id": image_id, "image_sha256": image_sha,
                "model": {"name": model.name, "version": model.version,
                          "weights_sha256": model.weights_sha256},
                "preprocessing_version": result.preprocessing_version,
                "outputs": {"bcc_probability": result.bcc_probability,
                            "pattern_probabilities": result.pattern_probabilities,
                            "patterns_present": result.patterns_present,
                            "diagnosis_probabilities": result.diagnosis_probabilities},
                "thresholds": {"patterns": model.thresholds, "bcc": model.bcc_threshold,
                               "operating_points": model.operating_points or {}},
                "calibration": model.calibration or {},
                "clinical": summary["clinical"], "map_numbers": summary["map_numbers"],
                "maps": maps, "map_array": map_array, "quality": summary["quality"],
                "scope": summary["scope"], "image": summary["image"],
                "lesion_mask_method": result.lesion_mask_method,
                "worker": worker_name(), "device": result.device,
                "timings_ms": result.timings_ms, "recorded_at": utcnow().isoformat(),
            }, prediction_id=pred.id)
    except IntegrityError:
        # Another delivery of this job stored it first: exactly one prediction remains.
        log.info("prediction for image %s and %s %s already stored", image_id, model.name, model.version)


def _finish_job(s: Session, job_id: str, model: ModelInfo) -> None:
    job = s.get(AnalysisJob, job_id)
    case = s.get(Case, job.case_id)
    preds = s.scalars(select(Prediction).where(
        Prediction.case_id == case.id, Prediction.model_name == model.name,
        Prediction.model_version == model.version)).all()
    findings = [risk.ImageFinding(p.bcc_probability, risk.evidence_found(p.clinical),
                                  p.clinical["agreement"], p.quality["issues"],
                                  p.diagnosis_probabilities, in_scope=p.in_scope,
                                  scope_reason="" if p.in_scope else p.scope["reason"])
                for p in preds]
    _queue_case(case, findings, ai_available=True, operating_points=model.operating_points,
                triage=model.triage)
    job.status, job.finished_at, job.last_error = JobStatus.DONE, utcnow(), None


def fail_job(rt: Runtime, job_id: str, error: str) -> None:
    """Give up on the AI: the case still goes to the queue, flagged for manual review."""
    with rt.transaction() as s:
        job = s.get(AnalysisJob, job_id)
        if job is None or job.status == JobStatus.DONE:
            return
        case = s.get(Case, job.case_id)
        job.status, job.finished_at, job.last_error = JobStatus.FAILED, utcnow(), error[:2000]
        _queue_case(case, [], ai_available=False)


def record_error(rt: Runtime, job_id: str, error: str) -> int:
    """Note a failed attempt; returns the attempts made so far."""
    with rt.transaction() as s:
        job = s.get(AnalysisJob, job_id)
        if job is None:
            return 0
        job.last_error = error[:2000]
        if job.status == JobStatus.RUNNING:
            job.status = JobStatus.QUEUED
        return job.attempts


def _queue_case(case: Case, findings: list[risk.ImageFinding], ai_available: bool,
                operating_points: dict | None = None, triage: dict | None = None) -> None:
    r = risk.assess(findings, bleeding=case.bleeding, changed=case.changed,
                    body_site=case.body_site, age=case.age, received_at=case.created_at,
                    ai_available=ai_available, operating_points=operating_points, triage=triage)
    if case.status not in (CaseStatus.CLAIMED, CaseStatus.REVIEWED):
        case.status = CaseStatus.ANALYSED if ai_available else CaseStatus.ANALYSIS_FAILED
    case.ai_available = ai_available
    case.risk_score, case.risk_tier, case.risk_reasons = r.score, r.tier, r.reasons
    case.needs_attention, case.due_at, case.escalate_at = r.needs_attention, r.due_at, r.escalate_at
    case.queued_at = case.queued_at or utcnow()
