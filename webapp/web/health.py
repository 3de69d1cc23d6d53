"""Liveness and readiness probes for load balancers and orchestrators."""

from flask import Blueprint, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process answers: cheap, touches nothing."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """200 when the default model can serve, 503 (with the reason) otherwise."""
    ready, details = current_app.extensions["predictions"].readiness()
    response = jsonify({"ready": ready, **details})
    response.status_code = 200 if ready else 503
    return response


def init_app(app) -> None:
    app.register_blueprint(bp)
