from __future__ import annotations

import pytest

from services.diagnosis.engine import Engine
from tests.factories import small_model_file


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory):
    return small_model_file(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def small_engine(small_weights) -> Engine:
    return Engine.load(small_weights, "cpu")
