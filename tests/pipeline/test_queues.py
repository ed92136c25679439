"""Two queues: a worker on the analysis queue does inference only; checkpoints (and the
periodic jobs) belong to workers on the cpu queue, and the web's request reaches them."""

import time

from click.testing import CliRunner
from sqlalchemy import func, select

from services.cli import main
from services.models import AuditCheckpoint
from tests.factories import poll, stop
from tests.services.test_checkpoints import append


def checkpoints(rt) -> int:
    with rt.sessions() as s:
        return s.scalar(select(func.count()).select_from(AuditCheckpoint))


def answers(stack, queues: str) -> bool:
    r = CliRunner().invoke(main, ["health", "worker", "--queues", queues, "--timeout", "1"], env=stack.env)
    return r.exit_code == 0


def test_checkpoint_requests_go_to_the_cpu_queue_only(stack, tmp_path):
    rt = stack.runtime()
    append(rt, 3)
    # Periodic jobs would sign within 1 s: only a requested checkpoint can appear in time.
    slow = {"CHECKPOINT_INTERVAL_S": 3600, "SWEEP_INTERVAL_S": 1}
    gpu = stack.start_worker(tmp_path / "gpu.log", queues="analysis", **slow)
    cpu = None
    try:
        poll(lambda: answers(stack, "analysis"), timeout=60, interval=0.5, what="the analysis worker")
        assert rt.request_checkpoint()
        time.sleep(3)
        assert checkpoints(rt) == 0            # waits in the cpu queue: not the GPU worker's work
        cpu = stack.start_worker(tmp_path / "cpu.log", queues="cpu", **slow)
        poll(lambda: checkpoints(rt) == 1, timeout=60, interval=0.5, what="the requested checkpoint")
        append(rt, 2, start=3)
        assert rt.request_checkpoint()
        poll(lambda: checkpoints(rt) == 2, timeout=30, interval=0.5, what="a second checkpoint")
        assert answers(stack, "cpu") and not answers(stack, "analysis,cpu")
    finally:
        stop(gpu)
        if cpu is not None:
            stop(cpu)


def test_worker_refuses_an_unknown_queue(stack):
    r = CliRunner().invoke(main, ["worker", "--queues", "analysis,gpu"], env=stack.env)
    assert r.exit_code == 2 and "--queues" in r.output and "gpu" in r.output
