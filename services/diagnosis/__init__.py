"""The diagnosis engine that workers serve: pure PyTorch and numpy, no Flask, Celery or database.

Network, preprocessing, Grad-CAM, map numbers, clinical rule and the model artifact; entry
point ``Engine.load(path).analyse([image bytes, ...])``. Building models (training, data,
evaluation) lives in ``services/modelling``, benchmarks in ``services/bench``.
"""

from .engine import AnalysisResult, Engine, TargetMap
from .patterns import PATTERNS, TARGETS
from ..intake import ImageDecodeError
from .preprocess import PREPROCESSING_VERSION

__all__ = ["AnalysisResult", "Engine", "ImageDecodeError", "PATTERNS", "PREPROCESSING_VERSION",
           "TARGETS", "TargetMap"]
