"""`/api/openapi.json` describes the HTTP API, checked against the running server.

schemathesis generates requests from the document (valid and invalid ones)
and checks every answer: no server errors, only documented status codes,
content types and response bodies that match their schemas.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from serverproc import ServerProcess


@pytest.fixture(scope="module")
def api_server(model_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("openapi")
    proc = ServerProcess(async_mode="threading", log_dir=workdir,
                         env={"MODEL_STORE": str(model_store), "MODEL_CACHE_DIR": str(workdir / "cache")}).start()
    proc.wait_ready()
    yield proc
    proc.stop()


def operations(api_server):
    schema = schemathesis.openapi.from_url(api_server.url + "/api/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


# schemathesis' own pytest plugin (`@schema.parametrize`) does not run on
# pytest 9 yet, so its Hypothesis strategies are driven here directly.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_the_server_does_what_its_openapi_document_says(api_server, mode):
    found = operations(api_server)
    assert len(found) >= 7  # every path but the document itself, which schemathesis leaves out
    untestable = []
    for operation in found:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=30, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            # A body can match the schema and still not be an image (any string
            # is valid base64 text to the schema): 400 bad_image is the right
            # answer there, so "schema-valid data must be accepted" cannot hold.
            case.call_and_validate(base_url=api_server.url, excluded_checks=[positive_data_acceptance],
                                   timeout=60)

        try:
            check()
        except Unsatisfiable:
            # Nothing in this request can be made invalid (no body, only
            # string path parameters, which any text satisfies).
            assert mode is GenerationMode.NEGATIVE
            untestable.append(operation.label)
    assert "POST /api/models/{name}/predict" not in untestable
    assert api_server.proc.poll() is None
    assert "Traceback" not in api_server.log()


def test_the_document_describes_every_api_route(app):
    """Every HTTP API route of the app is in the document and nothing else is:
    a route added without documenting it fails here."""
    import re

    from webapp.web.openapi import openapi_document

    api_routes = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule) for rule in app.url_map.iter_rules()
                  if rule.rule.startswith("/api/") or rule.rule in ("/healthz", "/readyz", "/metrics")}
    document = openapi_document()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == api_routes
