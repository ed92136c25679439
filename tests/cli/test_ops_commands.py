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


def test_the_installed_model_is_served_whatever_the_data_directory(tmp_path):
    from services import config

    models = tmp_path / "models"
    env = {"DERMATRIAGE_DATA_DIR": str(tmp_path / "elsewhere")}
    assert config.models_dir(env) == config.models_dir({})            # not under the data directory
    env["DERMATRIAGE_MODELS_DIR"] = str(models)
    assert config.model_path(env) == models / "demo-bcc.pt"
    models.mkdir()
    (models / "real-bcc.pt").write_bytes(b"")
    assert config.model_path(env) == models / "real-bcc.pt"           # the real model when built
    assert config.model_path({**env, "DERMATRIAGE_MODEL_PATH": "/m/x.pt"}) == config.Path("/m/x.pt")


@pytest.mark.parametrize("chosen, says", [
    ({}, "DERMATRIAGE_MODELS_DIR"),
    ({"DERMATRIAGE_MODEL_PATH": "missing.pt"}, "no model at missing.pt (DERMATRIAGE_MODEL_PATH)"),
])
def test_run_without_a_model_names_where_it_looked_and_what_chooses_it(tmp_path, chosen, says):
    env = {"DERMATRIAGE_DATA_DIR": str(tmp_path / "data"), "DERMATRIAGE_MODELS_DIR": str(tmp_path / "none"),
           **chosen}
    result = CliRunner().invoke(main, ["run"], env=env)
    assert result.exit_code == 1 and says in result.output
    if not chosen:
        assert str(tmp_path / "none") in result.output and "dermatriage model build" in result.output
    assert not (tmp_path / "data").exists()                           # nothing set up on the way


def test_help_groups_the_commands():
    out = CliRunner().invoke(main, ["--help"]).output
    sections = ["Run the product:", "Cases and analysis:", "Models:", "Labelling:", "Audit:", "Accounts:",
                "Benchmarks:"]
    assert [out.index(s) for s in sections] == sorted(out.index(s) for s in sections)
    listed = {line.split()[0] for line in out.split("Run the product:")[1].splitlines() if line.startswith("  ")}
    assert listed == set(main.commands)                               # every command, once
