"""The worker's use case in-process: idempotent, one prediction per image and model."""

import io
import threading

import pytest
from sqlalchemy import func, select

from services import analysis, jobs
from services.batching import MicroBatcher
from services.diagnosis.engine import Engine
from services.diagnosis.patterns import TARGETS
from services.models import AnalysisJob, Case, ExplanationRecord, Prediction

from tests.factories import poll, post_case, token_for


@pytest.fixture
def engine(pipeline_model):
    return Engine.load(pipeline_model, "cpu")


def model_info(engine):
    c = engine.card
    return analysis.ModelInfo(c.name, c.version, c.weights_sha256, dict(c.thresholds), c.bcc_threshold)


def submit(stack, images):
    client = stack.app().test_client()
    h = token_for(client, "gp1")
    r = post_case(client, h, images=[("images", (io.BytesIO(b), f"{i}.jpg")) for i, b in enumerate(images)])
    assert r.status_code == 201, r.json
    rt = stack.runtime()
    with rt.sessions() as s:
        return r.json["id"], s.scalar(select(AnalysisJob.id).where(AnalysisJob.case_id == r.json["id"]))


def test_run_job_analyses_queues_and_records_once(embedded_stack, engine, ham_jpegs):
    case_id, job_id = submit(embedded_stack, ham_jpegs[:3])
    rt = embedded_stack.runtime()
    assert analysis.run_job(rt, job_id, engine.analyse, model_info(engine)) == "done"
    assert analysis.run_job(rt, job_id, engine.analyse, model_info(engine)) == "skipped"
    with rt.sessions() as s:
        case = s.get(Case, case_id)
        assert case.status == "analysed" and case.risk_tier in ("urgent", "routine", "low")
        assert case.risk_reasons and case.due_at > case.created_at
        preds = s.scalars(select(Prediction).where(Prediction.case_id == case_id)).all()
        assert len(preds) == 3 and all(p.map_array["targets"] == list(TARGETS) for p in preds)
        assert all(p.maps == {} for p in preds)          # no overlay objects on the hot path
        assert s.scalar(select(func.count()).select_from(ExplanationRecord)) == 3
        assert s.get(AnalysisJob, job_id).status == "done"
    data = rt.store.get(preds[0].map_array["key"])
    assert data.startswith(b"PK")                        # one .npz object


def test_duplicate_delivery_stores_one_prediction(embedded_stack, engine, ham_jpegs):
    case_id, job_id = submit(embedded_stack, ham_jpegs[:1])
    rt = embedded_stack.runtime()
    with rt.sessions() as s:
        image = s.get(Case, case_id).images[0]
        image_id, sha = image.id, image.sha256
    result = engine.analyse([rt.store.get(image.object_key)])[0]
    info = model_info(engine)
    ref = analysis._put_map_array(rt, image_id, result, info)
    for _ in range(2):       # the second one loses on the unique constraint and is skipped
        with rt.transaction() as s:
            analysis._store_prediction(s, case_id, image_id, sha, result, info, ref)
    with rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 1
        assert s.scalar(select(func.count()).select_from(ExplanationRecord)) == 1


def test_racing_deliveries_never_overwrite_a_vouched_map_array(embedded_stack, engine, ham_jpegs):
    """Map arrays are stored under their contents' hash: a second delivery that computed other
    bytes (another device, another encoder) cannot replace the object an audit record names."""
    import dataclasses
    import hashlib
    case_id, _ = submit(embedded_stack, ham_jpegs[:1])
    rt = embedded_stack.runtime()
    with rt.sessions() as s:
        image = s.get(Case, case_id).images[0]
        image_id, key = image.id, image.object_key
    result = engine.analyse([rt.store.get(key)])[0]
    first = analysis._put_map_array(rt, image_id, result, model_info(engine))
    nudged = [dataclasses.replace(m, normalised=m.normalised * 0.5) for m in result.maps]
    second = analysis._put_map_array(rt, image_id, dataclasses.replace(result, maps=nudged), model_info(engine))
    assert first["key"] != second["key"] and first["sha256"] != second["sha256"]
    assert hashlib.sha256(rt.store.get(first["key"])).hexdigest() == first["sha256"]
    assert analysis._put_map_array(rt, image_id, result, model_info(engine)) == first   # same bytes, same key


