from services.diagnosis import artifact
from services.modelling.demo import TrainConfig, build_demo

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


def test_off_lesion_share_is_the_bcc_map_mass_off_the_lesion():
    import torch
    from services.diagnosis.network import Architecture, BCCPatternNet
    from services.diagnosis.gradcam import all_target_cams
    from services.modelling.demo import off_lesion_share

    torch.manual_seed(0)
    model = BCCPatternNet(Architecture(width_mult=0.35, input_size=64)).eval()
    x = torch.randn(3, 3, 64, 64)
    features = model.embed(x)
    pooled = features.mean(dim=(2, 3))
    logits = model.heads(pooled)
    # The BCC map as served: training builds it with the same formula (gradcam.signed_cams).
    raw = all_target_cams(model, x).raw[:, 0]
    lesion = torch.zeros(3, 2, 2)
    lesion[:, 0, :] = 1
    assert (raw.flatten(1).sum(1) > 0).all()
    expected = ((raw * (1 - lesion)).flatten(1).sum(1) / raw.flatten(1).sum(1)).mean()
    share = off_lesion_share(logits[:, 0], pooled, features, lesion)
    torch.testing.assert_close(share, expected, rtol=1e-4, atol=1e-6)
    assert off_lesion_share(logits[:, 0], pooled, features, torch.ones(3, 2, 2)) < 1e-6
    share.backward()                                   # differentiable, for training
    assert model.features[0][0].weight.grad is not None
