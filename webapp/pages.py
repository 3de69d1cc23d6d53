"""Human-facing pages: the model index and the webcam capture page."""

from flask import Blueprint, current_app, render_template

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    """The models this visitor may use (with access control on: `/?token=...`)."""
    from .errors import Unauthorized
    from .http_api import request_grant

    dataplane = current_app.extensions["dataplane"]
    try:
        models = dataplane.list_models(request_grant())["models"]
    except Unauthorized:
        models = []
    return render_template("index.html", models=models, default_model=dataplane.default_model)


@bp.get("/capture")
def capture():
    """The webcam page; the model comes from `?model=` or the picker."""
    return render_template("capture.html")


def init_app(app) -> None:
    app.register_blueprint(bp)
