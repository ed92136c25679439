"""The diagnosis engine: pure PyTorch and numpy, no Flask, Celery or database.

Entry points: ``Engine.load(path).analyse([image bytes, ...])`` for analysis,
``training.build_demo`` for the demo model, ``evaluation.evaluate`` for metrics,
``benchmark.bench_explain`` for timings.
"""

from .engine import AnalysisResult, Engine, TargetMap
from .patterns import PATTERNS, TARGETS
from .preprocess import PREPROCESSING_VERSION, ImageDecodeError

__all__ = ["AnalysisResult", "Engine", "ImageDecodeError", "PATTERNS", "PREPROCESSING_VERSION",
           "TARGETS", "TargetMap"]
