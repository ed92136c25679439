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
