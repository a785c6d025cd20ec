"""Release messages: Herd's envelope and ops, ours beside them, and the bootstrap entry.

Spec: release.md "Prior art" (paragonie/herd's envelope) and "Our rules". An entry's
contents are ``{"op", "op-body", "op-sig", "op-public-key"}``: ``op-body`` is a JSON text
carried as a string and ``op-sig`` an Ed25519 signature over that text's exact UTF-8
bytes by ``op-public-key``. Parsing is strict (one spelling per field, precise errors
naming the field); serialisation is canonical (docs/release-format.md). Contents that
are not a release message at all are *classified* (:class:`NotRelease`), never raised:
the ledger carries other traffic too. Pure: no I/O.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Final

from chronicle.core.encoding import atom, b64u_decode, php_json
from chronicle.core.errors import EncodingError, RequestError
from chronicle.core.sapient import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, SigningKey, verify
from chronicle.release.treedigest import TreeDigestError, parse_tree_digest

OP_ADD_KEY: Final = "add-key"
OP_REVOKE_KEY: Final = "revoke-key"
OP_UPDATE: Final = "update"
OP_REVOKE_UPDATE: Final = "revoke-update"
OP_ATTEST_UPDATE: Final = "attest-update"
OPS: Final = (OP_ADD_KEY, OP_REVOKE_KEY, OP_UPDATE, OP_REVOKE_UPDATE, OP_ATTEST_UPDATE)

ATTESTATIONS: Final = ("reproduced", "spot-check", "code-review", "sec-audit", "vote-against")

ACTION_ENABLE: Final = "Release Ledger Enabled"

# Composer's package-name rule (composer.schema.json:
# ^[a-z0-9]([_.-]?[a-z0-9]+)*/[a-z0-9](([_.]|-{1,2})?[a-z0-9]+)*$), split at the slash and
# respelt without nested optional repetition so a long near-miss cannot backtrack
# exponentially; the two spellings accept the same strings.
VENDOR_RE: Final = re.compile(r"[a-z0-9]+(?:[_.-][a-z0-9]+)*")
PACKAGE_RE: Final = re.compile(r"[a-z0-9]+(?:(?:[_.]|-{1,2})[a-z0-9]+)*")
# Composer's classical version (VersionParser::normalize), release forms only: no `dev`,
# no `stable` suffix, no date versions, no `+build` metadata. Case-insensitive like Composer.
VERSION_RE: Final = re.compile(
    r"v?(?P<major>\d{1,5})(?P<minor>\.\d{1,9})?(?P<patch>\.\d{1,9})?(?P<extra>\.\d{1,9})?"
    r"(?:[._-]?(?P<stability>alpha|beta|patch|pl|rc|a|b|p)"
    r"(?P<number>[.-]?\d{1,9}(?:[.-]\d{1,9})*)?)?",
    re.IGNORECASE | re.ASCII,
)
COMMIT_RE: Final = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
ATOM_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+00:00", re.ASCII)

MAX_NAME_CHARS: Final = 128       # vendor, package and key label
MAX_VERSION_CHARS: Final = 64
MAX_REPO_CHARS: Final = 2048
MAX_TEXT_CHARS: Final = 4096      # revoke reason, attestation details

_STABILITY = {"a": "alpha", "alpha": "alpha", "b": "beta", "beta": "beta",
              "p": "patch", "pl": "patch", "patch": "patch", "rc": "RC"}
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")   # \t and \n allowed
_REPO_RE = re.compile(r"[!-~]+")                              # printable ASCII, no spaces


class MalformedMessage(RequestError):
    """A release message (or enable entry) that does not parse; ``field`` names the culprit."""

    status = 400
    code = "malformed"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --- message model ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AddKey:
    """Herd's ``add-key`` {vendor, publickey, name?}, plus our optional ``limited``."""

    op: ClassVar[str] = OP_ADD_KEY
    vendor: str
    publickey: str
    name: str | None = None
    limited: bool = False


