"""A :class:`~chronicle.release.state.ReleaseState` back from its canonical JSON.

:meth:`ReleaseState.to_json` is the state's one serialisation; a verifier saves it after a
sync and loads it for the next one, so a sync judges only the new entries. Loading is the
exact inverse (``to_json(load(to_json(s))) == to_json(s)``, tested); every field is
type-checked, and a state file that does not parse is refused, never half-trusted. Pure.
"""

from __future__ import annotations

import json
from typing import Any

from chronicle.core.errors import ChronicleError
from chronicle.release.messages import OP_UPDATE, MalformedMessage, Update, parse_body
from chronicle.release.state import (
    AttestationEffect,
    EmergencyAction,
    EnableEffect,
    KeyRecord,
    Position,
    Rejection,
    ReleaseState,
    UpdateKey,
    UpdateRecord,
)


class StateFileError(ChronicleError):
    """A saved release state that does not parse: the state directory is damaged."""


def _fail(what: str) -> StateFileError:
    return StateFileError(f"release state: {what}")


def _pos(value: Any, what: str) -> Position:
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], int)
            or isinstance(value[0], bool) or not isinstance(value[1], str)):
        raise _fail(f"{what} is not a position [index, currhash]")
    return Position(value[0], value[1])


def _opt_pos(value: Any, what: str) -> Position | None:
    return None if value is None else _pos(value, what)


def _str(obj: dict[str, Any], name: str, *, optional: bool = False) -> Any:
    value = obj.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _fail(f"field {name!r} is not a string")
    return value


def _bool(obj: dict[str, Any], name: str) -> bool:
    value = obj.get(name)
    if not isinstance(value, bool):
        raise _fail(f"field {name!r} is not a boolean")
    return value


def _objects(doc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = doc.get(name)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _fail(f"{name!r} is not a list of objects")
    return value


def _key(vendor: str, k: dict[str, Any]) -> KeyRecord:
    return KeyRecord(vendor=vendor, publickey=_str(k, "publickey"),
                     name=_str(k, "name", optional=True), limited=_bool(k, "limited"),
                     added=_pos(k.get("added"), "added"), added_by=_str(k, "added-by"),
                     added_emergency=_bool(k, "added-emergency"),
                     revoked=_opt_pos(k.get("revoked"), "revoked"),
                     revoked_by=_str(k, "revoked-by", optional=True),
                     revoked_emergency=_bool(k, "revoked-emergency"))


def _update(u: dict[str, Any]) -> UpdateRecord:
    body = _str(u, "body")
    try:
        parsed = parse_body(OP_UPDATE, body)
    except MalformedMessage as exc:
        raise _fail(f"an update body does not parse: {exc.message}") from None
    assert isinstance(parsed, Update)
    return UpdateRecord(
        at=_pos(u.get("at"), "at"), vendor=_str(u, "vendor"), name=_str(u, "name"),
        version=_str(u, "version"), version_key=_str(u, "version-key"),
        metadata=parsed.metadata, body=body, op_sig=_str(u, "op-sig"),
        signer=_str(u, "signer"), emergency=_bool(u, "emergency"),
        revoked=_opt_pos(u.get("revoked"), "revoked"),
        revoked_by=_str(u, "revoked-by", optional=True),
        revoke_reason=_str(u, "revoke-reason", optional=True),
        revoked_emergency=_bool(u, "revoked-emergency"))


def load_release_state(doc: Any, server_key: str) -> ReleaseState:
    """The state :meth:`ReleaseState.to_json` wrote (``doc`` already JSON-decoded)."""
    if not isinstance(doc, dict):
        raise _fail("not a JSON object")
    try:
        return _load(doc, server_key)
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(f"malformed ({exc})") from None


def _load(doc: dict[str, Any], server_key: str) -> ReleaseState:
    led = doc.get("ledger")
    ledger = None if led is None else EnableEffect(
        at=_pos(led.get("at"), "ledger.at"), now=_str(led, "now"),
        core_vendor=_str(led, "core-vendor"), core_key=_str(led, "core-key"))
    keys: dict[str, list[KeyRecord]] = {}
    for v in _objects(doc, "vendors"):
        vendor = _str(v, "vendor")
        keys[vendor] = [_key(vendor, k) for k in v["keys"]]
    updates: dict[UpdateKey, UpdateRecord] = {}
    for u in _objects(doc, "updates"):
        record = _update(u)
        updates[record.key] = record
    attestations = [AttestationEffect(
        at=_pos(a.get("at"), "at"), vendor=_str(a, "vendor"), name=_str(a, "name"),
        version=_str(a, "version"), version_key=_str(a, "version-key"),
        attestor=_str(a, "attestor"), attestation=_str(a, "attestation"),
        details=_str(a, "details", optional=True), signer=_str(a, "signer"))
        for a in _objects(doc, "attestations")]
    emergency = [EmergencyAction(at=_pos(e.get("at"), "at"), op=_str(e, "op"),
                                 vendor=_str(e, "vendor"), signer=_str(e, "signer"))
                 for e in _objects(doc, "emergency")]
    op_sigs = {str(s): int(i) for i, s in doc["op-sigs"]}
    skipped = {str(k): int(n) for k, n in dict(doc["skipped"]).items()}
    rejected = [Rejection(at=_pos(r.get("at"), "at"), code=_str(r, "code"),
                          message=_str(r, "message")) for r in _objects(doc, "rejected")]
    return ReleaseState(server_key=server_key, _ledger=ledger, _keys=keys, _updates=updates,
                        _attestations=attestations, _op_sigs=op_sigs, _emergency=emergency,
                        _skipped=skipped, _rejected=rejected)


def dump_release_state(state: ReleaseState) -> Any:
    """The state as a JSON value (what :func:`load_release_state` reads back)."""
    return json.loads(state.to_json())
