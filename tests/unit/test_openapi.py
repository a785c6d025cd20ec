"""The OpenAPI description (chronicle.server.openapi): valid OpenAPI 3.1, the same routes
as the app serves (a new route without a description fails here), and fragments merged
without silent overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict
from openapi_spec_validator import validate

import chronicle
from chronicle.server import openapi
from chronicle.server.app import build_app
from chronicle.server.context import ServerContext
from chronicle.store import open_store
from tests.helpers import init_data_dir
from tests.openapi_support import check_response, deref, described_routes, operations

SIGNATURE = "Body-Signature-Ed25519"


def test_the_description_is_valid_openapi_3_1() -> None:
    spec = openapi.load()
    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["version"] == chronicle.__version__
    validate(spec)
    ids = [op["operationId"] for _, _, op, _ in operations(spec) if "operationId" in op]
    assert len(ids) == len(set(ids))


def test_the_served_document_is_the_description() -> None:
    assert json.loads(openapi.document()) == openapi.load()


async def _routes(tmp_path: Path) -> set[tuple[str, str]]:
    data_dir = await init_data_dir(tmp_path / "data")
    settings = data_dir.settings()
    store = open_store(settings.database, data_dir.path)
    ctx = ServerContext(settings=settings, key=data_dir.signing_key(settings), store=store,
                        data_dir=data_dir)
    app = build_app(ctx)
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None}
    heads = {(m, p) for m, p in routes if m == "HEAD"}
    # aiohttp answers HEAD for every GET route: described once, as the GET.
    assert {("GET", p) for _, p in heads} <= routes
    return routes - heads


async def test_every_route_is_described_and_every_description_is_routed(
        tmp_path: Path) -> None:
    served = await _routes(tmp_path)
    described = described_routes(openapi.load())
    assert served - described == set(), "routes without a description in " \
                                        "chronicle/server/openapi/"
    assert described - served == set(), "described paths the server does not serve"


def test_every_described_response_carries_the_signature_header() -> None:
    spec = openapi.load()
    for method, path, op, pointer in operations(spec):
        for status, response in op["responses"].items():
            response, rpointer = deref(spec, response, f"{pointer}/responses/{status}")
            header = response.get("headers", {}).get(SIGNATURE)
            assert header is not None, f"{method} {path} {status}: no {SIGNATURE}"
            header, _ = deref(spec, header, rpointer)
            assert header.get("required") is True, f"{method} {path} {status}"


BASE: dict[str, Any] = {"openapi": "3.1.0", "info": {"title": "t", "version": "0"},
                        "paths": {"/a": {"get": {"responses": {}}}},
                        "components": {"schemas": {"S": {"type": "string"}}},
                        "tags": [{"name": "a"}]}


def test_fragments_merge_paths_components_tags_and_fallbacks() -> None:
    merged = openapi.merge(BASE, [
        ("b.json", {"paths": {"/b": {"get": {"responses": {}}}},
                    "components": {"schemas": {"S": {"type": "string"},
                                               "T": {"type": "integer"}}},
                    "tags": [{"name": "b"}],
                    "x-chronicle-fallbacks": [{"method": "get", "path": "/b/{tail}"}]})])
    assert sorted(merged["paths"]) == ["/a", "/b"]
    assert sorted(merged["components"]["schemas"]) == ["S", "T"]
    assert [t["name"] for t in merged["tags"]] == ["a", "b"]
    assert merged["x-chronicle-fallbacks"] == [{"method": "get", "path": "/b/{tail}"}]
    assert "/b" not in BASE["paths"]  # the base is not modified


@pytest.mark.parametrize(("fragment", "message"), [
    ({"paths": {"/a": {"post": {"responses": {}}}}}, "x.json: path '/a' is already defined"),
    ({"components": {"schemas": {"S": {"type": "integer"}}}},
     "x.json: component schemas 'S' is already defined"),
    ({"tags": [{"name": "a"}]}, "x.json: tag 'a' is already defined"),
    ({"path": {}}, "x.json: unexpected top-level member(s) ['path']"),
])
def test_conflicting_fragments_are_refused(fragment: dict[str, Any], message: str) -> None:
    with pytest.raises(openapi.FragmentConflict) as err:
        openapi.merge(BASE, [("x.json", fragment)])
    assert str(err.value) == message


def _headers(**values: str) -> Any:
    return CIMultiDict(values)


SIGNED = {"Body-Signature-Ed25519": "A" * 86 + "==", "Content-Type": "application/json"}
OK_ROWS = {"version": "1.3.x", "datetime": "2026-11-30T00:00:00+00:00", "status": "OK",
           "results": []}


def test_the_response_checker_accepts_a_described_answer() -> None:
    template = check_response("GET", "/chronicle/lookup/abc", 200, _headers(**SIGNED),
                              json.dumps(OK_ROWS).encode())
    assert template == "/chronicle/lookup/{hash}"
    template = check_response("GET", "/chronicle/replica/s/export/3", 200, _headers(**SIGNED),
                              json.dumps(OK_ROWS).encode())
    assert template == "/chronicle/replica/{source}/export/{page}"


@pytest.mark.parametrize(("status", "headers", "body", "message"), [
    (200, {"Content-Type": "application/json"}, OK_ROWS, "header Body-Signature-Ed25519"),
    (200, SIGNED, {**OK_ROWS, "status": "ERROR"}, "['status']: 'OK' was expected"),
    (200, SIGNED, {**OK_ROWS, "results": [{"contents": "x"}]}, "'prevhash' is a required"),
    (418, SIGNED, OK_ROWS, "status 418 is not described"),
    (200, {**SIGNED, "Content-Type": "text/html"}, OK_ROWS, "content type 'text/html'"),
])
def test_the_response_checker_refuses_what_is_not_described(
        status: int, headers: dict[str, str], body: Any, message: str) -> None:
    with pytest.raises(AssertionError) as err:
        check_response("GET", "/chronicle/lookup/abc", status, _headers(**headers),
                       json.dumps(body).encode())
    assert message in str(err.value)
