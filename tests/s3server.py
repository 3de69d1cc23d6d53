"""moto's S3 server on loopback, counting the requests it receives.

The server is moto's own WSGI application (what `moto_server` runs), served by
werkzeug in a thread of the test process, behind a middleware that records
every request. Tests assert on those counts: "exactly one GET of the model".
The middleware can also break downloads of chosen objects the way networks
do: `stall` sends half the body and then nothing, `reset` sends half and
drops the connection.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import boto3
from werkzeug.serving import make_server

from serverproc import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


class CountingS3Server:
    def __init__(self):
        from moto.server import DomainDispatcherApplication, create_backend_app

        self._app = DomainDispatcherApplication(create_backend_app)
        self.requests: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = None
        #: "/bucket/key" -> "stall" | "reset", applied to GETs of that object.
        self.faults: dict[str, str] = {}

    def _counting(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        with self._lock:
            self.requests.append((environ["REQUEST_METHOD"], path, environ.get("QUERY_STRING", "")))
            fault = self.faults.get(path) if environ["REQUEST_METHOD"] == "GET" else None
        body = self._app(environ, start_response)
        return self._broken(body, fault) if fault else body

    @staticmethod
    def _broken(body, fault: str):
        data = b"".join(body)
        yield data[: len(data) // 2]
        if fault == "stall":
            time.sleep(60)  # far beyond any read timeout the tests set
        raise ConnectionResetError(f"injected fault: {fault}")  # werkzeug drops the connection

    def start(self) -> "CountingS3Server":
        self._server = make_server("127.0.0.1", self.port, self._counting, threaded=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def gets(self, bucket: str, key: str) -> int:
        """GET requests for one object (downloads; listings are GETs of the bucket)."""
        with self._lock:
            return sum(1 for method, path, _ in self.requests if method == "GET" and path == f"/{bucket}/{key}")

    def summary(self) -> Counter:
        with self._lock:
            return Counter(f"{m} {p}" for m, p, _ in self.requests)

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def new_bucket(self) -> str:
        name = f"models-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def server_env(self, bucket: str, prefix: str = "projects") -> dict:
        """Environment for a prediction server using this bucket as its store."""
        return {**CREDENTIALS, "S3_ENDPOINT_URL": self.url, "MODEL_STORE": f"s3://{bucket}/{prefix}"}
