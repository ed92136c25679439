from services.diagnosis import artifact
from services.diagnosis.training import TrainConfig, build_demo

TINY = dict(n_train=48, n_val=32, epochs=1, batch_size=16, width_mult=0.35, input_size=64)


def test_training_is_deterministic_given_a_seed(tmp_path):
    cards = [build_demo(tmp_path / f"{name}.pt", TrainConfig(seed=seed, **TINY), progress=False,
                        log=lambda *_: None)
             for name, seed in (("a", 1), ("b", 1), ("c", 2))]
    assert cards[0].weights_sha256 == cards[1].weights_sha256
    assert cards[0].weights_sha256 != cards[2].weights_sha256
    assert cards[0].thresholds == cards[1].thresholds


def test_demo_card_says_synthetic_and_not_for_clinical_use(tmp_path):
    card = build_demo(tmp_path / "d.pt", TrainConfig(**TINY), progress=False, log=lambda *_: None)
    loaded = artifact.load(tmp_path / "d.pt")
    assert loaded.card.clinical_use is False
    assert "Not for clinical use" in card.intended_use and "synthetic" in card.intended_use
    assert card.training_data["real_patient_images"] == 0
    assert card.metrics["validation"]["pattern_f1"].keys() == card.thresholds.keys()
