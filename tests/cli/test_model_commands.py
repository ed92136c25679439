import json
import subprocess
import sys

from click.testing import CliRunner

from services.cli import main
from tests.factories import make_card, random_model
from services.diagnosis import artifact


def small_model(tmp_path):
    path = tmp_path / "m.pt"
    artifact.save(random_model(), make_card(), path)
    return path


def test_evaluate_prints_every_metric_as_json(tmp_path):
    result = CliRunner().invoke(main, ["model", "evaluate", "--model", str(small_model(tmp_path)),
                                       "--synthetic", "12", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["n"] == 12 and set(out["bcc"]) >= {"accuracy", "precision", "recall"}
    assert set(out["patterns"]) == {"PN", "UL", "BO", "MG", "ML", "SW", "AT"}
    assert "head_rule_agreement" in out["clinical_rule"] and 0 <= out["bcc_map_lesion_share"] <= 1
    a = out["gradcam_alignment"]
    assert {"mean_inside", "mean_outside", "pointing_game", "relevance_mass", "relevance_rank"} <= set(a)


def test_bench_explain_prints_ratios(tmp_path):
    result = CliRunner().invoke(main, ["bench", "explain", "--model", str(small_model(tmp_path)),
                                       "--batch", "4", "--rounds", "1", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["full_over_forward"] > 0 and out["captum_over_full"] > 0
    assert out["one_pass_over_passes"] > 0      # on the CPU: one pass against passes of 4
    assert out["gate_overhead"] > -1 and out["median_s"]["analyse_no_gate"] > 0
    assert out["max_abs_diff_normalised_vs_captum"] < 1e-3


def test_missing_or_tampered_model_is_a_clear_cli_error(tmp_path):
    result = CliRunner().invoke(main, ["model", "evaluate", "--model", str(tmp_path / "none.pt"),
                                       "--synthetic", "4"])
    assert result.exit_code != 0 and "no model weights" in result.output
    path = small_model(tmp_path)
    path.write_bytes(path.read_bytes() + b"x")
    result = CliRunner().invoke(main, ["bench", "explain", "--model", str(path)])
    assert result.exit_code != 0 and "refusing to load" in result.output
    result = CliRunner().invoke(main, ["model", "evaluate", "--synthetic", "0"])
    assert result.exit_code == 2


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "services.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "model" in out.stdout and "bench" in out.stdout


def test_registry_commands_from_install_to_rollback(embedded_stack, tmp_path):
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    artifact.save(random_model(seed=1), make_card(version="1.0.0"), first)
    artifact.save(random_model(seed=2), make_card(version="2.0.0"), second)
    env = {**embedded_stack.env, "DERMATRIAGE_MODEL_PATH": str(first)}
    run = lambda *args: CliRunner().invoke(main, ["model", *args], env=env)  # noqa: E731
    installed = run("register", "--in-service", "--bootstrap", "--by", "make")
    assert installed.exit_code == 0 and "override: test-model 1.0.0 is the champion" in installed.output
    again = run("register", "--in-service", "--bootstrap")
    assert again.exit_code == 0 and "already registered" in again.output and "champion" in again.output
    assert run("register", str(second)).exit_code == 0
    listed = run("list")
    assert "champion   test-model 1.0.0" in listed.output and "candidate  test-model 2.0.0" in listed.output
    refused = run("promote", "2.0.0", "--reason", "try")
    assert refused.exit_code == 1 and "gate refuses" in refused.output and "not measured" in refused.output
    assert run("promote", "2.0.0").exit_code == 2                     # a reason is required
    done = run("promote", "2.0.0", "--reason", "reviewed by the clinical lead", "--override", "--by", "ml")
    assert done.exit_code == 0 and "override: test-model 2.0.0" in done.output
    assert run("shadow", "2.0.0").exit_code == 1                      # the champion is not a shadow
    back = run("rollback", "--reason", "drift")
    assert back.exit_code == 0 and "test-model 1.0.0 is the champion again" in back.output
    nothing = run("rollback", "--reason", "again")
    assert nothing.exit_code == 1 and "nothing to roll back to" in nothing.output
    shown = json.loads(run("show", "1.0.0").output)
    assert [e["action"] for e in shown["events"]] == ["register", "override", "override", "rollback"]
    assert run("show", "7.7.7").exit_code == 1


def test_an_evaluation_of_a_registered_model_is_kept_as_its_evidence(embedded_stack, tmp_path, ham_dir):
    from services import registry
    from tests.modelling.test_train import reviewed_folder
    folder = reviewed_folder(tmp_path / "set", 6, 6)
    path = tmp_path / "m.pt"
    artifact.save(random_model(seed=1), make_card(version="3.0.0"), path)
    env = embedded_stack.env
    before = CliRunner().invoke(main, ["model", "evaluate", "--model", str(path), "--dataset", str(folder)], env=env)
    assert before.exit_code == 0 and "not kept as registry evidence: this model is not registered" in before.output
    assert CliRunner().invoke(main, ["model", "register", str(path)], env=env).exit_code == 0
    kept = CliRunner().invoke(main, ["model", "evaluate", "--model", str(path), "--dataset", str(folder)], env=env)
    assert kept.exit_code == 0 and "kept as evidence of test-model 3.0.0" in kept.output
    shown = registry.show(embedded_stack.runtime(), "3.0.0")
    (evaluation,) = shown["evidence"]["evaluations"]
    assert evaluation["images"] == 12 and evaluation["dataset"] == str(folder) and "BCC" in evaluation["targets"]
    assert [e["action"] for e in shown["events"]] == ["register", "evaluate"]
