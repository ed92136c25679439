"""The GP's instant image check: before submitting, is this image one the AI can read?

Decodes the image and runs intake's checks and the scope gate (one forward pass, no Grad-CAM,
no explanation, nothing stored), so the form can show a verdict and a retake hint within a
few hundred milliseconds of the GP picking a file. The verdict at analysis time is the one
that counts; this one is computed by the same code from the same bytes.

Rate-limited per user (``CHECKS_PER_MINUTE``): in Redis where the stack has it, so every web
process shares the count; per process otherwise (the embedded stack runs one).
"""

from __future__ import annotations

import threading
import time

from . import permissions
from .diagnosis.scope import HINTS
from .errors import TooManyRequests, Unavailable
from .intake import ImageDecodeError
from .models import User
from .runtime import Runtime

CHECKS_PER_MINUTE = 30
_local: dict[str, tuple[int, int]] = {}
_local_lock = threading.Lock()
_engines: dict[str, object] = {}
_engine_lock = threading.Lock()


def _allow(rt: Runtime, user_id: str) -> None:
    window = int(time.time() // 60)
    key = f"dt:check:{user_id}:{window}"
    count = None
    if rt.redis is not None:
        import redis
        try:
            pipe = rt.redis.pipeline()
            pipe.incr(key)
            pipe.expire(key, 120)
            count = int(pipe.execute()[0])
        except redis.RedisError:
            count = None
    if count is None:
        with _local_lock:
            w, n = _local.get(user_id, (window, 0))
            n = n + 1 if w == window else 1
            _local[user_id] = (window, n)
            count = n
    if count > CHECKS_PER_MINUTE:
        raise TooManyRequests(f"at most {CHECKS_PER_MINUTE} image checks a minute; try again in "
                              f"{60 - int(time.time()) % 60} seconds", 60 - int(time.time()) % 60)


def _engine(rt: Runtime):
    """The model in service, loaded once per process for checks (apart from any worker's, so
    a check never waits behind an analysis batch)."""
    path = str(rt.settings.model_path)
    with _engine_lock:
        engine = _engines.get(path)
        if engine is None:
            from . import config
            from .diagnosis.engine import Engine
            from .errors import ModelIntegrityError
            try:
                engine = Engine.load(path, device="cpu")
            except FileNotFoundError as exc:
                raise Unavailable(config.missing_model_message(rt.settings.model_path)) from exc
            except ModelIntegrityError as exc:
                raise Unavailable(f"the model in service cannot be loaded: {exc}") from exc
            _engines[path] = engine
    return engine


def check_image(rt: Runtime, user: User, data: bytes) -> dict:
    """The verdict for one image, with the retake hints to show the GP."""
    permissions.require(user, permissions.SUBMIT_CASES)
    _allow(rt, user.id)
    try:
        found = _engine(rt).check(data)
    except ImageDecodeError as exc:
        return {"verdict": "unusable", "reason": exc.message, "code": exc.code, "applicable": False,
                "hints": ["send the image again as a JPEG or PNG file straight from the camera"]}
    v = found.verdict
    hints = [HINTS[i] for i in found.quality.issues]
    if v.verdict not in ("dermoscopic", "unusable") and v.hint:
        hints.append(v.hint)
    if v.verdict == "unusable" and not hints and v.hint:
        hints.append(v.hint)
    if found.off_centre and v.applicable:
        hints.append(HINTS["off_centre"])
    return {"verdict": v.verdict, "reason": v.reason, "applicable": v.applicable, "assessed": v.assessed,
            "hints": hints, "quality": found.quality.to_dict(), "width": found.width, "height": found.height,
            "lesion_offset": found.lesion_offset, "elapsed_ms": found.elapsed_ms}
