"""The deployable artifact: the wheel the Dockerfile installs carries everything a process
needs (migrations, page templates), so `dermatriage db upgrade` and the web work from an
installed copy with no source tree in sight."""

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from services import migrate
from tests.factories import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with only the project's wheel installed in it; the
    third-party dependencies are borrowed read-only from the test environment."""
    tmp = tmp_path_factory.mktemp("image")
    source = tmp / "source"          # what the Dockerfile copies; the build writes in here
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        source.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for package in ("services", "workers", "web", "migrations"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp / "wheels"), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp / "wheels").glob("dermatriage-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Dependencies only: a plain path entry does not run the test environment's .pth files,
    # so its editable install of this project stays invisible.
    (Path(site) / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir


def run(env_dir: Path, *args, cwd: Path, **env):
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", **env})


def test_the_wheel_migrates_a_fresh_database(installed, tmp_path):
    where = run(installed, installed / "bin" / "python", "-c",
                "import services, web, migrations; print(services.__file__, migrations.__file__)",
                cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert str(installed) in where.stdout and str(ROOT) not in where.stdout
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = run(installed, installed / "bin" / "dermatriage", "db", "upgrade", cwd=tmp_path,
                 DATABASE_URL=url, DERMATRIAGE_DATA_DIR=str(tmp_path / "var"))
    assert result.returncode == 0, result.stderr[-2000:]
    engine = create_engine(url)
    assert {"users", "cases", "case_images", "analysis_jobs", "predictions",
            "explanation_records"} <= set(inspect(engine).get_table_names())
    with engine.connect() as c:
        assert [c.execute(text("SELECT version_num FROM alembic_version")).scalar()] == \
            migrate.heads(url)
    engine.dispose()


def test_the_wheel_serves_pages_from_its_own_templates(installed, tmp_path):
    script = ("from web import create_app; import web, pathlib; "
              "c = create_app().test_client(); r = c.get('/login'); "
              "print(r.status_code, 'Log in' in r.get_data(as_text=True), "
              "pathlib.Path(web.__file__).parent.joinpath('templates', 'login.html').is_file())")
    result = run(installed, installed / "bin" / "python", "-c", script, cwd=tmp_path,
                 DERMATRIAGE_DATA_DIR=str(tmp_path / "var"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["200", "True", "True"]
