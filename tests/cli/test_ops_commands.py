import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from services.cli import main


def test_users_create_and_errors(embedded_stack):
    env = embedded_stack.env
    runner = CliRunner()
    ok = runner.invoke(main, ["users", "create", "--role", "dermatologist", "--username", "newderm",
                              "--password-stdin"], input="long enough 1\n", env=env)
    assert ok.exit_code == 0 and "created dermatologist newderm" in ok.output
    prompted = runner.invoke(main, ["users", "create", "--role", "gp", "--username", "newgp"],
                             input="long enough 2\nlong enough 2\n", env=env)
    assert prompted.exit_code == 0 and "long enough 2" not in prompted.output
    dup = runner.invoke(main, ["users", "create", "--role", "gp", "--username", "newderm", "--password-stdin"],
                        input="long enough 1\n", env=env)
    assert dup.exit_code == 1 and "already exists" in dup.output
    short = runner.invoke(main, ["users", "create", "--role", "gp", "--username", "x", "--password-stdin"],
                          input="short\n", env=env)
    assert short.exit_code == 1 and "at least 10" in short.output
    on_the_line = runner.invoke(main, ["users", "create", "--role", "gp", "--username", "x",
                                       "--password", "longenough"], env=env)
    assert on_the_line.exit_code == 2                     # passwords never on the command line
    bad_role = runner.invoke(main, ["users", "create", "--role", "king", "--username", "x", "--password-stdin"],
                             input="longenough1\n", env=env)
    assert bad_role.exit_code == 2


def test_audit_verify_on_an_empty_chain(embedded_stack):
    result = CliRunner().invoke(main, ["audit", "verify"], env=embedded_stack.env)
    assert result.exit_code == 0 and "OK: 0 records" in result.output


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_cli_makes_openmp_threads_sleep_unless_the_operator_chose(given, expected):
    """Set before torch loads (libgomp reads it once): spinning threads slow a busy machine ~3x."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, services.cli; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
