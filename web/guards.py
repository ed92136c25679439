"""Request hygiene and response headers, for every route at once.

- A NUL byte in the path, a query value, a form field or a JSON string is refused (400, the
  field named) before it reaches a use case: PostgreSQL cannot store one and would fail late.
- JSON nested deeper than any of our bodies (MAX_JSON_DEPTH) is refused, as is JSON that
  does not parse, instead of failing inside the parser.
- Every page carries a Content-Security-Policy (our own scripts and styles only; no
  framing), every JSON response (API, FHIR, DICOMweb) ``frame-ancestors 'none'``; every
  response a Permissions-Policy denying the browser features we never use, nosniff, no
  referrer, no framing; patient data is never cached (Cache-Control: no-store on
  everything but the static files); HSTS in production.
"""

from __future__ import annotations

import re

from flask import Flask, current_app, request

from .errors import render_error

MAX_JSON_DEPTH = 8
MAX_JSON_BYTES = 12_000_000     # seven region masks of at most 1 MB each, base64, and text
# FHIR resources nest deeper (Bundle.entry.resource.reason.concept.coding is 9 levels) and a
# referral carries its images inline: only the request limit (MAX_CONTENT_LENGTH) bounds it.
MAX_FHIR_DEPTH = 16
# Runs of plain characters at once, possessively: a 60 KB base64 image inside a FHIR Bundle
# took 2.3 ms one character at a time, 0.15 ms this way, and an unterminated string cannot
# make it backtrack.
_STRINGS = re.compile(r'"(?:[^"\\]++|\\.)*+"')
_BRACKETS = re.compile(r"[\[\]{}]")
# No page or API of ours uses these; a page injected into ours could not either.
PERMISSIONS_POLICY = ("camera=(), microphone=(), geolocation=(), payment=(), usb=(), serial=(), "
                      "bluetooth=(), midi=(), display-capture=()")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _nul_field() -> str | None:
    if "\x00" in request.path:
        return "path"
    for source in (request.args, request.form):
        for name, value in source.items(multi=True):
            if "\x00" in name or "\x00" in value:
                return name.replace("\x00", "")
    return None


def _json_problem() -> tuple[str, str] | None:
    if not request.is_json:
        return None
    raw = request.get_data(cache=True, as_text=True)
    if not raw.strip():
        return None
    fhir = request.path.startswith("/fhir")
    max_depth = MAX_FHIR_DEPTH if fhir else MAX_JSON_DEPTH
    if len(raw) > MAX_JSON_BYTES and not fhir:
        return "body", f"the JSON body is larger than {MAX_JSON_BYTES // 1_000_000} MB"
    # Depth by brackets before parsing: Python's parser would recurse on 100,000 of them.
    # Strings are cut out first (a bracket inside a string does not nest).
    depth = 0
    for ch in _BRACKETS.findall(_STRINGS.sub("", raw)):
        depth += 1 if ch in "[{" else -1
        if depth > max_depth:
            return "body", f"the JSON body is nested more than {max_depth} levels deep"
    body = request.get_json(silent=True)     # parsed once: the view reads Flask's cached copy
    if body is None:
        return "body", "the body is not valid JSON"
    if _has_nul(body):
        return "body", "the JSON body contains a NUL character"
    return None


def _has_nul(value) -> bool:
    """Any NUL in a key or string (depth already bounded by MAX_JSON_DEPTH)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def init_app(app: Flask) -> None:
    @app.before_request
    def refuse_bad_input():
        field = _nul_field()
        if field is not None:
            return render_error(400, "invalid", f"{field} contains a NUL character", field)
        problem = _json_problem()
        if problem is not None:
            return render_error(400, "invalid", problem[1], problem[0])
        return None

    @app.after_request
    def headers(response):
        if response.mimetype == "text/html":
            # Pages only: an image opened on its own is shown by the browser's own viewer page,
            # whose inline styles a policy would block (and an image runs nothing anyway).
            response.headers.setdefault("Content-Security-Policy", CSP)
        elif response.mimetype.endswith("json"):
            # JSON, FHIR and DICOM JSON: never framed (the older X-Frame-Options says the same).
            response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
        response.headers["Permissions-Policy"] = PERMISSIONS_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        if current_app.extensions["dermatriage"].settings.env == "production":
            response.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        return response
