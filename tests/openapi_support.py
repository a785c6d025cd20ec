"""Checking real answers against the served OpenAPI description (chronicle.server.openapi).

:func:`check_response` finds the described operation of a request (path template,
method), then its response for the status, and checks the answer against it: the
declared required headers (the signature header above all), the content type, and the
JSON body against the schema (JSON Schema 2020-12, as OpenAPI 3.1 says), ``$ref``s
resolved within the whole description.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from chronicle.server import openapi

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SPEC_URI = "urn:chronicle:openapi"
#: Path parameters that may hold slashes (aiohttp ``{name:.+}``).
MULTI_SEGMENT = frozenset({"tail"})


def _pointer_escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def lookup(spec: dict[str, Any], pointer: str) -> Any:
    node: Any = spec
    for part in pointer.lstrip("/").split("/"):
        if part:
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def deref(spec: dict[str, Any], node: Any, pointer: str) -> tuple[Any, str]:
    """Follow local ``$ref``s: the node they lead to and its JSON pointer."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"only local references: {ref}"
        pointer = ref[1:]
        node = lookup(spec, pointer)
    return node, pointer


def path_items(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """Every described path with its (dereferenced) path item and that item's pointer."""
    for path, item in spec["paths"].items():
        resolved, pointer = deref(spec, item, "/paths/" + _pointer_escape(path))
        yield path, resolved, pointer


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any], str]]:
    """``(method, path, operation, pointer)`` of every described operation."""
    for path, item, pointer in path_items(spec):
        for method in METHODS:
            if method in item:
                yield method, path, item[method], f"{pointer}/{method}"


def described_routes(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """``(METHOD, path template)`` of every operation and every fallback route."""
    routes = {(m.upper(), p) for m, p, _, _ in operations(spec)}
    routes |= {(f["method"].upper(), f["path"]) for f in spec.get("x-chronicle-fallbacks", [])}
    return routes


def _template_regex(path: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", path)
    out = []
    for part in parts:
        if part.startswith("{"):
            out.append(".+" if part[1:-1] in MULTI_SEGMENT else "[^/]+")
        else:
            out.append(re.escape(part))
    return re.compile("^" + "".join(out) + "$")


def match(spec: dict[str, Any], method: str, path: str) -> tuple[str, dict[str, Any], str]:
    """The operation answering ``method path``: literal paths win over templated ones,
    then the fewest templated segments (as aiohttp's routing gives them)."""
    candidates = []
    for m, template, op, pointer in operations(spec):
        if m == method.lower() and _template_regex(template).match(path):
            candidates.append((template.count("{"), template, op, pointer))
    assert candidates, f"{method} {path}: no operation describes it"
    candidates.sort(key=lambda c: c[0])
    _, template, op, pointer = candidates[0]
    return template, op, pointer


@cache
def _registry() -> Registry:
    return Registry().with_resource(SPEC_URI, Resource(contents=openapi.load(),
                                                       specification=DRAFT202012))


def validate_schema(pointer: str, instance: Any) -> None:
    """Validate ``instance`` against the schema at ``pointer`` in the description."""
    validator = Draft202012Validator({"$ref": f"{SPEC_URI}#{pointer}"}, registry=_registry())
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{pointer}: " + "; ".join(
        f"{list(e.path)}: {e.message}" for e in errors[:5])


def check_response(method: str, path: str, status: int, headers: Any, body: bytes) -> str:
    """Check one real answer against the description; returns the matched template."""
    spec = openapi.load()
    template, op, pointer = match(spec, method, path)
    responses = op["responses"]
    key = str(status) if str(status) in responses else f"{status // 100}XX"
    assert key in responses or "default" in responses, \
        f"{method} {template}: status {status} is not described"
    key = key if key in responses else "default"
    response, rpointer = deref(spec, responses[key], f"{pointer}/responses/{key}")
    for name, header in response.get("headers", {}).items():
        header, hpointer = deref(spec, header, f"{rpointer}/headers/{_pointer_escape(name)}")
        values = headers.getall(name, [])
        if header.get("required"):
            assert len(values) == 1, f"{method} {path} {status}: header {name}: {values}"
        if values and "schema" in header:
            validate_schema(f"{hpointer}/schema", values[0])
    content = response.get("content", {})
    if not content:
        return template
    media = headers.get("Content-Type", "").split(";")[0].strip()
    assert media in content, f"{method} {path} {status}: content type {media!r} not in " \
                             f"{sorted(content)}"
    spointer = f"{rpointer}/content/{_pointer_escape(media)}/schema"
    if media == "application/json":
        validate_schema(spointer, json.loads(body))
    elif media.startswith("text/"):
        validate_schema(spointer, body.decode("utf-8"))
    return template
