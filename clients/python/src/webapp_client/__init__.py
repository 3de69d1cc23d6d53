"""Python client of the webapp realtime prediction server.

    from webapp_client import Client

    with Client("http://127.0.0.1:5000") as client:
        print(client.predict("circle.jpg", model="shapes")["labels"][0])

Only python-socketio's client (with requests and websocket-client) is
needed; PIL and numpy are used when images are passed as such.
"""

from .client import Client, Stream
from .errors import CLIENT_CODES, SERVER_CODES, ConnectError, PredictionError, WebappClientError
from .images import encode_image
from .latest import LatestFrame

__version__ = "0.1.0"

__all__ = ["Client", "Stream", "LatestFrame", "PredictionError", "ConnectError", "WebappClientError",
           "SERVER_CODES", "CLIENT_CODES", "encode_image"]
