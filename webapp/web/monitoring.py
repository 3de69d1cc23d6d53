"""Monitoring routes for operators: `/metrics` (Prometheus), `/dashboard` and `/api/status`.

What they show is gathered by `webapp.server.metrics` and `webapp.server.status_board`;
with access control on, all three need the admin token."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, render_template

from ..errors import Unauthorized
from .http_api import request_grant

bp = Blueprint("monitoring", __name__)


def _require_admin() -> None:
    if current_app.extensions["access"].enabled and not request_grant().admin:
        raise Unauthorized("This page needs the admin token.")


@bp.get("/metrics")
def metrics():
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    _require_admin()
    return Response(generate_latest(current_app.extensions["metrics"].registry), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/dashboard")
def dashboard():
    _require_admin()
    return render_template("dashboard.html")


@bp.get("/api/status")
def status():
    """What the dashboard shows, for this process (JSON)."""
    _require_admin()
    return jsonify(current_app.extensions["status"].snapshot())


def init_app(app) -> None:
    app.register_blueprint(bp)
