"""The ``dermatriage`` console script: every operation of the product is a subcommand."""

from __future__ import annotations

import click

from .bench import bench
from .model import model
from .ops import audit, db, health, jobs, run, users, web, worker


@click.group()
def main() -> None:
    """DermaTriage: teledermatology triage with explained BCC diagnosis."""


for command in (model, bench, db, users, worker, web, health, run, jobs, audit):
    main.add_command(command)