def test_failing_job_ends_visible_and_case_still_queued(embedded_stack, ham_jpegs):
    case_id, job_id = submit(embedded_stack, ham_jpegs[:1])
    rt = embedded_stack.runtime()

    def broken(_):
        raise RuntimeError("GPU fell off the bus")
    with pytest.raises(RuntimeError):
        analysis.run_job(rt, job_id, broken, analysis.ModelInfo("m", "1", "0" * 64, {}, 0.5))
    analysis.fail_job(rt, job_id, "GPU fell off the bus")
    with rt.sessions() as s:
        case, job = s.get(Case, case_id), s.get(AnalysisJob, job_id)
        assert job.status == "failed" and "GPU" in job.last_error
        assert case.status == "analysis_failed" and not case.ai_available and case.needs_attention
        assert case.queued_at is not None and case.risk_score >= 50


def test_sweeper_resends_pending_and_gives_up_after_max_attempts(embedded_stack, ham_jpegs):
    from datetime import timedelta
    from services.models import utcnow
    case_id, job_id = submit(embedded_stack, ham_jpegs[:1])
    sent = []
    rt = embedded_stack.runtime(dispatcher=sent.append, depth_probe=lambda: 0)
    with rt.sessions() as s:
        assert s.get(AnalysisJob, job_id).status == "queued"     # the intake's own dispatch
    assert jobs.sweep(rt)["sent"] == 0                            # not lost yet
    later = utcnow() + timedelta(seconds=rt.settings.job_lease_s + 10)
    waiting = embedded_stack.runtime(dispatcher=sent.append, depth_probe=lambda: 7)
    assert jobs.sweep(waiting, now=later)["sent"] == 0 and sent == []     # in the broker's backlog
    unknown = embedded_stack.runtime(dispatcher=sent.append, depth_probe=lambda: None)
    assert jobs.sweep(unknown, now=later)["sent"] == 0                    # the broker does not say
    assert jobs.sweep(rt, now=later)["sent"] == 1 and sent == [job_id]    # queue empty: lost
    assert jobs.sweep(rt, now=later)["sent"] == 0                         # once per lease
    with rt.sessions() as s, s.begin():
        job = s.get(AnalysisJob, job_id)
        job.status, job.started_at, job.attempts = "running", utcnow() - timedelta(hours=1), 3
    assert jobs.sweep(rt)["failed"] == 1
    with rt.sessions() as s:
        assert s.get(Case, case_id).status == "analysis_failed"

    def down(_):
        raise ConnectionError("broker down")
    case2, job2 = submit(embedded_stack, ham_jpegs[:1])
    with rt.sessions() as s, s.begin():
        s.get(AnalysisJob, job2).status = "pending"       # as if the broker was down at intake
    assert jobs.sweep(embedded_stack.runtime(dispatcher=down), now=later)["sent"] == 0
    with rt.sessions() as s:
        assert s.get(AnalysisJob, job2).status == "pending"
    # Once the broker is back, a job never sent keeps its place in arrival order: after an
    # outage there are hundreds, and they must not go ahead of a dead worker's re-sent jobs.
    normal, ahead = [], []

    class Dispatcher:
        __call__ = staticmethod(normal.append)
        urgent = staticmethod(ahead.append)
    assert jobs.sweep(embedded_stack.runtime(dispatcher=Dispatcher()), now=later)["sent"] == 1
    assert normal == [job2] and ahead == []


def test_a_dead_worker_s_job_is_resent_once_per_lease_a_live_one_never(embedded_stack, ham_jpegs):
    from datetime import timedelta
    from services.models import utcnow
    case_id, job_id = submit(embedded_stack, ham_jpegs[:1])
    sent, urgent = [], []

    class Dispatcher:                      # records which sends go ahead of the backlog
        def __call__(self, job_id):
            sent.append(job_id)

        def urgent(self, job_id):
            urgent.append(job_id)
            sent.append(job_id)
    rt = embedded_stack.runtime(dispatcher=Dispatcher(), depth_probe=lambda: 0)
    lease = timedelta(seconds=rt.settings.job_lease_s)
    assert analysis.start_job(rt, job_id)
    now = utcnow()
    # a slow job whose worker keeps beating is never re-sent, however long it runs
    with rt.sessions() as s, s.begin():
        job = s.get(AnalysisJob, job_id)
        job.started_at, job.heartbeat_at = now - 10 * lease, now - lease / 3
    assert jobs.sweep(rt, now=now)["sent"] == 0
    assert not analysis.start_job(rt, job_id, now=now)           # a second delivery stands down
    # its worker dies: the beat stops; one lease later it is re-sent, once
    assert jobs.sweep(rt, now=now + lease)["sent"] == 1 and sent == urgent == [job_id]
    for k in range(5):                                            # every sweep of the next lease
        assert jobs.sweep(rt, now=now + lease + k * lease / 6)["sent"] == 0
    with rt.sessions() as s:
        job = s.get(AnalysisJob, job_id)
        assert job.status == "queued" and job.dispatches == 2
    assert analysis.start_job(rt, job_id, now=now + lease)       # the re-sent message runs it


