"""Human-facing pages: the model index, the webcam capture page, and the
`/predictor.js` module front ends import."""

from flask import Blueprint, current_app, render_template, request, send_from_directory

bp = Blueprint("pages", __name__)

#: The ES modules served for front ends: URL path -> file under static/.
#: `/predictor.js` imports the Socket.IO client by a path relative to itself,
#: so both must be served the same way (with CORS).
MODULES = {
    "predictor.js": "predictor.js",
    "predictor/socket.io.esm.js": "vendor/socket.io-client/socket.io.esm.min.js",
}


@bp.get("/")
def index():
    """The models this visitor may use (with access control on: `/?token=...`)."""
    from ..errors import Unauthorized
    from .http_api import request_grant

    service = current_app.extensions["predictions"]
    try:
        models = service.list_models(request_grant())["models"]
    except Unauthorized:
        models = []
    return render_template("index.html", models=models, default_model=service.default_model)


@bp.get("/capture")
def capture():
    """The webcam page; the model comes from `?model=` or the picker."""
    return render_template("capture.html")


@bp.get("/predictor.js")
@bp.get("/predictor/socket.io.esm.js")
def module():
    """The JS client module for any origin.

    Module scripts are fetched with CORS, so a page on another origin can only
    import them with `Access-Control-Allow-Origin`. `*` rather than the
    accepted origins: the files are public and carry no credentials, and a
    page whose origin `CORS_ORIGINS` does not accept then gets a clear
    "connection refused" from the module instead of an opaque failed import.
    The connection itself stays subject to `CORS_ORIGINS`.
    """
    response = send_from_directory(current_app.static_folder, MODULES[request.path.lstrip("/")],
                                   mimetype="text/javascript")
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


def init_app(app) -> None:
    app.register_blueprint(bp)
