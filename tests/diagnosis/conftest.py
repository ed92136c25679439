from __future__ import annotations

import pytest
import torch

from services import config
from services.diagnosis import artifact
from services.diagnosis.engine import Engine
from services.diagnosis.network import Architecture, BCCPatternNet
from services.diagnosis.patterns import PATTERNS
from services.diagnosis.preprocess import PREPROCESSING_VERSION

SMALL = Architecture(width_mult=0.35, output_stride=16, input_size=96)


def make_card(**over) -> artifact.ModelCard:
    fields = dict(name="test-model", version="0.0.1", weights_sha256="",
                  architecture=SMALL.to_dict(), preprocessing_version=PREPROCESSING_VERSION,
                  patterns=list(PATTERNS), thresholds={c: 0.5 for c in PATTERNS},
                  bcc_threshold=0.5, training_data={"source": "random init"}, metrics={},
                  intended_use="tests only")
    fields.update(over)
    return artifact.ModelCard(**fields)


def random_model(arch: Architecture = SMALL, seed: int = 0) -> BCCPatternNet:
    """Random weights with BatchNorm statistics that keep activations alive, so Grad-CAM
    maps are non-trivial for every target."""
    torch.manual_seed(seed)
    model = BCCPatternNet(arch)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, 0, 0.2)
            torch.nn.init.normal_(m.bias, 0, 0.1)
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, 0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.pt"
    artifact.save(random_model(), make_card(), path)
    return path


@pytest.fixture(scope="session")
def small_engine(small_weights) -> Engine:
    return Engine.load(small_weights, "cpu")


@pytest.fixture(scope="session")
def demo_engine() -> Engine:
    path = config.model_path()
    if not path.exists():
        pytest.fail(f"demo model missing at {path}: `make test` builds it via `make install`")
    return Engine.load(path, "cpu")