def key_name(publickey: str, name: str | None) -> str:
    """The label our tools write in an ``add-key``: the given one, else one from the key.

    ``op`` is not signed (Herd's envelope), so an unnamed ``add-key`` {vendor, publickey}
    has the very op-body, and so the very op-sig, of the ``revoke-key`` of that key by the
    same signer; the replay rule (one use per op-sig) would then refuse the revocation.
    A name keeps the two bodies apart.
    """
    return name if name else f"key {publickey.strip()[:8]}"


@dataclass(frozen=True, slots=True)
class RevokeKey:
    """Herd's ``revoke-key`` {vendor, publickey}."""

    op: ClassVar[str] = OP_REVOKE_KEY
    vendor: str
    publickey: str


@dataclass(frozen=True, slots=True)
class Metadata:
    """An ``update``'s metadata object.

    Our tools always write ``repo``, ``commit`` and ``tree`` (the source tree digest),
    optionally ``dist-sha256``. Herd's own updates carry free-form metadata, which Herd
    stores and we must accept too (vectors E03, E10): such an update has none of the three
    and is *not verifiable* against sources. Having some but not all three is malformed.
    Other keys are kept as ``extra`` (key, canonical JSON text), sorted by key.
    """

    repo: str | None = None
    commit: str | None = None
    tree: str | None = None
    dist_sha256: str | None = None
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def verifiable(self) -> bool:
        return self.tree is not None

    def to_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (("repo", self.repo), ("commit", self.commit), ("tree", self.tree),
                           ("dist-sha256", self.dist_sha256)):
            if value is not None:
                out[key] = value
        for key, text in sorted(self.extra):
            out[key] = json.loads(text)
        return out


@dataclass(frozen=True, slots=True)
class UpdateRef:
    """What ``update``, ``revoke-update`` and ``attest-update`` share: the release they name.

    Two spellings of one version name one release: :attr:`version_key` is its identity.
    """

    vendor: str
    name: str
    version: str

    @property
    def version_key(self) -> str:
        return normalize_version(self.version)


@dataclass(frozen=True, slots=True)
class Update(UpdateRef):
    """Herd's ``update`` {vendor, name, version, metadata}: one release of vendor/name."""

    op: ClassVar[str] = OP_UPDATE
    metadata: Metadata = field(default_factory=Metadata)


@dataclass(frozen=True, slots=True)
class RevokeUpdate(UpdateRef):
    """Ours: ``revoke-update`` {vendor, name, version, reason}."""

    op: ClassVar[str] = OP_REVOKE_UPDATE
    reason: str


@dataclass(frozen=True, slots=True)
class AttestUpdate(UpdateRef):
    """Ours: ``attest-update`` {vendor, name, version, attestor, attestation, details?}."""

    op: ClassVar[str] = OP_ATTEST_UPDATE
    attestor: str
    attestation: str
    details: str | None = None


Body = AddKey | RevokeKey | Update | RevokeUpdate | AttestUpdate


@dataclass(frozen=True, slots=True)
class ReleaseMessage:
    """A parsed envelope. ``body_text`` is kept verbatim: the signature covers it."""

    body: Body
    body_text: str
    op_sig: str
    op_public_key: str
    signature_raw: bytes = field(repr=False, compare=False, default=b"")
    public_key_raw: bytes = field(repr=False, compare=False, default=b"")

    @property
    def op(self) -> str:
        return self.body.op

    def signature_valid(self) -> bool:
        """Ed25519 (libsodium semantics) of ``op-sig`` over ``op-body``'s UTF-8 bytes."""
        return verify(self.public_key_raw or b64u_decode(self.op_public_key),
                      self.body_text.encode("utf-8"),
                      self.signature_raw or b64u_decode(self.op_sig))


