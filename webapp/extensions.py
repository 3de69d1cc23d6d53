"""Flask extensions, created unbound here and initialised in `create_app`."""

from flask_socketio import SocketIO

socketio = SocketIO()
