"""The real-image recipe on a small real subset: deterministic, honest card, served as trained."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from services import config
from services.cli import main
from services.diagnosis import artifact
from services.diagnosis.engine import Engine
from services.diagnosis.patterns import PATTERNS
from services.modelling import cached_finetune, datasets, features, readouts, recipe, train, views

# With the lesion pooling (the default; explicit here, since the tests below rely on it).
TINY = dict(limit=48, views=2, synthetic=16, epochs=2, low_epochs=1, folds=3, min_pattern_labels=2, lesion=True)
# For builds whose test is about something else: the scope gate (its clinical photos' features
# and five fits) is tested on the TINY model.
QUICK = {**TINY, "scope_gate": False}


@pytest.fixture(scope="module")
def shared_ready():
    data, models = config.shared_data_dir(), config.shared_models_dir()
    if not (data / "ham10000-224").is_dir() or not (data / "derm7pt").is_dir() \
            or not (models / "mobilenet_v2_1.0_224_imagenet_int8.tflite").is_file():
        pytest.skip(f"real data or ImageNet weights not found under {data.parent}")


@pytest.fixture(scope="module")
def tiny_model(shared_ready, tmp_path_factory):
    path = tmp_path_factory.mktemp("real") / "real.pt"
    card = train.build_real(path, recipe.RealTrainConfig(**TINY), progress=False, log=lambda *_: None)
    return path, card


def test_build_is_deterministic_for_a_seed(tiny_model, tmp_path):
    path, card = tiny_model
    again = train.build_real(tmp_path / "again.pt", recipe.RealTrainConfig(**TINY), progress=False,
                             log=lambda *_: None)
    other = train.build_real(tmp_path / "other.pt", recipe.RealTrainConfig(**{**TINY, "seed": 1}),
                             progress=False, log=lambda *_: None)
    assert again.weights_sha256 == card.weights_sha256
    assert other.weights_sha256 != card.weights_sha256
    assert again.calibration == card.calibration and again.thresholds == card.thresholds


def reviewed_folder(folder, n_positive: int, n_negative: int):
    """A labels.csv folder as `dermatriage labels export` writes it: real images with UL labels."""
    import csv
    import shutil
    ham = config.shared_data_dir() / "ham10000-224"
    rows = list(csv.DictReader(open(ham / "metadata.csv")))[500:500 + n_positive + n_negative]
    (folder / "images").mkdir(parents=True)
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["image", "group", "dx", "bcc", "UL", "PN"])
        w.writeheader()
        for i, r in enumerate(rows):
            shutil.copy(ham / "images" / f"{r['image_id']}.jpg", folder / "images" / f"{r['image_id']}.jpg")
            w.writerow({"image": f"images/{r['image_id']}.jpg", "group": f"case{i}", "dx": r["dx"],
                        "bcc": int(r["dx"] == "bcc"), "UL": int(i < n_positive), "PN": ""})
    return folder


def test_reviewed_labels_validate_the_patterns_they_cover(shared_ready, tmp_path):
    enough = reviewed_folder(tmp_path / "enough", 6, 6)
    cfg = recipe.RealTrainConfig(**{**QUICK, "extra_datasets": (str(enough),), "min_pattern_labels": 5})
    card = train.build_real(tmp_path / "m.pt", cfg, progress=False, log=lambda *_: None)
    assert card.validation["UL"] == recipe.VALIDATED
    assert card.evidence_patterns == [c for c in PATTERNS if card.validation[c] == recipe.VALIDATED]
    assert "UL" in card.evidence_patterns and "UL" in card.calibration and "UL" in card.metrics["out_of_fold"]
    assert "12 reviewed images" in card.training_data["per_target"]["UL"]
    few = reviewed_folder(tmp_path / "few", 3, 6)
    cfg = recipe.RealTrainConfig(**{**QUICK, "extra_datasets": (str(few),), "min_pattern_labels": 5})
    card = train.build_real(tmp_path / "m2.pt", cfg, progress=False, log=lambda *_: None)
    assert card.validation["UL"] == recipe.NOT_VALIDATED and "UL" not in card.evidence_patterns
    assert "9 real labels" in card.training_data["per_target"]["UL"]


def test_card_states_what_each_target_was_validated_on(tiny_model):
    _, card = tiny_model
    loaded = artifact.load(tiny_model[0]).card
    assert loaded.validation["BCC"] == loaded.validation["diagnoses"] == recipe.VALIDATED
    assert {c: loaded.validation[c] for c in PATTERNS} == {
        "PN": recipe.VALIDATED, "AT": recipe.VALIDATED, "UL": recipe.NOT_VALIDATED,
        "BO": recipe.NOT_VALIDATED, "MG": recipe.NOT_VALIDATED, "ML": recipe.NOT_VALIDATED,
        "SW": recipe.NOT_VALIDATED}
    assert loaded.evidence_patterns == ["PN", "AT"]
    assert "not a medical device" in loaded.intended_use.lower() and loaded.clinical_use is False
    oof = loaded.metrics["out_of_fold"]
    for target in ("BCC", "PN", "AT"):
        assert 0 <= oof[target]["auc"] <= 1 and len(oof[target]["ci95"]) == 2
        assert oof[target]["ci95"][0] <= oof[target]["auc"] <= oof[target]["ci95"][1]
    assert set(oof["diagnoses"]) == set(loaded.diagnoses) == {"nv", "mel", "bcc", "akiec", "bkl", "df", "vasc"}
    assert set(loaded.calibration) >= {"BCC", "PN", "AT", "diagnosis"}
    assert set(loaded.operating_points) == {"mel", "akiec"}
    assert "synthetic" in loaded.training_data["per_target"]["UL"]


def test_bcc_and_diagnoses_read_the_centre_and_the_lesion_and_patterns_only_the_global_mean(tiny_model):
    model = artifact.load(tiny_model[0]).model
    c = model.map_channels
    assert model.arch.centre == 3 and model.arch.lesion and model.pooled_mean.shape == (3 * c,)
    assert model.bcc_head[-1].weight[:, c:].abs().sum() > 0
    assert model.diagnosis_head[-1].weight[:, c:].abs().sum() > 0
    patterns = model.pattern_head[-1].weight
    assert patterns[:, :c].abs().sum() > 0 and patterns[:, c:].abs().sum() == 0


def test_served_model_reports_diagnoses_and_uses_only_validated_patterns(tiny_model, ham_jpegs):
    path, _ = tiny_model
    engine = Engine.load(path, "cpu")
    # Lower every unvalidated pattern's threshold to 0: each is then "found" on every image.
    engine.thresholds.update({c: 0.0 for c in ("UL", "BO", "MG", "ML", "SW")})
    for r in engine.analyse(ham_jpegs[:4]):
        assert abs(sum(r.diagnosis_probabilities.values()) - 1) < 1e-3
        cited = {e.code for e in r.clinical.supporting + r.clinical.contradicting}
        assert cited <= {"PN", "AT"}
        assert {e.code for e in r.clinical.unvalidated} == {"UL", "BO", "MG", "ML", "SW"}
        assert all(not e.validated for e in r.clinical.unvalidated)
        assert "not validated" in r.clinical.summary
        assert len(r.maps) == 8 and all(np.isfinite(m.normalised).all() for m in r.maps)


def test_evaluate_command_on_a_small_real_subset(tiny_model, tmp_path):
    path, _ = tiny_model
    d7 = config.shared_data_dir() / "derm7pt"
    result = CliRunner().invoke(main, ["model", "evaluate", "--model", str(path), "--dataset", str(d7),
                                       "--limit", "24", "--plots", str(tmp_path / "plots"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["images"] == 24
    assert {"BCC", "PN"} <= set(out["targets"])
    assert all(0 <= t["auc"] <= 1 and "ece" in t for t in out["targets"].values() if t["auc"] is not None)
    assert set(out["lesion_share"]) == {"BCC", "PN", "AT"}
    for png in out["plots"].values():
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(main, ["model", "evaluate", "--model", str(path), "--dataset", str(tmp_path)])
    assert bad.exit_code == 1 and "labels.csv" in bad.output


@pytest.mark.parametrize("classes", [1, 4])
def test_exact_heads_reach_the_regularised_optimum(classes):
    """The heads are fitted to convergence: the objective's gradient vanishes at the result,
    and stronger L2 shrinks the weights."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(600, 12, generator=gen)
    truth = torch.randn(12, max(classes, 2), generator=gen)
    y = (z @ truth).argmax(1) if classes > 1 else ((z @ truth[:, 0]) > 0.5).long()
    cfg = recipe.RealTrainConfig()
    weight = torch.ones(classes) if classes > 1 else None
    pos = None if classes > 1 else readouts.pos_weight(y)
    w, b = readouts._logistic(z, y, 0.01, cfg, weight=weight, pos_weight=pos)
    w, b = w.T.clone().requires_grad_(True), b.clone().requires_grad_(True)
    logits = z @ w + b
    loss = (F.cross_entropy(logits, y, weight=weight) if classes > 1
            else F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), pos_weight=pos))
    (loss + 0.01 * (w * w).sum()).backward()
    assert w.grad.abs().max() < 1e-3 and b.grad.abs().max() < 1e-3
    strong, _ = readouts._logistic(z, y, 1.0, cfg, weight=weight, pos_weight=pos)
    assert strong.norm() < 0.5 * w.detach().norm()


