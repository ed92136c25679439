"""ImageNet weights for our MobileNet-V2 from the shared int8 TFLite file (Keras's model).

No model hub is reachable here; ``../shared/models`` holds Keras's ImageNet MobileNet-V2
(width 1.0, 224 px) converted to a fully int8 TFLite model. This reader dequantises it:
int8 weights with per-output-channel scales, int32 biases with their own scales. BatchNorm
was folded into each convolution by the converter, so every BatchNorm of our network is set
to the identity plus the folded bias (mean 0, variance 1 - eps, weight 1): the converted
network computes exactly what the folded TFLite graph computes, in float, and stays
trainable. Keras pads strided convolutions at the bottom/right only, so the architecture is
built with ``same_padding=True`` and Keras's input scaling (``input_norm="tf"``).

The flatbuffer is parsed with the ``tflite`` package (a thin, generated schema reader);
operators are taken in graph order: 35 convolutions and 17 depthwise convolutions map one to
one onto torchvision's layer sequence (features.0 ... features.18), then the dense layer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..diagnosis.mobilenet_v2 import MobileNetV2Features
from ..diagnosis.network import Architecture
from ..errors import ModelIntegrityError

SHARED_FILE = "mobilenet_v2_1.0_224_imagenet_int8.tflite"
SHA256 = "3cb2d53f5b57aea6696724c803db309de8db81270c06f9b05947da711cd7da01"
IMAGENET_ARCH = Architecture(width_mult=1.0, output_stride=32, input_size=224, input_norm="tf",
                             same_padding=True)


@dataclass
class ImageNetWeights:
    features: dict[str, torch.Tensor]     # state dict of MobileNetV2Features.features
    classifier_weight: torch.Tensor       # (1000, 1280)
    classifier_bias: torch.Tensor         # (1000,)


def _dequantised(model, graph, index: int) -> np.ndarray:
    import tflite

    tensor = graph.Tensors(index)
    raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
    if not isinstance(raw, np.ndarray) or raw.size == 0:
        raise ModelIntegrityError(f"tensor {tensor.Name().decode()} has no data")
    dtype = {tflite.TensorType.INT8: np.int8, tflite.TensorType.INT32: np.int32,
             tflite.TensorType.FLOAT32: np.float32}.get(tensor.Type())
    if dtype is None:
        raise ModelIntegrityError(f"unexpected tensor type {tensor.Type()}")
    values = raw.view(dtype).astype(np.float64).reshape(tensor.ShapeAsNumpy())
    if dtype is np.float32:
        return values
    q = tensor.Quantization()
    scale = q.ScaleAsNumpy().astype(np.float64)
    zero = q.ZeroPointAsNumpy().astype(np.float64)
    axis = q.QuantizedDimension() if scale.size > 1 else 0
    shape = [1] * values.ndim
    shape[axis] = -1
    return (values - zero.reshape(shape)) * scale.reshape(shape)


def read_tflite(path: Path, expected_sha256: str | None = SHA256) -> ImageNetWeights:
    """Parse and dequantise the shared file; refuses a file whose sha256 differs."""
    import tflite

    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise ModelIntegrityError(f"refusing {path}: its sha256 is {digest}, expected {expected_sha256}")
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        graph = model.Subgraphs(0)
        convs, dense = [], None
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            kind = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if kind in (tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.DEPTHWISE_CONV_2D):
                convs.append((kind == tflite.BuiltinOperator.DEPTHWISE_CONV_2D,
                              _dequantised(model, graph, op.Inputs(1)),
                              _dequantised(model, graph, op.Inputs(2))))
            elif kind == tflite.BuiltinOperator.FULLY_CONNECTED:
                dense = (_dequantised(model, graph, op.Inputs(1)), _dequantised(model, graph, op.Inputs(2)))
    except ModelIntegrityError:
        raise
    except Exception as exc:        # a damaged flatbuffer fails in many ways
        raise ModelIntegrityError(f"cannot parse {path} as a TFLite model: {exc}") from exc
    if dense is None:
        raise ModelIntegrityError(f"{path} has no classifier layer: not the expected MobileNet-V2")
    return ImageNetWeights(_to_state_dict(convs), torch.tensor(dense[0], dtype=torch.float32),
                           torch.tensor(dense[1], dtype=torch.float32))


def _to_state_dict(convs: list) -> dict[str, torch.Tensor]:
    reference = MobileNetV2Features(IMAGENET_ARCH.width_mult, IMAGENET_ARCH.output_stride,
                                    same_padding=True).features
    targets = [name[:-len(".weight")] for name, p in reference.named_parameters()
               if p.dim() == 4]
    if len(targets) != len(convs):
        raise ModelIntegrityError(f"the file has {len(convs)} convolutions, MobileNet-V2 has {len(targets)}")
    state = reference.state_dict()
    for prefix, (depthwise, weight, bias) in zip(targets, convs):
        # TFLite: OHWI for convolutions, 1HWC for depthwise; torch wants OIHW.
        w = weight.transpose(3, 0, 1, 2) if depthwise else weight.transpose(0, 3, 1, 2)
        if tuple(w.shape) != tuple(state[prefix + ".weight"].shape):
            raise ModelIntegrityError(f"{prefix}: shape {w.shape} does not fit {tuple(state[prefix + '.weight'].shape)}")
        state[prefix + ".weight"] = torch.tensor(w, dtype=torch.float32)
        bn = prefix.rsplit(".", 1)[0] + "." + str(int(prefix.rsplit(".", 1)[1]) + 1)
        eps = 1e-5
        state[bn + ".weight"] = torch.ones(len(bias))
        state[bn + ".bias"] = torch.tensor(bias, dtype=torch.float32)
        state[bn + ".running_mean"] = torch.zeros(len(bias))
        state[bn + ".running_var"] = torch.full((len(bias),), 1.0 - eps)
    return state


def imagenet_backbone(path: Path) -> tuple[torch.nn.Sequential, ImageNetWeights]:
    """A float MobileNet-V2 ``features`` with the file's weights, in eval mode."""
    weights = read_tflite(path)
    features = MobileNetV2Features(IMAGENET_ARCH.width_mult, IMAGENET_ARCH.output_stride,
                                   same_padding=True).features
    features.load_state_dict(weights.features)
    return features.eval(), weights
