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
from .fhir import fhir  # noqa: E402
from .labels import labels  # noqa: E402
from .model import model  # noqa: E402
from .registry import COMMANDS as REGISTRY_COMMANDS  # noqa: E402
from .ops import audit, db, health, jobs, run, users, web, worker  # noqa: E402


# How `dermatriage --help` groups the commands: by who reaches for them, in the order a
# newcomer meets them.
SECTIONS = (
    ("Run the product", (run, web, worker, health, db)),
    ("Cases and analysis", (jobs, fhir)),
    ("Models", (model,)),
    ("Labelling", (labels,)),
    ("Audit", (audit,)),
    ("Accounts", (users,)),
    ("Benchmarks", (bench,)),
)


class SectionedGroup(click.Group):
    """A group whose help lists its commands under the headings of ``SECTIONS``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [c.name for _, commands in SECTIONS for c in commands]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for title, commands in SECTIONS:
            rows = [(c.name, c.get_short_help_str(limit=70)) for c in commands]
            with formatter.section(title):
                formatter.write_dl(rows)


@click.group(cls=SectionedGroup)
def main() -> None:
    """DermaTriage: teledermatology triage with explained BCC diagnosis.

    Start with `dermatriage run` (web and worker on the embedded default); every other
    operation is one of the commands below. `dermatriage COMMAND --help` says more.
    """


for _command in REGISTRY_COMMANDS:      # model register|list|show|shadow|promote|rollback|compare
    model.add_command(_command)
for _, _commands in SECTIONS:
    for _command in _commands:
        main.add_command(_command)
