import json

import pytest
import torch

from services.diagnosis import artifact

from tests.factories import make_card, random_model


def test_round_trip_keeps_weights_and_card(tmp_path):
    model = random_model(seed=4)
    cpath = artifact.save(model, make_card(), tmp_path / "m.pt")
    card = json.loads(cpath.read_text())
    assert card["weights_sha256"] == artifact.sha256_file(tmp_path / "m.pt")
    loaded = artifact.load(tmp_path / "m.pt")
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert not loaded.model.training


def test_sha256_mismatch_refuses_to_load(tmp_path):
    artifact.save(random_model(), make_card(), tmp_path / "m.pt")
    data = bytearray((tmp_path / "m.pt").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "m.pt").write_bytes(bytes(data))
    with pytest.raises(artifact.ModelIntegrityError, match="sha256"):
        artifact.load(tmp_path / "m.pt")


def test_missing_card_or_bad_card_is_refused(tmp_path):
    artifact.save(random_model(), make_card(), tmp_path / "m.pt")
    cpath = artifact.card_path(tmp_path / "m.pt")
    card = json.loads(cpath.read_text())
    del card["thresholds"]["AT"]
    cpath.write_text(json.dumps(card))
    with pytest.raises(artifact.ModelIntegrityError, match="threshold"):
        artifact.load(tmp_path / "m.pt")
    cpath.unlink()
    with pytest.raises(artifact.ModelIntegrityError, match="model card"):
        artifact.load(tmp_path / "m.pt")
