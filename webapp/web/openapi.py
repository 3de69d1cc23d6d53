"""The OpenAPI 3.0 description of the HTTP API, served at `/api/openapi.json`.

Written by hand rather than generated from the routes: the routes accept
three body encodings and answer with errors from one place (`errors.py`),
which no Flask schema generator describes without more code than this. The
tests check it against the running server with schemathesis, so it cannot
drift from what the server does.
"""

from __future__ import annotations

from ..errors import ERROR_CODES
from ..frames.service import MAX_TOP_K


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


_NAME = {"name": "name", "in": "path", "required": True, "description": "Model name",
         "schema": {"type": "string", "minLength": 1}}
_TOP_K = {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K}
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "application/octet-stream")

_SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string", "enum": [*ERROR_CODES, "internal"]},
                           "message": {"type": "string"}}}},
    },
    "Input": {
        "type": "object", "nullable": True,
        "properties": {"height": {"type": "integer"}, "width": {"type": "integer"},
                       "channels": {"type": "integer"}},
    },
    "ModelSummary": {
        "type": "object", "required": ["name", "state", "loaded"],
        "properties": {
            "name": {"type": "string"},
            "state": {"type": "string", "description": "loaded, cached, in store, loading, failed, ..."},
            "loaded": {"type": "boolean"},
            "version": {"type": "string", "nullable": True},
            "runtime": {"type": "string", "nullable": True, "enum": ["litert", "litert-int8", "tensorflow", None]},
            "input": {"$ref": "#/components/schemas/Input"},
            "labels": {"type": "array", "nullable": True, "items": {"type": "string"}},
        },
    },
    "ModelList": {
        "type": "object", "required": ["models"],
        "properties": {"models": {"type": "array", "items": {"$ref": "#/components/schemas/ModelSummary"}}},
    },
    "Label": {
        "type": "object", "required": ["model", "version", "runtime", "labels", "timing"],
        "properties": {
            "id": {"nullable": True, "description": "the request's id, echoed (always null over HTTP)"},
            "model": {"type": "string"},
            "version": {"type": "string"},
            "runtime": {"type": "string", "enum": ["litert", "litert-int8", "tensorflow"],
                        "description": "litert-int8: the model's full-integer file (publish --quantize int8)"},
            "labels": {"type": "array", "items": {
                "type": "object", "required": ["label", "score"],
                "properties": {"label": {"type": "string"}, "score": {"type": "number"}}}},
            "timing": {"type": "object", "properties": {
                "decode_ms": {"type": "number"}, "queue_ms": {"type": "number"},
                "inference_ms": {"type": "number"}, "total_ms": {"type": "number"},
                "batch_size": {"type": "integer"}}},
            "hint": {"type": "object", "properties": {"interval_ms": {"type": "integer"}}},
        },
    },
    "PredictJson": {
        "type": "object",
        "description": "Exactly one of `image` (base64 or a data URL) and `url` (fetched by the server).",
        "properties": {"image": {"type": "string"}, "url": {"type": "string", "format": "uri"},
                       "top_k": _TOP_K},
    },
}

_BEARER = [{"bearer": []}, {}]  # required only when PROJECT_TOKENS/ADMIN_TOKEN are set


def openapi_document() -> dict:
    json_of = lambda ref: {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}  # noqa: E731
    method = _error("Another method is required on this path (method_not_allowed)")
    return {
        "openapi": "3.0.3",
        "info": {"title": "webapp prediction server", "version": "1",
                 "description": "Image classification with models from a model store. The Socket.IO "
                                "protocol (frames in, `label` events out) is described in the README. "
                                "Any /api/ path not listed here answers 404 `not_found`, and a listed "
                                "path with another method answers 405 `method_not_allowed` "
                                "(with an Allow header)."},
        "components": {"schemas": _SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/api/models": {"get": {
                "summary": "Models in the store that the caller may use (nothing is downloaded)",
                "security": _BEARER,
                "responses": {"200": {"description": "The models", "content": json_of("ModelList")},
                              "401": _error("Missing or unknown token"),
                              "405": method}}},
            "/api/models/{name}": {"get": {
                "summary": "One model: input, labels, runtime, state",
                "security": _BEARER, "parameters": [_NAME],
                "responses": {"200": {"description": "The model", "content": {"application/json": {
                                  "schema": {"type": "object", "required": ["name", "state"]}}}},
                              "401": _error("Missing or unknown token, or a model outside the token's projects"),
                              "404": _error("No such model"),
                              "503": _error("The model store is unavailable"),
                              "405": method}}},
            "/api/models/{name}/predict": {"post": {
                "summary": "Label one image: a multipart upload, JSON (base64, data URL or URL), or raw bytes",
                "security": _BEARER,
                "parameters": [_NAME, {"name": "top_k", "in": "query", "required": False, "schema": _TOP_K}],
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {
                        "type": "object", "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}, "top_k": _TOP_K}}},
                    "application/json": {"schema": {"$ref": "#/components/schemas/PredictJson"}},
                    **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in _IMAGE_TYPES}}},
                "responses": {
                    "200": {"description": "The labels", "content": json_of("Label")},
                    "400": _error("Malformed request or an image that cannot be decoded (bad_request, bad_image)"),
                    "401": _error("Missing or unknown token, or a model outside the token's projects"),
                    "404": _error("No such model"),
                    "413": _error("Body or image over the size or pixel limit"),
                    "503": _error("The model cannot be loaded, the server is overloaded or shutting down"),
                    "405": method,
                }}},
            "/api/status": {"get": {
                "summary": "Live state for dashboards (admin)", "security": _BEARER,
                "responses": {"200": {"description": "Models, cache, clients, fps, recent errors",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              "401": _error("The admin token is required")}}},
            "/api/openapi.json": {"get": {
                "summary": "This document", "security": [{}],
                "responses": {"200": {"description": "OpenAPI 3.0",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/healthz": {"get": {
                "summary": "Liveness: the process answers", "security": [{}],
                "responses": {"200": {"description": "Alive", "content": {"application/json": {
                    "schema": {"type": "object", "properties": {"status": {"type": "string"}}}}}}}}},
            "/readyz": {"get": {
                "summary": "Readiness: the default model is loaded (or, with none, the store answers)",
                "security": [{}],
                "responses": {
                    "200": {"description": "Ready", "content": {"application/json": {"schema": {"type": "object"}}}},
                    "503": {"description": "Not ready yet",
                            "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (admin)", "security": _BEARER,
                "responses": {"200": {"description": "Prometheus text format",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              "401": _error("The admin token is required")}}},
        },
    }
