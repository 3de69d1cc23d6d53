"""HTTP API: list and describe models, predict one image per request.

Errors are `{"error": {"code", "message"}}` with the status the error class
declares; request bodies over the limit are refused with 413 by Werkzeug
before they are read whole (`MAX_CONTENT_LENGTH`).
"""

from __future__ import annotations

import uuid

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..errors import BadRequest, MethodNotAllowed, NotFound, ServingError, TooLarge
from ..frames.access import Grant
from ..frames.service import PredictionService, FrameRequest
from .openapi import openapi_document

bp = Blueprint("api", __name__, url_prefix="/api")


def _service() -> PredictionService:
    return current_app.extensions["predictions"]


def error_response(exc: ServingError):
    response = jsonify({"error": {"code": exc.code, "message": exc.message}})
    response.status_code = exc.http_status
    return response


def request_grant() -> Grant:
    """The grant of the request being handled; raises `Unauthorized` when refused."""
    return current_app.extensions["access"].grant_for_request(request.headers.get("Authorization"),
                                                               request.args.get("token"))


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())


@bp.get("/models")
def list_models():
    return jsonify(_service().list_models(request_grant()))


@bp.get("/models/<name>")
def describe_model(name: str):
    request_grant().require(name)
    return jsonify(_service().describe(name))


def _frame_from_request(name: str) -> FrameRequest:
    """Build a frame from a multipart upload or a JSON body."""
    top_k = request.args.get("top_k")
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise BadRequest("Send the image as the multipart field 'file'.")
        payload = {"model": name, "image": upload.read()}
        top_k = request.form.get("top_k", top_k)
    elif request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest("The JSON body must be an object with an 'image' field.")
        payload = {**body, "model": name}
        if "url" in body and "image" not in body:
            payload["image"] = _service().fetch_url(body["url"])
        if "top_k" in body:
            top_k = None
    elif request.mimetype.startswith("image/") or request.mimetype == "application/octet-stream":
        payload = {"model": name, "image": request.get_data(cache=False)}
    else:
        raise BadRequest("Send multipart/form-data with a 'file' field, JSON with an 'image' field, or the image itself as the body.")
    if top_k is not None:
        try:
            payload["top_k"] = int(top_k)
        except ValueError:
            raise BadRequest("'top_k' must be an integer from 1 to 100.") from None
    return FrameRequest.parse(payload, _service().default_top_k)


@bp.post("/models/<name>/predict")
def predict(name: str):
    request_grant().require(name)
    frame = _frame_from_request(name)
    # Each HTTP request is its own client: never superseded by another.
    return jsonify(_service().predict(frame, client_key=uuid.uuid4().hex))


def init_app(app) -> None:
    app.register_blueprint(bp)

    @app.errorhandler(ServingError)
    def serving_error(exc: ServingError):
        return error_response(exc)

    @app.errorhandler(RequestEntityTooLarge)
    def body_too_large(exc):
        return error_response(TooLarge(
            f"The request body is over the {app.config['MAX_CONTENT_LENGTH']} byte limit."))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        # JSON errors for the API; pages keep Flask's HTML ones.
        if not request.path.startswith("/api/"):
            return exc
        if exc.code == 404:
            return error_response(NotFound(f"There is no API route {request.path[:200]!r}; "
                                           "see /api/openapi.json."))
        if exc.code == 405:
            response = error_response(MethodNotAllowed(
                f"{request.method} is not allowed on {request.path[:200]!r}; "
                f"use {', '.join(exc.valid_methods or ())}."))
            response.headers["Allow"] = ", ".join(exc.valid_methods or ())
            return response
        response = jsonify({"error": {"code": "bad_request", "message": exc.description}})
        response.status_code = exc.code
        return response
