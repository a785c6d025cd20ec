"""The OpenAPI 3.1 description of every route ``chronicle serve`` serves, merged from
fragments, and the handler serving it (``GET /openapi.json``, signed like every answer).

The description ships as package data: one JSON fragment per area in this directory,
merged at load time, so each concern owns the paths it serves and nobody edits one
giant file.

- ``base.json``: ``openapi``, ``info``, and the components every area shares (the
  signature header, the error envelope, the ``instance`` parameter, the hash schemas …).
  ``info.version`` is filled in with chronicle's version at load.
- every other ``*.json`` (taken in name order): a fragment with any of ``paths``,
  ``components`` (each section, e.g. ``schemas`` or ``responses``, a name → object map),
  ``tags`` and ``x-chronicle-fallbacks``.

Adding a fragment (say the release routes, ``/chronicle/release/…``):

1. create ``release.json`` here with the new ``paths`` and the ``components`` only they
   use; refer to the shared ones as ``#/components/…`` (after the merge every fragment's
   components live in one document). Every answer is signed: give each response the
   ``Body-Signature-Ed25519`` header (``#/components/headers/Signature``), and use
   ``#/components/responses/Error`` for the signed JSON errors;
2. nothing to register: the file is package data (the wheel takes every file under
   ``chronicle/``) and :func:`load` merges it. Two fragments defining the same path, the
   same tag, or the same component name with other content is a load error
   (:class:`FragmentConflict`), never a silent override;
3. ``tests/unit/test_openapi.py`` then checks that the merged spec is valid OpenAPI 3.1
   and that its paths and the app's routes are the same set: a route without a
   description (or a description without a route) fails the suite. A catch-all route
   that only answers 404 is listed under ``x-chronicle-fallbacks`` instead of ``paths``
   (OpenAPI cannot template a path of several segments).

Every ``GET`` route also answers ``HEAD`` (aiohttp adds it): the description lists the
``GET`` only.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web

import chronicle
from chronicle.server.keys import RESP

BASE = "base.json"
#: The top-level members a fragment may carry (anything else is a mistake: refused).
FRAGMENT_KEYS = frozenset({"paths", "components", "tags", "x-chronicle-fallbacks"})


class FragmentConflict(ValueError):
    """Two fragments describe the same thing differently, or a fragment is malformed."""


def _fragments() -> list[tuple[str, dict[str, Any]]]:
    folder = resources.files(__name__)
    names = sorted(f.name for f in folder.iterdir()
                   if f.name.endswith(".json") and f.name != BASE)
    return [(name, json.loads(folder.joinpath(name).read_text("utf-8"))) for name in names]


def _merge_map(into: dict[str, Any], extra: dict[str, Any], where: str, name: str,
               *, same_ok: bool) -> None:
    for key, value in extra.items():
        if key in into and not (same_ok and into[key] == value):
            raise FragmentConflict(f"{name}: {where} {key!r} is already defined")
        into[key] = value


def merge(base: dict[str, Any], fragments: list[tuple[str, dict[str, Any]]]
          ) -> dict[str, Any]:
    """``base`` with every fragment's paths, components, tags and fallbacks added."""
    spec: dict[str, Any] = json.loads(json.dumps(base))
    paths = spec.setdefault("paths", {})
    components = spec.setdefault("components", {})
    tags = spec.setdefault("tags", [])
    fallbacks = spec.setdefault("x-chronicle-fallbacks", [])
    for name, fragment in fragments:
        unknown = sorted(set(fragment) - FRAGMENT_KEYS)
        if unknown:
            raise FragmentConflict(f"{name}: unexpected top-level member(s) {unknown}")
        _merge_map(paths, fragment.get("paths", {}), "path", name, same_ok=False)
        for section, members in fragment.get("components", {}).items():
            _merge_map(components.setdefault(section, {}), members,
                       f"component {section}", name, same_ok=True)
        known = {t["name"] for t in tags}
        for tag in fragment.get("tags", []):
            if tag["name"] in known:
                raise FragmentConflict(f"{name}: tag {tag['name']!r} is already defined")
            tags.append(tag)
        fallbacks.extend(fragment.get("x-chronicle-fallbacks", []))
    return spec


@cache
def load() -> dict[str, Any]:
    """The merged description (a fresh parse is cached: treat it as read-only)."""
    base = json.loads(resources.files(__name__).joinpath(BASE).read_text("utf-8"))
    spec = merge(base, _fragments())
    spec["info"]["version"] = chronicle.__version__
    return spec


@cache
def document() -> bytes:
    """The bytes ``GET /openapi.json`` serves (the same in every process)."""
    return json.dumps(load(), indent=2, ensure_ascii=False).encode("utf-8")


async def openapi_json(request: web.Request) -> web.StreamResponse:
    """``GET /openapi.json``: this description, signed like every answer."""
    return request.app[RESP].raw(200, document())
