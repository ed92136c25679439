"""docker-compose.yml is valid for Compose and describes the whole stack."""

import shutil
import subprocess

import pytest
import yaml

from services.config import PROJECT_ROOT

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
SECRETS = {"SECRET_KEY": "k" * 40, "POSTGRES_PASSWORD": "pw", "MINIO_ROOT_USER": "minio",
           "MINIO_ROOT_PASSWORD": "minio-secret"}


def compose_config(env: dict, *options: str) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose (Debian package) is missing: `make install` installs it")
    return subprocess.run([exe, "-f", str(COMPOSE), *options, "config"], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, cwd=PROJECT_ROOT)


def test_compose_file_is_valid_and_complete():
    result = compose_config(SECRETS)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"postgres", "redis", "minio", "minio-bucket", "migrate", "web", "worker",
            "worker-cpu"} <= set(services)
    for name in ("postgres", "redis", "minio", "web", "worker", "worker-cpu"):
        assert "healthcheck" in services[name], name
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert {"pgdata", "redisdata", "miniodata"} <= set(config["volumes"])
    web_env = services["web"]["environment"]
    assert web_env["DERMATRIAGE_ENV"] == "production" and web_env["SECRET_KEY"] == "k" * 40
    assert web_env["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert services["web"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_refuses_to_start_without_secrets():
    result = compose_config({k: v for k, v in SECRETS.items() if k != "SECRET_KEY"})
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_compose_commands_and_healthchecks_name_the_real_processes():
    """Web and worker start through `dermatriage web|worker` (the one place that holds the
    server commands), and each healthcheck asks exactly the process that command starts."""
    from services.cli.ops import parse_queues, worker_command, worker_node

    services = yaml.safe_load(compose_config(SECRETS).stdout)["services"]
    web = services["web"]
    assert web["command"][:2] == ["dermatriage", "web"]
    port = _option(web["command"], "--port")
    assert web["healthcheck"]["test"] == ["CMD", "dermatriage", "health", "web", "--port", port]
    targets = [str(p["target"] if isinstance(p, dict) else p).split(":")[-1] for p in web["ports"]]
    assert port in targets
    # One GPU worker on the analysis queue, one CPU worker on the rest; each health check
    # pings the node name its own command gives itself.
    consumed = {}
    for name in ("worker", "worker-cpu"):
        worker = services[name]
        assert worker["command"][:2] == ["dermatriage", "worker"]
        queues = parse_queues(_option(worker["command"], "--queues"))
        consumed[name] = queues
        check = worker["healthcheck"]["test"]
        assert check[:4] == ["CMD", "dermatriage", "health", "worker"]
        assert parse_queues(_option(check, "--queues")) == queues
        assert _option(worker_command(8, "INFO", queues), "-n") == worker_node(queues)
        assert _option(worker_command(8, "INFO", queues), "-Q") == ",".join(queues)
    assert consumed == {"worker": ("analysis",), "worker-cpu": ("cpu",)}
    # The shadow worker runs only with its profile, on its own queue and GPU.
    shadow = yaml.safe_load(compose_config(SECRETS, "--profile", "shadow").stdout)["services"]["worker-shadow"]
    assert parse_queues(_option(shadow["command"], "--queues")) == ("shadow",)
    assert parse_queues(_option(shadow["healthcheck"]["test"], "--queues")) == ("shadow",)
    assert shadow["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert shadow["profiles"] == ["shadow"]
    assert "deploy" not in services["worker-cpu"]            # no GPU for the CPU queue
    # Only the CPU worker signs checkpoints: the signing key is mounted there alone.
    assert "AUDIT_SIGNING_KEY_FILE" in services["worker-cpu"]["environment"]
    assert "AUDIT_SIGNING_KEY_FILE" not in services["worker"]["environment"]
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert 'CMD ["dermatriage", "web"' in dockerfile and "gunicorn" not in dockerfile.split("CMD")[-1]


def test_worker_health_check_pings_a_running_worker(full_stack, tmp_path):
    from click.testing import CliRunner

    from services.cli import main
    from tests.factories import poll, stop

    runner = CliRunner()
    down = runner.invoke(main, ["health", "worker", "--timeout", "1"], env=full_stack.env)
    assert down.exit_code == 1 and "did not answer" in down.output
    worker = full_stack.start_worker(tmp_path / "worker.log")
    try:
        up = poll(lambda: (r := runner.invoke(main, ["health", "worker", "--timeout", "1"],
                                               env=full_stack.env)).exit_code == 0 and r,
                  timeout=60, interval=0.5, what="the worker to answer its health check")
        assert up.output.startswith("worker@")          # both queues, the default
    finally:
        stop(worker)
