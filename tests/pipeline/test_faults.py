"""Faults on the real stack (PostgreSQL, Redis, S3): nothing lost, nothing analysed twice."""

import io
import signal
import time

from sqlalchemy import func, select

from services.models import AnalysisJob, Case, CaseImage, ExplanationRecord, Prediction
from tests.factories import stop, token_for, wait_until


def submit(stack, jpegs):
    client = stack.app().test_client()
    r = client.post("/api/v1/cases", headers=token_for(client, "gp1"), content_type="multipart/form-data",
                    data={"patient_pseudonym": "F-1", "age": "66", "sex": "female", "body_site": "nose",
                          "images": [(io.BytesIO(j), f"{i}.jpg") for i, j in enumerate(jpegs)]})
    assert r.status_code == 201, r.json
    return r.json["id"]


def job_of(rt, case_id) -> AnalysisJob:
    with rt.sessions() as s:
        return s.scalar(select(AnalysisJob).where(AnalysisJob.case_id == case_id))


def assert_analysed_exactly_once(rt, case_id, n_images):
    with rt.sessions() as s:
        assert s.get(Case, case_id).status == "analysed"
        assert s.scalar(select(func.count()).select_from(CaseImage).where(CaseImage.case_id == case_id)) == n_images
        per_image = s.execute(select(Prediction.image_id, func.count()).where(Prediction.case_id == case_id)
                              .group_by(Prediction.image_id)).all()
        assert len(per_image) == n_images and all(n == 1 for _, n in per_image)
        assert s.scalar(select(func.count()).select_from(ExplanationRecord)
                        .where(ExplanationRecord.case_id == case_id)) == n_images


def test_worker_killed_mid_analysis_case_completes_after_restart(full_stack, ham_jpegs, tmp_path):
    rt = full_stack.runtime()
    # The first worker's batcher holds its batch open until it is full (64 images) or an
    # hour has passed: the job is pinned mid-analysis (running, nothing stored) until the kill.
    first = full_stack.start_worker(tmp_path / "w1.log", BATCH_MAX=64, BATCH_WAIT_MS=3_600_000)
    try:
        case_id = submit(full_stack, ham_jpegs[:3])
        wait_until(lambda: job_of(rt, case_id).status == "running", timeout=60, interval=0.05,
                   what="the job to start")
        stop(first, signal.SIGKILL)
    finally:
        stop(first, signal.SIGKILL)
    job = job_of(rt, case_id)
    with rt.sessions() as s:
        assert job.status == "running" and s.scalar(select(func.count()).select_from(Prediction)) == 0
    second = full_stack.start_worker(tmp_path / "w2.log", JOB_LEASE_S=2)
    try:
        wait_until(lambda: job_of(rt, case_id).status == "done", timeout=90, what="the job to finish")
    finally:
        stop(second)
    assert_analysed_exactly_once(rt, case_id, 3)
    assert job_of(rt, case_id).attempts >= 2


def test_broker_down_at_submission_case_accepted_and_analysed_once(make_product, tmp_path, ham_jpegs,
                                                                   private_redis):
    port, state, start = private_redis
    stack = make_product("full", BROKER_URL=f"redis://127.0.0.1:{port}/0")
    rt = stack.runtime()
    state["proc"].terminate()
    state["proc"].wait(10)
    case_id = submit(stack, ham_jpegs[:2])                 # broker down: still 201
    job = job_of(rt, case_id)
    assert job.status == "pending" and job.dispatches == 0
    state["proc"] = start()                                # broker back
    worker = stack.start_worker(tmp_path / "w.log")
    try:
        wait_until(lambda: job_of(rt, case_id).status == "done", timeout=90, what="the job to finish")
    finally:
        stop(worker)
    assert_analysed_exactly_once(rt, case_id, 2)
    assert job_of(rt, case_id).dispatches >= 1