@dataclass(frozen=True, slots=True)
class EnableLedger:
    """The server-signed bootstrap entry naming the core vendor and its first key."""

    now: str
    core_vendor: str
    core_key: str


@dataclass(frozen=True, slots=True)
class NotRelease:
    """Contents that are not a release message; ``kind`` is what callers count.

    Kinds: ``not-json`` (not UTF-8 JSON), ``not-object`` (JSON but not an object),
    ``server-action`` (a Chronicle server message other than ours), ``unknown-op`` (an
    ``op`` we do not know, as Herd skips it), ``no-op`` (any other JSON object).
    """

    kind: str


SKIP_KINDS: Final = ("not-json", "not-object", "server-action", "unknown-op", "no-op")


# --- validation helpers -------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def normalize_version(version: str) -> str:
    """Composer's normalised form (``v1.2`` -> ``1.2.0.0``, ``1.0-rc1`` -> ``1.0.0.0-RC1``).

    Two spellings of one Composer version are one release: the update rules key on this.
    """
    match = VERSION_RE.fullmatch(version) if len(version) <= MAX_VERSION_CHARS else None
    if match is None:
        raise ValueError(f"not a Composer release version: {_q(version)}")
    out = match["major"] + "".join(match[g] or ".0" for g in ("minor", "patch", "extra"))
    if match["stability"]:
        number = (match["number"] or "").lstrip(".-")
        out += "-" + _STABILITY[match["stability"].lower()] + number
    return out


def valid_vendor(text: str) -> bool:
    return len(text) <= MAX_NAME_CHARS and VENDOR_RE.fullmatch(text) is not None


def valid_package(text: str) -> bool:
    return len(text) <= MAX_NAME_CHARS and PACKAGE_RE.fullmatch(text) is not None


def _q(value: str) -> str:
    """Quote a value inside a message as JSON does, so every implementation words it alike."""
    return json.dumps(value, ensure_ascii=True)


class _Fields:
    """Typed access to a parsed JSON object with errors naming the field."""

    def __init__(self, obj: dict[str, Any], allowed: tuple[str, ...], *, what: str,
                 prefix: str = "") -> None:
        self.obj = obj
        self.what = what
        self.prefix = prefix
        for key in obj:
            if key not in allowed:
                raise MalformedMessage(f"{what}: field {_q(prefix + key)} is not allowed",
                                       field=prefix + key)

    def _fail(self, name: str, problem: str) -> MalformedMessage:
        return MalformedMessage(f'{self.what}: field "{self.prefix}{name}" {problem}',
                                field=self.prefix + name)

    def text(self, name: str, *, optional: bool = False) -> str | None:
        if name not in self.obj:
            if optional:
                return None
            raise self._fail(name, "is missing")
        value = self.obj[name]
        if not isinstance(value, str):
            raise self._fail(name, "must be a string")
        return value

    def required(self, name: str) -> str:
        value = self.text(name)
        assert value is not None
        return value

    def vendor(self, name: str) -> str:
        value = self.required(name)
        if not valid_vendor(value):
            raise self._fail(name, f"is not a Composer vendor name: {_q(value)}")
        return value

    def package(self, name: str) -> str:
        value = self.required(name)
        if not valid_package(value):
            raise self._fail(name, f"is not a Composer package name: {_q(value)}")
        return value

    def version(self, name: str) -> str:
        value = self.required(name)
        try:
            normalize_version(value)
        except ValueError:
            raise self._fail(name, f"is not a Composer release version: {_q(value)}") from None
        return value

    def key(self, name: str) -> str:
        value = self.required(name)
        _check_b64(value, PUBLIC_KEY_BYTES, lambda: self._fail(
            name, "is not a base64url Ed25519 public key (32 bytes, padded)"))
        return value

    def label(self, name: str, limit: int, *, multiline: bool = False) -> str | None:
        value = self.text(name, optional=True)
        if value is None:
            return None
        pattern = _TEXT_CONTROL_RE if multiline else _CONTROL_RE
        if not value or len(value) > limit or pattern.search(value):
            raise self._fail(name, f"must be 1 to {limit} characters without control "
                                   "characters")
        return value

    def pattern(self, name: str, regex: re.Pattern[str], problem: str,
                *, limit: int = MAX_REPO_CHARS) -> str | None:
        value = self.text(name, optional=True)
        if value is None:
            return None
        if len(value) > limit or regex.fullmatch(value) is None:
            raise self._fail(name, problem)
        return value


