"""The ``dermatriage`` console script: every operation of the product is a subcommand."""

from __future__ import annotations

import os

# Before anything loads torch: OpenMP threads that spin while they wait turn a busy two-core
# machine into a ~15x slowdown of builds and inference; sleeping threads cost ~2x at worst
# (`dermatriage bench build` measures both). An operator's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ..memory import retain_freed_memory  # noqa: E402

# Freed activations stay in the heap instead of faulting in fresh pages every forward pass
# (a third of the CPU time of feature extraction on 2 cores; services/memory.py).
retain_freed_memory()

import click  # noqa: E402

from .bench import bench  # noqa: E402
from .labels import labels  # noqa: E402
from .model import model  # noqa: E402
from .ops import audit, db, health, jobs, run, users, web, worker  # noqa: E402


@click.group()
def main() -> None:
    """DermaTriage: teledermatology triage with explained BCC diagnosis."""


for command in (model, bench, db, users, worker, web, health, run, jobs, audit, labels):
    main.add_command(command)
