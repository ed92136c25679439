"""The benchmarks run and report what they claim, on small sizes (the figures are in docs/benchmarks.md)."""

import json

from click.testing import CliRunner

from services.cli import main

from tests.factories import small_model_file


def test_bench_audit_verifies_a_seeded_chain_and_times_the_pages(postgres_url):
    admin_url = postgres_url.rsplit("/", 1)[0] + "/test"
    result = CliRunner().invoke(main, ["bench", "audit", "--records", "300", "--postgres-admin-url", admin_url])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["records"] == 300 and out["full_verify_records_per_s"] > 0 and out["mean_payload_bytes"] > 3000
    assert all(p["p50"] > 0 for p in out["page_ms"].values()) and len(out["page_ms"]) == 6


def test_bench_worker_compares_the_hot_path_with_inference(tmp_path, ham_dir):
    result = CliRunner().invoke(main, ["bench", "worker", "--cases", "4", "--batch", "2", "--json",
                                       "--model", str(small_model_file(tmp_path))])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["hot_path_cases_per_s"] > 0 and out["overlay_ms_per_image"] > 0
    assert out["hot_path_over_inference_time"] > 0 and set(out["inference_images_per_s"]) == {"one_per_call", "batch_2"}


def test_bench_pipeline_reports_live_and_backlog_against_the_engine(tmp_path, ham_dir):
    result = CliRunner().invoke(main, ["bench", "pipeline", "--cases", "4", "--stack", "embedded", "--json",
                                       "--model", str(small_model_file(tmp_path))])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    (r,) = out["results"]
    assert out["engine_images_per_s"] > 0 and r["stack"] == "embedded" and r["cases"] == 4
    for phase in ("live", "backlog"):
        assert r[phase]["cases_per_s"] > 0
        assert r[phase]["over_engine"] == round(r[phase]["cases_per_s"] / out["engine_images_per_s"], 3)
    assert r["live"]["latency_p95_s"] >= r["live"]["latency_p50_s"] > 0


def test_bench_fhir_sends_both_ways_and_reads_among_seeded_cases(postgres_url, ham_dir):
    admin_url = postgres_url.rsplit("/", 1)[0] + "/test"
    result = CliRunner().invoke(main, ["bench", "fhir", "--referrals", "3", "--cases", "300", "--reads", "10",
                                       "--postgres-admin-url", admin_url])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["referral_latency"]["fhir"]["n"] == out["referral_latency"]["api"]["n"] == 3
    assert out["fhir_over_api"] > 0 and out["seeded_cases"] == 300
    assert set(out["read_latency"]) == {"fhir_report", "api_case", "fhir_report_again", "search_by_patient",
                                        "search_by_status_page"}
    assert all(v["n"] == 10 and v["p95_ms"] > 0 for v in out["read_latency"].values())


def test_bench_rollout_switches_every_worker_and_loses_nothing(postgres_url, redis_url, ham_dir, tmp_path):
    admin_url = postgres_url.rsplit("/", 1)[0] + "/test"
    broker = redis_url.rsplit("/", 1)[0] + "/13"
    result = CliRunner().invoke(main, ["bench", "rollout", "--phase", "4", "--rate", "2", "--workers", "1",
                                       "--model", str(small_model_file(tmp_path)), "--postgres-admin-url", admin_url,
                                       "--redis-url", broker])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    r = out["rollout"]
    assert r["lost"] == r["analysed_twice"] == r["analysed_by_a_version_not_champion_then"] == 0
    assert len(r["jobs_by_version"]) == 2 and r["promotion_s_until_every_worker"] is not None
    assert r["rollback_s_until_every_worker"] is not None
    assert out["shadow_cost"]["without_shadow"]["cases"] > 0 and out["shadow_cost"]["shadow_readings"] > 0