def test_embedded_worker_survives_an_unreadable_message(embedded_stack, ham_jpegs, tmp_path):
    """A message file that does not parse (kombu's writer used to leave one for a moment; a
    disk fault can leave one for good) is dropped; before, the worker stopped for good."""
    rt = embedded_stack.runtime()
    queue = rt.settings.data_dir / "broker" / "queue"
    worker = embedded_stack.start_worker(tmp_path / "w.log")
    try:
        queue.mkdir(parents=True, exist_ok=True)
        (queue / "0_unreadable.analysis.msg").write_bytes(b'{"half a mess')
        wait_until(lambda: not (queue / "0_unreadable.analysis.msg").exists(), timeout=60,
                   what="the worker to take the unreadable message")
        case_id = submit(embedded_stack, ham_jpegs[:1])
        wait_until(lambda: job_of(rt, case_id).status == "done", timeout=90, what="the job to finish")
        assert worker.poll() is None
    finally:
        stop(worker)
    assert_analysed_exactly_once(rt, case_id, 1)
    assert "dropped an unreadable message" in (tmp_path / "w.log").read_text()


def test_a_worker_without_a_valid_model_takes_no_analysis_job_and_says_why_once(embedded_stack, ham_jpegs,
                                                                                 tmp_path):
    """Before, such a worker received every job and failed it, again at every re-send."""
    rt = embedded_stack.runtime()
    missing = tmp_path / "no-such-model.pt"
    alone = embedded_stack.start_worker(tmp_path / "alone.log", queues="analysis",
                                        DERMATRIAGE_MODEL_PATH=str(missing))
    try:
        wait_until(lambda: alone.poll() is not None, timeout=60, what="the analysis-only worker to exit")
    finally:
        stop(alone)
    assert alone.returncode == 3                                  # its supervisor sees it down
    mixed = embedded_stack.start_worker(tmp_path / "mixed.log", DERMATRIAGE_MODEL_PATH=str(missing))
    try:
        wait_until(lambda: "takes no analysis jobs" in (tmp_path / "mixed.log").read_text(), timeout=60,
                   what="the worker to say why")
        case_id = submit(embedded_stack, ham_jpegs[:1])
        wait_until(lambda: job_of(rt, case_id).status == "queued", timeout=30, what="the job to be sent")
        time.sleep(5)                                             # several polls of the queue
        job = job_of(rt, case_id)
        assert job.status == "queued" and job.deliveries == 0 and job.attempts == 0
        assert mixed.poll() is None                               # it goes on with the cpu queue
    finally:
        stop(mixed)
    for log in ("alone.log", "mixed.log"):
        text = (tmp_path / log).read_text()
        assert text.count("takes no analysis jobs") == 1 and str(missing) in text


def test_healthz_shows_when_no_worker_can_analyse(stack, tmp_path):
    """Counted by Celery's broadcast inspection (Redis and the embedded filesystem broker
    alike): a worker without a valid model stops consuming the analysis queue, so it does not
    count."""
    from services import runtime as runtime_module

    full_stack = stack
    runtime_module.CAPACITY_TTL_S = 0.0
    client = full_stack.app().test_client()
    missing = tmp_path / "no-such-model.pt"
    broken = full_stack.start_worker(tmp_path / "broken.log", DERMATRIAGE_MODEL_PATH=str(missing))
    try:
        wait_until(lambda: "takes no analysis jobs" in (tmp_path / "broken.log").read_text(), timeout=60,
                   what="the worker to say why")
        wait_until(lambda: client.get("/healthz").json["checks"].get("analysis_workers") == "none",
                   timeout=30, what="health to see no worker that can analyse")
        health = client.get("/healthz").json
        assert health["status"] == "degraded"
        good = full_stack.start_worker(tmp_path / "good.log", queues="analysis")
        try:
            wait_until(lambda: client.get("/healthz").json["checks"].get("analysis_workers") == "1",
                       timeout=60, what="health to see the worker that can analyse")
            assert client.get("/healthz").json["status"] == "ok"
        finally:
            stop(good)
    finally:
        stop(broken)
        runtime_module.CAPACITY_TTL_S = 10.0
