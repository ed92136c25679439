"""Settings from environment variables, with embedded defaults that need no servers."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return Path(os.environ.get("DERMATRIAGE_DATA_DIR", PROJECT_ROOT / "var"))


def model_path() -> Path:
    """Weights file of the model in service; its card sits beside it."""
    return Path(os.environ.get("DERMATRIAGE_MODEL_PATH", data_dir() / "models" / "demo-bcc.pt"))


def shared_data_dir() -> Path:
    """Real dermoscopic data sets (read-only, never committed): ../shared/data by default."""
    return Path(os.environ.get("DERMATRIAGE_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
