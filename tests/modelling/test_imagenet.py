"""The ImageNet weights reader against a reference TFLite interpreter, on real images."""

import csv
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from services import config
from services.errors import ModelIntegrityError
from services.modelling import imagenet


@pytest.fixture(scope="module")
def tflite_file():
    path = config.shared_models_dir() / imagenet.SHARED_FILE
    if not path.is_file():
        pytest.skip(f"shared ImageNet weights not found at {path}")
    return path


@pytest.fixture(scope="module")
def converted(tflite_file):
    return imagenet.imagenet_backbone(tflite_file)


def reference(tflite_file):
    from ai_edge_litert.interpreter import Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = Interpreter(model_path=str(tflite_file), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    return it


def test_converted_network_agrees_with_the_reference_interpreter(tflite_file, converted, ham_dir):
    features, weights = converted
    it = reference(tflite_file)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    pooled_ref = next(d for d in it.get_tensor_details()
                      if "global_average_pooling2d/Mean" in d["name"] and len(d["shape"]) == 2)
    rows = [r for r in csv.DictReader(open(ham_dir / "metadata.csv"))][:40:4]
    ours, theirs = [], []
    for row in rows:
        rgb = np.array(Image.open(ham_dir / "images" / f"{row['image_id']}.jpg").convert("RGB"))
        scale, zero = inp["quantization"]
        q = np.clip(np.round((rgb / 127.5 - 1) / scale + zero), 0, 255).astype(np.uint8)
        it.set_tensor(inp["index"], q[None])
        it.invoke()
        ref_top1 = int(it.get_tensor(out["index"]).argmax())
        s, z = pooled_ref["quantization"]
        ref_pooled = (it.get_tensor(pooled_ref["index"]).astype(np.float32) - z) * s
        # The very input the interpreter sees (its uint8 input, dequantised).
        x = torch.from_numpy((q.astype(np.float32) - zero) * scale).permute(2, 0, 1)[None]
        with torch.no_grad():
            pooled = features(x).mean((2, 3))
            logits = pooled @ weights.classifier_weight.T + weights.classifier_bias
        assert ref_top1 in logits.topk(5).indices[0].tolist(), row["image_id"]
        # int8 activations round every layer: one image's 1280 features agree to ~0.99
        assert np.corrcoef(ref_pooled[0], pooled[0].numpy())[0, 1] >= 0.98, row["image_id"]
        ours.append(pooled[0].numpy())
        theirs.append(ref_pooled[0])
    assert np.corrcoef(np.concatenate(theirs), np.concatenate(ours))[0, 1] >= 0.99


def test_keras_padding_matters(tflite_file, converted, ham_jpegs):
    """Symmetric (PyTorch) padding with the same weights drifts away from the reference."""
    import io
    features, _ = converted
    from services.diagnosis.mobilenet_v2 import MobileNetV2Features
    torch_padded = MobileNetV2Features(1.0, 32, same_padding=False).features.eval()
    torch_padded.load_state_dict(features.state_dict())
    rgb = np.array(Image.open(io.BytesIO(ham_jpegs[0])).convert("RGB").resize((224, 224)))
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        a, b = features(x).mean((2, 3)), torch_padded(x).mean((2, 3))
    assert not torch.allclose(a, b, atol=1e-3)


def test_a_corrupted_or_foreign_file_refuses_to_load(tflite_file, tmp_path):
    data = bytearray(tflite_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.tflite").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        imagenet.read_tflite(tmp_path / "bad.tflite")
    (tmp_path / "cut.tflite").write_bytes(bytes(data[:5000]))
    with pytest.raises(ModelIntegrityError):
        imagenet.read_tflite(tmp_path / "cut.tflite", expected_sha256=None)
