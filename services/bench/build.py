"""The CPU build on a busy machine: its wall time idle and beside one competing busy process,
measured side by side in one run.

Why this exists: on two cores, OpenMP threads that spin at the end of every parallel region
burn the time slices a competitor needs and wait for a peer thread the scheduler has parked,
so a build slowed ~15x beside another busy process. ``dermatriage`` sets
``OMP_WAIT_POLICY=PASSIVE`` before torch (and its libgomp) loads, so waiting threads sleep.
This bench runs the same reduced real-image build (a subset of the shared data, every stage
of the recipe) in fresh processes: idle, beside a busy single-threaded Python loop, and
beside a busy two-thread PyTorch process, each with PASSIVE and with libgomp's default
policy, and prints each busy time over the idle time of the same policy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILD = """
import sys
from pathlib import Path
from services.memory import retain_freed_memory
retain_freed_memory()          # as every dermatriage process does
from services.modelling import recipe, train
cfg = recipe.RealTrainConfig(limit={images}, synthetic=100, seed={seed})
train.build_real(Path(sys.argv[1]), cfg, progress=False, log=lambda *_: None)
"""

COMPETITORS = {
    "python": "while True:\n    pass\n",
    "torch": ("import torch\ntorch.set_num_threads(2)\na = torch.randn(512, 512)\n"
              "while True:\n    a = torch.tanh(a @ a)\n"),
}


def _env(policy: str) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    return env


def _timed_build(images: int, seed: int, policy: str, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", BUILD.format(images=images, seed=seed), str(out)],
                   env=_env(policy), check=True)
    return time.perf_counter() - started


def bench_build(images: int = 400, seed: int = 0, competitors: tuple[str, ...] = ("python", "torch"),
                policies: tuple[str, ...] = ("PASSIVE", "default")) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for policy in policies:
            idle = _timed_build(images, seed, policy, Path(tmp) / "idle.pt")
            rows.append({"policy": policy, "competitor": None, "seconds": round(idle, 1), "ratio": 1.0})
            for name in competitors:
                # The competitor keeps its own (default) policy: we do not control other users.
                rival = subprocess.Popen([sys.executable, "-c", COMPETITORS[name]], env=_env("default"))
                try:
                    time.sleep(1.0)
                    busy = _timed_build(images, seed, policy, Path(tmp) / f"{name}.pt")
                finally:
                    rival.kill()
                    rival.wait()
                rows.append({"policy": policy, "competitor": name, "seconds": round(busy, 1),
                             "ratio": round(busy / idle, 2)})
    return {"images_per_dataset": images, "cpus": os.cpu_count(), "runs": rows,
            "limit_ratio": 2.5,
            "worst_passive_ratio": max((r["ratio"] for r in rows if r["policy"] == "PASSIVE"), default=None)}
