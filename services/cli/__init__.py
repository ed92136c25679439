"""The ``dermatriage`` console script: every operation of the product is a subcommand."""

from __future__ import annotations

import click

from .model import model
from .bench import bench


@click.group()
def main() -> None:
    """DermaTriage: teledermatology triage with explained BCC diagnosis."""


main.add_command(model)
main.add_command(bench)