def test_the_heartbeat_beats_while_a_job_runs(embedded_stack, ham_jpegs):
    import threading
    stack = embedded_stack.with_env(JOB_LEASE_S=1)
    case_id, job_id = submit(stack, ham_jpegs[:1])
    rt = stack.runtime()
    assert analysis.start_job(rt, job_id)
    release = threading.Event()

    def slow(images):
        release.wait(5)
        raise RuntimeError("stop here")
    beats = []

    def watch():
        for _ in range(100):
            with rt.sessions() as s:
                beats.append(s.get(AnalysisJob, job_id).heartbeat_at)
            if len({b for b in beats if b}) >= 2:
                break
            threading.Event().wait(0.05)
        release.set()
    watcher = threading.Thread(target=watch)
    watcher.start()
    with pytest.raises(RuntimeError):
        with analysis.heartbeat(rt, job_id):
            slow([])
    watcher.join()
    assert len({b for b in beats if b}) >= 2


def test_micro_batcher_merges_concurrent_requests():
    calls = []
    first_batch_running, release = threading.Event(), threading.Event()

    def fn(items):
        calls.append(len(items))
        if len(calls) == 1:          # hold the first batch until every caller has queued
            first_batch_running.set()
            assert release.wait(30)
        return [x * 2 for x in items]
    b = MicroBatcher(fn, max_batch=16, max_wait_ms=1)
    out = {}

    def work(i):
        out[i] = b.run([i, i + 100])
    threads = [threading.Thread(target=work, args=(0,))]
    threads[0].start()
    assert first_batch_running.wait(30)
    threads += [threading.Thread(target=work, args=(i,)) for i in range(1, 6)]
    for t in threads[1:]:
        t.start()
    assert poll(lambda: b.waiting() == 10, 30, 0.01, "callers queued")
    release.set()
    for t in threads:
        t.join()
    b.close()
    assert all(out[i] == [2 * i, 2 * (i + 100)] for i in range(6))
    assert calls == [2, 10], calls
    assert b.batch_sizes == {2: 1, 10: 1}


def test_micro_batcher_hands_errors_to_every_caller():
    def fn(items):
        raise ValueError("bad batch")
    b = MicroBatcher(fn, max_wait_ms=1)
    with pytest.raises(ValueError, match="bad batch"):
        b.run([1])
    b.close()


def test_the_broker_says_how_many_messages_wait(stack):
    from tests.factories import free_port
    rt = stack.runtime()
    before = rt.queue_depth()
    assert before is not None
    rt.send_job("job-a")
    rt.send_job("job-b")
    assert rt.queue_depth() == before + 2
    rt.sender.control.purge()            # leave no stray messages for later tests' workers
    assert rt.queue_depth() == 0
    down = stack.with_env(BROKER_URL=f"redis://127.0.0.1:{free_port()}/0").runtime()
    assert down.queue_depth() is None


def test_a_resent_job_goes_ahead_of_the_backlog(full_stack):
    """The sweeper's re-sends (a dead worker's job, a message the broker lost) are taken
    before the jobs already waiting, so recovery does not wait for the whole backlog."""
    rt = full_stack.runtime()
    rt.sender.control.purge()
    for job_id in ("waiting-1", "waiting-2", "waiting-3"):
        rt.send_job(job_id)
    rt.send_job("resent", urgent=True)
    assert rt.queue_depth() == 4                          # every priority list is counted
    order = []
    with rt.sender.connection_for_write() as conn:
        queue = conn.SimpleQueue("analysis")
        for _ in range(4):
            message = queue.get(timeout=5)
            order.append(message.payload[0][0])
            message.ack()
        queue.close()
    assert order == ["resent", "waiting-1", "waiting-2", "waiting-3"]
    assert rt.queue_depth() == 0