def test_stage_two_tunes_only_the_last_blocks_and_serves_what_it_trained_on(shared_ready, tmp_path):
    """Stage 2 (``--finetune-from 14``) fine-tunes the blocks from there on, from cached
    activations of the block before, deterministically. The served network must compute the
    pooled vector the heads were fitted on; the blocks before and every BatchNorm
    statistic (train mode would overwrite them) stay ImageNet's."""
    import torch

    from services.diagnosis.network import BCCPatternNet
    from services.modelling.imagenet import SHARED_FILE, read_tflite

    cfg = recipe.RealTrainConfig(**QUICK, finetune_from=14)
    card = train.build_real(tmp_path / "tuned.pt", cfg, progress=False, log=lambda *_: None)
    assert card.metrics["training_config"]["finetune_from"] == 14
    again = train.build_real(tmp_path / "again.pt", cfg, progress=False, log=lambda *_: None)
    assert again.weights_sha256 == card.weights_sha256
    served = artifact.load(tmp_path / "tuned.pt").model
    imagenet = BCCPatternNet(cfg.architecture())
    imagenet.features.load_state_dict(read_tflite(config.shared_models_dir() / SHARED_FILE).features)
    start = cfg.finetune_from
    for name, value in imagenet.features.state_dict().items():
        block = int(name.split(".")[0])
        tuned = served.features.state_dict()[name]
        if block < start or "running_" in name or name.endswith("num_batches_tracked"):
            assert torch.equal(tuned, value), name
    changed = [n for n, v in imagenet.features.state_dict().items()
               if int(n.split(".")[0]) >= start and not torch.equal(served.features.state_dict()[n], v)]
    assert changed, "stage 2 left the last blocks as they were"

    # The cached route (ImageNet blocks up to the cache, the tuned tail after) equals the
    # served network on the same images.
    samples = datasets.shared_samples(8)[:8]
    small = recipe.RealTrainConfig(**{**TINY, "views": 1, "synthetic": 0, "finetune_from": 14})
    feats = features.extract(imagenet.eval(), samples, small, lambda _n: None)
    assert feats.cells is not None and feats.cells.shape == (1, 8, 1, 7, 7)   # the lesion pooling's input
    cached = cached_finetune.tail_pooled(served, feats.inner, feats.real, start, feats.cells)[0]
    images = np.stack([np.asarray(views.load_image(s.path, 224)) for s in samples])
    from services.diagnosis.preprocess import to_unit
    with torch.inference_mode():
        direct = served.eval().pooled(to_unit(images))
    assert torch.allclose(cached, direct, rtol=1e-2, atol=1e-2 * direct.abs().max().item())