def _check_b64(text: str, length: int, error: Callable[[], MalformedMessage]) -> bytes:
    try:
        return b64u_decode(text, length)
    except EncodingError:
        raise error() from None


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _strict_loads(text: str) -> Any:
    """JSON as PHP reads it, stricter: no NaN/Infinity, no duplicate keys."""
    return json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)


def _parse_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = _strict_loads(text)
    except _Duplicate as dup:
        raise MalformedMessage(f"{what}: field {_q(dup.key)} appears twice",
                               field=dup.key) from None
    except (ValueError, RecursionError):
        raise MalformedMessage(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise MalformedMessage(f"{what} is not a JSON object")
    return value


# --- parsing ------------------------------------------------------------------------------

_BODY_FIELDS: dict[str, tuple[str, ...]] = {
    OP_ADD_KEY: ("vendor", "publickey", "name", "limited"),
    OP_REVOKE_KEY: ("vendor", "publickey"),
    OP_UPDATE: ("vendor", "name", "version", "metadata"),
    OP_REVOKE_UPDATE: ("vendor", "name", "version", "reason"),
    OP_ATTEST_UPDATE: ("vendor", "name", "version", "attestor", "attestation", "details"),
}
_RELEASE_META = ("repo", "commit", "tree")


def _parse_metadata(value: Any) -> Metadata:
    what = "op-body of update"
    if not isinstance(value, dict):
        raise MalformedMessage(f'{what}: field "metadata" must be a JSON object',
                               field="metadata")
    present = [k for k in _RELEASE_META if k in value]
    if present and len(present) != len(_RELEASE_META):
        missing = next(k for k in _RELEASE_META if k not in value)
        raise MalformedMessage(f'{what}: field "metadata.{missing}" is missing (repo, commit '
                               "and tree go together)", field=f"metadata.{missing}")
    known = {*_RELEASE_META, "dist-sha256"}
    fields = _Fields({k: v for k, v in value.items() if k in known}, tuple(known),
                     what=what, prefix="metadata.")
    tree = fields.text("tree", optional=True)
    if tree is not None:
        try:
            parse_tree_digest(tree)
        except TreeDigestError as exc:
            raise fields._fail("tree", f"is not a source tree digest: {exc.message}") from None
    extra = tuple(sorted(
        (k, json.dumps(v, separators=(",", ":"), ensure_ascii=True, sort_keys=True))
        for k, v in value.items() if k not in known))
    return Metadata(
        repo=fields.pattern("repo", _REPO_RE, "must be a repository URL (printable ASCII, "
                            f"no spaces, at most {MAX_REPO_CHARS} characters)"),
        commit=fields.pattern("commit", COMMIT_RE, "must be a lowercase hex git commit id "
                              "(40 or 64 digits)"),
        tree=tree,
        dist_sha256=fields.pattern("dist-sha256", SHA256_RE, "must be 64 lowercase hex digits"),
        extra=extra,
    )


def parse_body(op: str, body_text: str) -> Body:
    """Parse one op's body strictly; raise :class:`MalformedMessage` naming the field."""
    if op not in _BODY_FIELDS:
        raise MalformedMessage(f"unknown op {_q(op)}", field="op")
    what = f"op-body of {op}"
    fields = _Fields(_parse_object(body_text, what), _BODY_FIELDS[op], what=what)
    if op == OP_ADD_KEY:
        limited = fields.obj.get("limited", False)
        if not isinstance(limited, bool):
            raise fields._fail("limited", "must be true or false")
        return AddKey(vendor=fields.vendor("vendor"), publickey=fields.key("publickey"),
                      name=fields.label("name", MAX_NAME_CHARS), limited=limited)
    if op == OP_REVOKE_KEY:
        return RevokeKey(vendor=fields.vendor("vendor"), publickey=fields.key("publickey"))
    vendor, name, version = fields.vendor("vendor"), fields.package("name"), \
        fields.version("version")
    if op == OP_UPDATE:
        if "metadata" not in fields.obj:
            raise fields._fail("metadata", "is missing")
        return Update(vendor=vendor, name=name, version=version,
                      metadata=_parse_metadata(fields.obj["metadata"]))
    if op == OP_REVOKE_UPDATE:
        if "reason" not in fields.obj:
            raise fields._fail("reason", "is missing")
        reason = fields.label("reason", MAX_TEXT_CHARS, multiline=True)
        assert reason is not None
        return RevokeUpdate(vendor=vendor, name=name, version=version, reason=reason)
    attestor = fields.vendor("attestor")
    attestation = fields.required("attestation")
    if attestation not in ATTESTATIONS:
        raise fields._fail("attestation", f"must be one of {', '.join(ATTESTATIONS)}")
    return AttestUpdate(vendor=vendor, name=name, version=version, attestor=attestor,
                        attestation=attestation,
                        details=fields.label("details", MAX_TEXT_CHARS, multiline=True))


def _parse_envelope(obj: dict[str, Any]) -> ReleaseMessage:
    """Herd's envelope; extra top-level fields are ignored, as Herd does (vector E08)."""
    what = "envelope"
    values: dict[str, str] = {}
    for name in ("op-body", "op-sig", "op-public-key"):
        if name not in obj:
            raise MalformedMessage(f'{what}: field "{name}" is missing', field=name)
        if not isinstance(obj[name], str):
            raise MalformedMessage(f'{what}: field "{name}" must be a string', field=name)
        values[name] = obj[name]
    signature = _check_b64(values["op-sig"], SIGNATURE_BYTES, lambda: MalformedMessage(
        f'{what}: field "op-sig" is not a base64url Ed25519 signature (64 bytes, padded)',
        field="op-sig"))
    public_key = _check_b64(values["op-public-key"], PUBLIC_KEY_BYTES, lambda: MalformedMessage(
        f'{what}: field "op-public-key" is not a base64url Ed25519 public key '
        "(32 bytes, padded)", field="op-public-key"))
    try:
        values["op-body"].encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedMessage(f'{what}: field "op-body" is not valid UTF-8 (lone surrogate)',
                               field="op-body") from None
    return ReleaseMessage(body=parse_body(obj["op"], values["op-body"]),
                          body_text=values["op-body"], op_sig=values["op-sig"],
                          op_public_key=values["op-public-key"], signature_raw=signature,
                          public_key_raw=public_key)


def parse_enable(obj: dict[str, Any]) -> EnableLedger:
    """The bootstrap entry, exactly as :func:`enable_contents` writes it (no other keys)."""
    fields = _Fields(obj, ("server-action", "now", "core-vendor", "core-key"),
                     what="release ledger enable entry")
    now = fields.required("now")
    if ATOM_RE.fullmatch(now) is None:
        raise fields._fail("now", "must be an ATOM UTC timestamp (YYYY-MM-DDTHH:MM:SS+00:00)")
    return EnableLedger(now=now, core_vendor=fields.vendor("core-vendor"),
                        core_key=fields.key("core-key"))


def classify(contents: bytes) -> ReleaseMessage | EnableLedger | NotRelease:
    """What an entry's contents are: a release message, the enable entry, or neither.

    A JSON object whose ``op`` is one of :data:`OPS` is a release message and must parse
    (else :class:`MalformedMessage`); one whose ``server-action`` is ``Release Ledger
    Enabled`` is an enable entry (likewise). Everything else is :class:`NotRelease`.
    """
    try:
        text = contents.decode("utf-8")
    except UnicodeDecodeError:
        return NotRelease("not-json")
    try:
        obj = _strict_loads(text)
    except _Duplicate as dup:
        try:
            loose = json.loads(text)
        except (ValueError, RecursionError):
            return NotRelease("not-json")
        if isinstance(loose, dict) and (loose.get("op") in OPS
                                        or loose.get("server-action") == ACTION_ENABLE):
            raise MalformedMessage(f"envelope: field {_q(dup.key)} appears twice",
                                   field=dup.key) from None
        return _not_release(loose)
    except (ValueError, RecursionError):
        return NotRelease("not-json")
    if not isinstance(obj, dict):
        return NotRelease("not-object")
    op = obj.get("op")
    if isinstance(op, str) and op in OPS:
        return _parse_envelope(obj)
    if obj.get("server-action") == ACTION_ENABLE:
        return parse_enable(obj)
    return _not_release(obj)


def _not_release(obj: Any) -> NotRelease:
    if not isinstance(obj, dict):
        return NotRelease("not-object")
    if "op" in obj:
        return NotRelease("unknown-op")
    if "server-action" in obj:
        return NotRelease("server-action")
    return NotRelease("no-op")


# --- canonical serialisation ----------------------------------------------------------------

def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


def body_obj(body: Body) -> dict[str, Any]:
    """The body as an ordered dict in our fixed key order (docs/release-format.md)."""
    out: dict[str, Any] = {"vendor": body.vendor}
    if isinstance(body, AddKey | RevokeKey):
        out["publickey"] = body.publickey
        if isinstance(body, AddKey):
            if body.name is not None:
                out["name"] = body.name
            if body.limited:
                out["limited"] = True
        return out
    out["name"] = body.name
    out["version"] = body.version
    if isinstance(body, Update):
        out["metadata"] = body.metadata.to_obj()
    elif isinstance(body, RevokeUpdate):
        out["reason"] = body.reason
    else:
        out["attestor"] = body.attestor
        out["attestation"] = body.attestation
        if body.details is not None:
            out["details"] = body.details
    return out


def canonical_body(body: Body) -> str:
    """The op-body text our tools sign: compact JSON, fixed key order, ASCII (``\\uXXXX``)."""
    return _compact(body_obj(body))


def envelope(op: str, body_text: str, op_sig: str, op_public_key: str) -> bytes:
    """Entry contents in Herd's key order: op, op-body, op-sig, op-public-key."""
    return _compact({"op": op, "op-body": body_text, "op-sig": op_sig,
                     "op-public-key": op_public_key}).encode("ascii")


def sign_message(op_body: Body, signing_key: SigningKey) -> bytes:
    """Serialise ``op_body`` canonically, sign it, and return the entry contents bytes.

    The body is re-parsed first, so a tool cannot sign what the rules would call malformed.
    """
    text = canonical_body(op_body)
    parse_body(op_body.op, text)
    return envelope(op_body.op, text, signing_key.sign_b64(text.encode("utf-8")),
                    signing_key.public_b64)


def enable_contents(now: datetime, core_vendor: str, core_key: str) -> bytes:
    """The server's bootstrap entry, styled as ``protocol.server_action_message``."""
    if not valid_vendor(core_vendor):
        raise MalformedMessage("core vendor is not a Composer vendor name: "
                               f"{_q(core_vendor)}", field="core-vendor")
    _check_b64(core_key, PUBLIC_KEY_BYTES, lambda: MalformedMessage(
        "core key is not a base64url Ed25519 public key (32 bytes, padded)", field="core-key"))
    return php_json({
        "server-action": ACTION_ENABLE,
        "now": atom(now),
        "core-vendor": core_vendor,
        "core-key": core_key,
    }).encode("ascii")