def test_two_sweepers_at_once_resend_a_lost_job_once(stack, ham_jpegs):
    import threading
    import time
    from datetime import timedelta
    from services.models import utcnow
    ids = [submit(stack, ham_jpegs[:1])[1] for _ in range(4)]
    sent = []

    def slow_send(job_id):
        time.sleep(0.05)
        sent.append(job_id)
    rt = stack.runtime(dispatcher=slow_send, depth_probe=lambda: 0)
    long_ago = utcnow() - timedelta(seconds=3 * rt.settings.job_lease_s)
    with rt.sessions() as s, s.begin():
        for job_id in ids:
            job = s.get(AnalysisJob, job_id)
            job.status, job.started_at, job.attempts = "running", long_ago, 1    # its worker died
    results = []
    sweepers = [threading.Thread(target=lambda: results.append(jobs.sweep(rt))) for _ in range(2)]
    for t in sweepers:
        t.start()
    for t in sweepers:
        t.join()
    assert sorted(sent) == sorted(ids) and sum(r["sent"] for r in results) == 4
    with rt.sessions() as s:
        assert all(s.get(AnalysisJob, j).dispatches == 2 and s.get(AnalysisJob, j).status == "queued"
                   for j in ids)


def test_group_commit_stores_a_micro_batch_in_one_transaction(embedded_stack, engine, ham_jpegs):
    """Jobs that finish together share one transaction (one commit); a job whose write fails
    is rolled back alone and gets its error, and the others are stored."""
    from sqlalchemy import event

    rt = embedded_stack.runtime()
    submitted = [submit(embedded_stack, [img]) for img in ham_jpegs[:4]]
    commits = []
    event.listen(rt.engine, "commit", lambda conn: commits.append(1))
    writes: list = []
    gathered = threading.Barrier(4)

    def collect(write):           # stands in for the writer: gather all four, then commit
        writes.append(write)
        gathered.wait(30)

    threads = [threading.Thread(target=analysis.run_job, args=(rt, job_id, engine.analyse,
                                                               model_info(engine), collect))
               for _, job_id in submitted]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(writes) == 4

    def broken(session):
        raise RuntimeError("disk on fire")
    before = len(commits)
    outcomes = analysis.commit_together(rt, [writes[0], broken, *writes[1:]])
    assert len(commits) - before == 1                               # one commit for the batch
    assert [type(o).__name__ if o else None for o in outcomes] == [None, "RuntimeError", None, None, None]
    with rt.sessions() as s:
        for case_id, job_id in submitted:
            assert s.get(AnalysisJob, job_id).status == "done"
            assert s.get(Case, case_id).status == "analysed"
        assert s.scalar(select(func.count()).select_from(Prediction)) == 4
        seqs = s.scalars(select(ExplanationRecord.seq).order_by(ExplanationRecord.seq)).all()
    assert len(seqs) == 4
    from services import checkpoints
    assert checkpoints.verify(rt, None, full=True)["ok"]
    # Delivered again (redelivery after a crash at the worst moment): nothing is added.
    assert analysis.commit_together(rt, writes[:2]) == [None, None]
    with rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ExplanationRecord)) == 4


def test_a_failed_group_commit_fails_every_job_in_it_and_stores_nothing(embedded_stack, engine, ham_jpegs):
    rt = embedded_stack.runtime()
    _, job_id = submit(embedded_stack, ham_jpegs[:1])
    writes = []
    analysis.run_job(rt, job_id, engine.analyse, model_info(engine), writes.append)
    writer = MicroBatcher(lambda ws: analysis.commit_together(rt, ws), max_wait_ms=1)

    def commit(write):
        outcome = writer.run([write])[0]
        if outcome is not None:
            raise outcome
    from sqlalchemy.exc import OperationalError
    from unittest import mock
    with mock.patch.object(rt, "transaction", side_effect=OperationalError("COMMIT", {}, Exception("db gone"))):
        with pytest.raises(OperationalError):
            commit(writes[0])
    with rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 0
        assert s.get(AnalysisJob, job_id).status == "running"       # the task retries it
    commit(writes[0])
    with rt.sessions() as s:
        assert s.get(AnalysisJob, job_id).status == "done"
    writer.close()
