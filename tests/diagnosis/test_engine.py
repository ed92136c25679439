import threading

import numpy as np
import pytest

from services.diagnosis.engine import AnalysisResult
from services.diagnosis.patterns import TARGETS
from services.diagnosis.preprocess import PREPROCESSING_VERSION, ImageDecodeError
from services.modelling.synthetic import generate

from tests.factories import encode


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    data = generate(5, seed=1, size=200)
    return [encode(img) for img in data.images]


def test_analyse_returns_typed_results_for_every_target(small_engine, images):
    results = small_engine.analyse(images)
    assert len(results) == len(images)
    r = results[0]
    assert isinstance(r, AnalysisResult)
    assert [m.target for m in r.maps] == list(TARGETS)
    assert r.maps[0].normalised.shape == (96, 96) and r.maps[0].raw.shape == (6, 6)
    assert 0 <= r.bcc_probability <= 1 and set(r.pattern_probabilities) == set(TARGETS[1:])
    assert r.clinical.diagnosis in ("BCC", "non-BCC")
    assert r.preprocessing_version == PREPROCESSING_VERSION
    assert r.model["name"] == "test-model" and len(r.model["weights_sha256"]) == 64
    assert r.image["media_type"] == "image/jpeg" and r.image["width"] == 200
    assert r.timings_ms["batch_size"] == 5 and r.timings_ms["analysis_ms"] > 0
    summary = r.summary()
    assert set(summary["map_numbers"]) == set(TARGETS)
    assert [m.target for m in r.maps] == list(TARGETS)


def test_batch_and_single_give_the_same_answer(small_engine, images):
    batch = small_engine.analyse(images)
    single = small_engine.analyse(images[2:3])[0]
    assert abs(batch[2].bcc_probability - single.bcc_probability) < 1e-3
    np.testing.assert_allclose(batch[2].maps[3].normalised, single.maps[3].normalised, atol=1e-4)


def test_a_bad_image_is_named_and_nothing_analysed(small_engine, images):
    with pytest.raises(ImageDecodeError) as info:
        small_engine.analyse([images[0], b"garbage bytes" * 20])
    assert info.value.index == 1 and "image 1" in str(info.value)
    assert small_engine.analyse([]) == []


def test_safe_to_call_from_several_threads(small_engine, images):
    expected = [r.bcc_probability for r in small_engine.analyse(images)]
    seen, errors = [], []

    def work():
        try:
            seen.append([r.bcc_probability for r in small_engine.analyse(images)])
        except Exception as exc:       # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(np.allclose(s, expected, atol=1e-4) for s in seen) and len(seen) == 4


def test_real_dermoscopic_jpegs(small_engine, ham_jpegs):
    results = small_engine.analyse(ham_jpegs)
    assert all(r.quality.acceptable for r in results)
    assert {r.lesion_mask_method for r in results} <= {"otsu", "centre_disc"}


def test_cpu_passes_of_a_large_batch_give_what_one_pass_gives(small_engine, images, monkeypatch):
    """On the CPU a batch runs in passes of ``CPU_PASS`` images (page faults: engine.py);
    the pieces come back in order, every field of the batch's explanation."""
    import torch

    from services.diagnosis import engine as engine_module
    from services.diagnosis.preprocess import prepare

    x = torch.stack([prepare(b, small_engine.input_size).tensor for b in images + images[:1]])
    whole = small_engine.explain_tensors(x, pass_size=len(x))
    monkeypatch.setattr(engine_module, "CPU_PASS", 4)
    passes = small_engine.explain_tensors(x)
    torch.testing.assert_close(small_engine.forward(x), small_engine.forward(x, pass_size=len(x)),
                               atol=1e-4, rtol=1e-3)
    for field in ("probabilities", "raw", "normalised"):
        assert getattr(passes, field).shape == getattr(whole, field).shape
        torch.testing.assert_close(getattr(passes, field), getattr(whole, field), atol=1e-4, rtol=1e-3)
    assert passes.lesion_methods == whole.lesion_methods
    assert [c.diagnosis for c in passes.clinical] == [c.diagnosis for c in whole.clinical]
    np.testing.assert_allclose([[n.peak for n in row] for row in passes.numbers],
                               [[n.peak for n in row] for row in whole.numbers], atol=1e-3)
    assert len(passes.numbers) == len(passes.clinical) == len(x) == 6