def test_train_refuses_a_stage_two_start_whose_cache_would_not_fit(tmp_path):
    result = CliRunner().invoke(main, ["model", "train", "--finetune-from", "5", "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 2 and "--finetune-from" in result.output and "between 11 and 18" in result.output
    assert not (tmp_path / "m.pt").exists()


def test_one_solve_of_all_folds_reaches_each_folds_own_optimum():
    """``fit_readouts`` minimises the folds' BCC and diagnosis objectives together, each in
    its own standardisation: at its result every fold's own gradient vanishes, and its
    read-out predicts what that fold's separate fits (``_logistic``) predict."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    views, n, c = 3, 240, 10
    x = torch.randn(views, n, c, generator=gen) * torch.linspace(0.5, 3, c) + torch.linspace(-2, 2, c)
    truth = torch.randn(c, 7, generator=gen)
    dx = (x[0] @ truth).argmax(1)
    dx[::11] = -1                                   # images without a diagnosis
    bcc = (dx == 2).long()
    bcc[::7] = -1                                   # and without a BCC label
    labels = datasets.Labels(dx, bcc, torch.full((n, len(PATTERNS)), -1))
    folds = torch.arange(n) % 3
    sets = [folds != k for k in range(3)] + [torch.ones(n, dtype=torch.bool)]
    cfg = recipe.RealTrainConfig(l2_diagnosis=0.01, l2_bcc=0.02, invariance=(0.1, 0.03))
    fitted = readouts.fit_readouts(x, labels, sets, cfg)
    assert len(fitted) == 4
    for rows, r in zip(sets, fitted):
        flat, d, b = x[:, rows].reshape(-1, c), dx[rows].repeat(views), bcc[rows].repeat(views)
        assert torch.allclose(r.mean, flat.mean(0)) and torch.allclose(r.std, flat.std(0))
        z = (flat - r.mean) / r.std
        w = r.weight.clone().requires_grad_(True)
        bias = r.bias.clone().requires_grad_(True)
        logits = z @ w + bias
        weight, pos = readouts.class_weights(d, 7), readouts.pos_weight(b[b >= 0])
        loss = (F.cross_entropy(logits[d >= 0, :7], d[d >= 0], weight=weight) + 0.01 * w[:, :7].square().sum()
                + F.binary_cross_entropy_with_logits(logits[b >= 0, 7], b[b >= 0].float(), pos_weight=pos)
                + 0.02 * w[:, 7].square().sum())
        # The views' disagreement with view 0, each read-out over the images it is fitted on,
        # each view with its own weight.
        per_view = logits.view(views, -1, 8)
        loss = loss + sum(weight * ((per_view[v, m, cols] - per_view[0, m, cols]) ** 2).sum(-1).mean()
                          for v, weight in ((1, 0.1), (2, 0.03))
                          for m, cols in ((dx[rows] >= 0, slice(0, 7)), (bcc[rows] >= 0, slice(7, 8))))
        loss.backward()
        assert w.grad.abs().max() < 1e-3 and bias.grad.abs().max() < 1e-3
        alone, alone_b = readouts._logistic(z[d >= 0], d[d >= 0], 0.01, cfg, weight=weight, views=views)
        # Softmax logits are defined up to a constant per image (the biases are not penalised).
        assert torch.allclose(logits[:, :7].detach().softmax(1), (z @ alone.T + alone_b).softmax(1), atol=1e-3)
        alone, alone_b = readouts._logistic(z[b >= 0], b[b >= 0], 0.02, cfg, pos_weight=pos, views=views)
        assert torch.allclose(logits[:, 7:].detach().sigmoid(), (z @ alone.T + alone_b).sigmoid(), atol=1e-3)


def test_dihedral_views_are_the_squares_other_symmetries_and_lose_no_pixel():
    from PIL import Image

    rng = np.random.default_rng(0)
    original = np.asarray(Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)))
    seen = set()
    for i in range(64):
        view = np.asarray(views.dihedral(Image.fromarray(original), np.random.default_rng([0, i, 1])))
        assert view.shape == original.shape and not np.array_equal(view, original)
        # A symmetry moves pixels and changes none: the same colours, as often.
        assert sorted(map(tuple, view.reshape(-1, 3))) == sorted(map(tuple, original.reshape(-1, 3)))
        seen.add(view.tobytes())
    assert len(seen) == 7


def test_camera_views_recolour_without_moving_a_pixel():
    """Another camera's rendering: the channels' balance, exposure and gamma change, the
    geometry does not (a flat patch stays flat, an edge stays where it was)."""
    from PIL import Image

    img = np.full((8, 8, 3), 120, np.uint8)
    img[:, 4:] = 200
    shifts = []
    for i in range(32):
        view = np.asarray(views.camera(Image.fromarray(img), np.random.default_rng([0, i, 1])), dtype=int)
        assert view.shape == img.shape
        assert (view[:, :4] == view[0, 0]).all() and (view[:, 4:] == view[0, 4]).all()
        assert (view[0, 4] > view[0, 0]).all()      # the brighter half stays brighter
        shifts.append(view[0, 0] - 120)
    shifts = np.array(shifts)
    # Channels move apart (white balance), by a few levels: a spread of 0.05, not a new image.
    assert (shifts[:, 0] != shifts[:, 2]).mean() > 0.9 and np.abs(shifts).max() < 40
    # `--augmentation dihedral+camera`: a symmetry, recoloured, drawn from the seed alone.
    rng = np.random.default_rng(5)
    original = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    cfg = recipe.RealTrainConfig(augmentation="dihedral+camera")
    first, again = (np.asarray(views.view_of(original, 3, 1, cfg)) for _ in range(2))
    assert np.array_equal(first, again)
    symmetric = np.asarray(views.view_of(original, 3, 1, recipe.RealTrainConfig(augmentation="dihedral")))
    assert not np.array_equal(first, symmetric)
    assert np.abs(first.astype(int) - symmetric).mean() < 15


def test_the_builds_views_are_a_symmetry_then_a_recoloured_symmetry():
    """The recipe's views, one augmentation per view: view 0 as served, view 1 a symmetry
    (the same colours), view 2 and beyond a symmetry under another camera's colour."""
    from PIL import Image

    original = Image.fromarray(np.random.default_rng(5).integers(0, 256, (6, 6, 3), dtype=np.uint8))
    cfg = recipe.RealTrainConfig()
    assert cfg.views == 3 and views.per_view(cfg.augmentation) == ("dihedral", "dihedral+camera")

    def pixels(img):
        return sorted(map(tuple, np.asarray(img).reshape(-1, 3)))

    assert views.view_of(original, 2, 0, cfg) is original
    assert pixels(views.view_of(original, 2, 1, cfg)) == pixels(original)
    for view in (2, 3):        # the last augmentation repeats for the views beyond
        assert pixels(views.view_of(original, 2, view, cfg)) != pixels(original)
    with pytest.raises(ValueError, match="unknown augmentation 'sepia'"):
        views.per_view("dihedral,sepia")


def test_train_refuses_unknown_augmentations_and_bad_invariance_weights(tmp_path):
    out = tmp_path / "m.pt"
    result = CliRunner().invoke(main, ["model", "train", "--augmentation", "dihedral,sepia", "--out", str(out)])
    assert result.exit_code == 2 and "unknown augmentation 'sepia'" in result.output
    for bad in ("0.1,x", "-1", ""):
        result = CliRunner().invoke(main, ["model", "train", "--invariance", bad, "--out", str(out)])
        assert result.exit_code == 2 and "--invariance" in result.output and "separated by commas" in result.output
    assert not out.exists()


def test_invariance_pulls_each_images_views_together():
    """With ``invariance``, a read-out gives less weight to what differs between an image's
    views: here column 3 predicts the label but changes between the two views."""
    import torch

    gen = torch.Generator().manual_seed(0)
    first = torch.randn(400, 6, generator=gen)
    second = first.clone()
    second[:, 3] += torch.randn(400, generator=gen) * 1.5
    y = ((first[:, 0] + first[:, 3]) > 0).long()
    z, labels = torch.cat([first, second]), y.repeat(2)

    def disagreement(invariance):
        cfg = recipe.RealTrainConfig(invariance=(invariance,))
        w, b = readouts._logistic(z, labels, 0.01, cfg, pos_weight=readouts.pos_weight(labels), views=2)
        return ((second - first) @ w.T).square().mean().item(), w[0, 3].item() / w[0, 0].item()

    (loose, ratio_loose), (tight, ratio_tight) = disagreement(0.0), disagreement(1.0)
    assert tight < 0.5 * loose and ratio_tight < 0.7 * ratio_loose


def test_image_finetune_tunes_the_backbone_on_fresh_augmentations_and_serves_it(shared_ready, tmp_path):
    """The GPU recipe (``--device cuda``), run here on the CPU on a tiny subset: stage 1 on
    the frozen features, the backbone fine-tuned on augmented images, the heads refitted on
    the tuned network; the served model is the tuned one."""
    import torch

    from services.modelling.image_finetune import AugmentedImages
    from services.modelling.imagenet import SHARED_FILE, read_tflite

    cfg = recipe.RealTrainConfig(**{**QUICK, "limit": 24}, image_finetune=True, image_epochs=1, image_batch=16,
                                image_from=14)
    path = tmp_path / "tuned.pt"
    card = train.build_real(path, cfg, progress=False, log=lambda *_: None)
    assert card.metrics["training_config"]["image_finetune"] is True
    assert card.metrics["out_of_fold"]["BCC"]["auc"] is not None
    imagenet = read_tflite(config.shared_models_dir() / SHARED_FILE).features
    engine = Engine.load(path, "cpu")
    served = engine.model.features.state_dict()
    # Blocks before image_from keep ImageNet's weights; the tuned ones moved.
    assert torch.equal(served["13.conv.0.0.weight"], imagenet["13.conv.0.0.weight"])
    assert not torch.allclose(served["18.0.weight"], imagenet["18.0.weight"])
    image = next(config.shared_data_dir().joinpath("ham10000-224").rglob("*.jpg")).read_bytes()
    result = engine.analyse([image])[0]
    assert abs(sum(result.diagnosis_probabilities.values()) - 1) < 1e-3

    # Each epoch draws a new augmentation of an image, the same whichever worker draws it.
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    rows = np.array([2, 0])
    first, again = AugmentedImages(images, rows, 0, 0), AugmentedImages(images, rows, 0, 0)
    assert torch.equal(first[0][0], again[0][0]) and first[0][1] == 2
    assert not torch.equal(first[0][0], AugmentedImages(images, rows, 0, 1)[0][0])


def test_train_on_cuda_says_when_there_is_no_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the build would run")
    result = CliRunner().invoke(main, ["model", "train", "--device", "cuda", "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 1 and "no CUDA device" in result.output
    assert not (tmp_path / "m.pt").exists()


def test_card_carries_the_figures_with_each_collection_held_out_and_the_weights_do_not_depend_on_them(
        tiny_model, tmp_path):
    path, card = tiny_model
    oos = card.metrics["out_of_source"]
    from services.modelling.datasets import shared_samples
    held = {s.collection for s in shared_samples(TINY["limit"])}
    assert set(oos["collections"]) == held and len(held) >= 3 and "derm7pt" in held
    for name, figures in oos["collections"].items():
        assert figures["images"] > 0 and figures["training_images"] > 0
        # The same images as the random folds read them: the like-for-like in-source figure.
        assert figures["in_source"]["images"] == figures["images"]
    without = train.build_real(tmp_path / "alone.pt", recipe.RealTrainConfig(**{**TINY, "out_of_source": False}),
                               progress=False, log=lambda *_: None)
    assert "out_of_source" not in without.metrics
    assert without.weights_sha256 == card.weights_sha256


def test_evaluate_reports_each_collection_of_a_folder_with_a_source_column(tiny_model, tmp_path):
    import csv

    path, _ = tiny_model
    ham = config.shared_data_dir() / "ham10000-224"
    rows = list(csv.DictReader(open(ham / "metadata.csv")))
    picked = [r for r in rows if r["dx"] == "mel"][:8] + [r for r in rows if r["dx"] == "nv"][:8]
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "dx", "group", "source"])
        for i, r in enumerate(picked):      # the images are read where they are, not copied
            source = "clinic-a" if i % 2 else "clinic-b"
            w.writerow([ham / "images" / f"{r['image_id']}.jpg", r["dx"], r["lesion_id"], source])
    result = CliRunner().invoke(main, ["model", "evaluate", "--model", str(path), "--dataset", str(tmp_path),
                                       "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert set(out["by_collection"]) == {"clinic-a", "clinic-b"}
    for figures in out["by_collection"].values():
        assert figures["images"] == 8 and 0 <= figures["melanoma"]["auc"] <= 1


def test_a_squashed_copy_stretched_back_is_cropped_as_the_engine_crops_the_photo(tmp_path):
    from PIL import Image

    from services.diagnosis.preprocess import prepare
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
    photo = coarse.resize((120, 90), Image.Resampling.BICUBIC)     # a smooth 4:3 "photograph"
    squashed = photo.resize((90, 90), Image.Resampling.BICUBIC)    # how the shared copies were made
    squashed.save(tmp_path / "s.png")
    served = prepare(open(tmp_path / "s.png", "rb").read(), 64).rgb
    stretched = np.asarray(views.load_image(tmp_path / "s.png", 64, 4 / 3), dtype=float)
    as_photo = prepare(_png(photo), 64).rgb.astype(float)
    assert np.abs(stretched - as_photo).mean() < np.abs(served.astype(float) - as_photo).mean() / 2


def _png(img) -> bytes:
    import io
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_card_carries_the_scope_gate_and_the_triage(tiny_model):
    _, card = tiny_model
    assert set(card.scope["thresholds"]) == {"dermoscopic", "lesion", "typicality", "dermoscopic_typicality"}
    assert "dermoscopy_passed" in card.scope["figures"]
    model = artifact.load(tiny_model[0]).model
    assert model.scope_head is not None and model.scope_head.weight.abs().sum() > 0
    th = card.triage["thresholds"]
    assert 0 <= th["routine"] <= th["urgent"] <= 1
    assert card.triage["combination"] in ("diagnosis_mass", "max_with_bcc_head", "bcc_head_in_mass")
    assert len(card.triage["curve"]["points"]) == 101


def test_model_triage_prints_the_tiers_and_draws_the_curve(tiny_model, tmp_path):
    plot = tmp_path / "curve.png"
    result = CliRunner().invoke(main, ["model", "triage", "--model", str(tiny_model[0]), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "low tier NPV" in result.output and "urgent" in result.output and "ordering AUC" in result.output
    assert plot.stat().st_size > 10_000
    derm7pt = config.shared_data_dir() / "derm7pt"
    result = CliRunner().invoke(main, ["model", "triage", "--model", str(tiny_model[0]), "--dataset", str(derm7pt),
                                       "--limit", "24", "--plot", str(tmp_path / "d7.png"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["images"] + out["refused_by_scope_gate"] <= 24 and out["thresholds"] == tiny_model[1].triage["thresholds"]


def test_model_triage_refuses_a_model_without_triage(tmp_path):
    from tests.factories import small_model_file
    result = CliRunner().invoke(main, ["model", "triage", "--model", str(small_model_file(tmp_path))])
    assert result.exit_code != 0 and "no triage section" in result.output
