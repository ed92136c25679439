"""docker-compose.yml is valid for Compose and describes the whole stack."""

import shutil
import subprocess

import pytest
import yaml

from services.config import PROJECT_ROOT

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
SECRETS = {"SECRET_KEY": "k" * 40, "POSTGRES_PASSWORD": "pw", "MINIO_ROOT_USER": "minio",
           "MINIO_ROOT_PASSWORD": "minio-secret"}


def compose_config(env: dict) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose (Debian package) is missing: `make install` installs it")
    return subprocess.run([exe, "-f", str(COMPOSE), "config"], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, cwd=PROJECT_ROOT)


def test_compose_file_is_valid_and_complete():
    result = compose_config(SECRETS)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"postgres", "redis", "minio", "minio-bucket", "migrate", "web", "worker"} <= set(services)
    for name in ("postgres", "redis", "minio", "web", "worker"):
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
