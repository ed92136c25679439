"""DICOMweb, /dicomweb: STOW-RS for devices (store instances; services/dicomweb.py). Bearer
tokens as the JSON API; a GP's (or a GP's device's) account submits."""

from __future__ import annotations

import json

from flask import Blueprint, Flask, Response, g, request, url_for

from services import dicomweb, permissions

from .auth import api_login_required, runtime

bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")


@bp.post("/studies")
@bp.post("/studies/<study>")
@api_login_required(permissions.SUBMIT_CASES)
def store_instances(study: str | None = None):
    status, body, _ = dicomweb.store(runtime(), g.user, request.content_type or "", request.get_data(),
                                     lambda case_id: url_for("api.get_case", case_id=case_id, _external=True))
    return Response(json.dumps(body), status=status, mimetype="application/dicom+json")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
