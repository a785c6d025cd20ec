"""The verifying client's state directory: pinned keys and policy, and the synced state.

Layout (docs/verify.md):

- ``config.json``: what ``verify init`` pinned: the ledger's URL and key, the mirrors
  (URL and key each), the quorum, the policies, ``max-age``.
- ``state.db`` (SQLite, :mod:`chronicle.verify.db`): the release state as rows; the
  entries verified on the chain but not yet judged (the sync stopped at an item held for
  review); and in ``meta`` where the sync stands: the verified chain position (with its
  summary hash state, so the next sync continues from it), how many entries were judged,
  when the last sync finished, the review items, a halt (split view), the releases a
  violation refused, the Merkle tree and checkpoint (``--tlog``). One transaction per sync:
  an interrupted sync leaves the previous state intact.
- ``evidence/``: what a split view left: the signed answers, verbatim.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from chronicle.config import ConfigError
from chronicle.core.encoding import (
    b64u_decode,
    decode_b64_field,
    parse_interval,
    parse_timestamp,
)
from chronicle.core.errors import ChronicleError, EncodingError
from chronicle.core.note import Ed25519Verifier
from chronicle.core.verify import ChainState
from chronicle.release.state import ChainEntry
from chronicle.verify.db import ReleaseDB

CONFIG_FORMAT: Final = "chronicle-verify/1"
STATE_FORMAT: Final = "chronicle-verify-state/1"
CORE_VENDOR_POLICIES: Final = ("off", "review", "auto")
UNSIGNED_POLICIES: Final = ("allow", "warn", "deny")
DEFAULT_MAX_AGE: Final = 24 * 3600
_VENDOR_RE: Final = re.compile(r"[a-z0-9]+(?:[_.-][a-z0-9]+)*")


class StateFileError(ChronicleError):
    """A state directory that does not read back: damaged, or made for another ledger."""


class UsageError(ChronicleError):
    """An option value or state directory that cannot work (exit 2)."""


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``30m``, ``24h``, ``7d`` or Chronicle's ``"1 hour 30 minutes"``:
    seconds (> 0)."""
    text = text.strip()
    match = re.fullmatch(r"(\d+)\s*([smhd]?)", text)
    if match:
        seconds = int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    else:
        try:
            seconds = int(parse_interval(text).total_seconds())
        except EncodingError:
            raise UsageError(f"not a duration: {text!r} (e.g. 90s, 30m, 24h, 7d)") from None
    if seconds <= 0:
        raise UsageError(f"the duration must be positive: {text!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class Mirror:
    """A mirror: a Chronicle base URL or a replica path, and the key that signs its answers."""

    url: str
    public_key: str

    @classmethod
    def parse(cls, text: str) -> Mirror:
        url, sep, key = text.partition("#")
        if not sep or not url.strip():
            raise UsageError(f"mirror {text!r}: expected URL#PUBLICKEY")
        if decode_b64_field(key.strip(), 32) is None:
            raise UsageError(f"mirror {text!r}: the key after '#' is not a base64url "
                             "Ed25519 public key")
        return cls(url.strip(), key.strip())


@dataclass(frozen=True, slots=True)
class Config:
    """What ``verify init`` pinned."""

    url: str
    server_key: str
    mirrors: tuple[Mirror, ...] = ()
    quorum: int = 0
    core_vendor: str = "review"
    unsigned: str = "warn"
    namespace_policy: tuple[tuple[str, str], ...] = ()
    max_age: int = DEFAULT_MAX_AGE
    tlog: str | None = None

    def __post_init__(self) -> None:
        if decode_b64_field(self.server_key, 32) is None:
            raise UsageError("the server key is not a base64url Ed25519 public key")
        if self.core_vendor not in CORE_VENDOR_POLICIES:
            raise UsageError(f"core-vendor policy {self.core_vendor!r}: expected one of "
                             f"{', '.join(CORE_VENDOR_POLICIES)}")
        if self.unsigned not in UNSIGNED_POLICIES:
            raise UsageError(f"unsigned policy {self.unsigned!r}: expected one of "
                             f"{', '.join(UNSIGNED_POLICIES)}")
        for vendor, policy in self.namespace_policy:
            if _VENDOR_RE.fullmatch(vendor) is None:
                raise UsageError(f"namespace policy: {vendor!r} is not a Composer vendor name")
            if policy not in UNSIGNED_POLICIES:
                raise UsageError(f"namespace policy {vendor}={policy}: expected one of "
                                 f"{', '.join(UNSIGNED_POLICIES)}")
        if not 0 <= self.quorum <= len(self.mirrors):
            raise UsageError(f"quorum {self.quorum}: must be between 0 and the number of "
                             f"mirrors ({len(self.mirrors)})")
        if self.max_age <= 0:
            raise UsageError("max-age must be positive")
        if self.tlog is not None:
            try:
                Ed25519Verifier.from_vkey(self.tlog)
            except ChronicleError as exc:
                raise UsageError(f"--tlog: {exc.message}") from None

    @property
    def server_key_raw(self) -> bytes:
        return b64u_decode(self.server_key, 32)

    def unsigned_policy(self, vendor: str) -> str:
        """The policy for packages of ``vendor`` that are not signed on the ledger."""
        return dict(self.namespace_policy).get(vendor, self.unsigned)

    @staticmethod
    def parse_namespace_policy(items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        out: dict[str, str] = {}
        for item in items:
            vendor, sep, policy = item.partition("=")
            if not sep:
                raise UsageError(f"namespace policy {item!r}: expected VENDOR=POLICY")
            out[vendor.strip()] = policy.strip()
        return tuple(sorted(out.items()))

    def as_dict(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, "url": self.url, "server-key": self.server_key,
                "mirrors": [{"url": m.url, "public-key": m.public_key} for m in self.mirrors],
                "quorum": self.quorum, "core-vendor": self.core_vendor,
                "unsigned": self.unsigned, "namespace-policy": dict(self.namespace_policy),
                "max-age": self.max_age, "tlog": self.tlog}

    @classmethod
    def from_dict(cls, doc: Any) -> Config:
        if not isinstance(doc, dict) or doc.get("format") != CONFIG_FORMAT:
            raise StateFileError(f"config.json is not a {CONFIG_FORMAT} file")
        try:
            return cls(url=str(doc["url"]), server_key=str(doc["server-key"]),
                       mirrors=tuple(Mirror(str(m["url"]), str(m["public-key"]))
                                     for m in doc["mirrors"]),
                       quorum=int(doc["quorum"]), core_vendor=str(doc["core-vendor"]),
                       unsigned=str(doc["unsigned"]),
                       namespace_policy=tuple(sorted((str(k), str(v)) for k, v in
                                                     dict(doc["namespace-policy"]).items())),
                       max_age=int(doc["max-age"]),
                       tlog=None if doc.get("tlog") is None else str(doc["tlog"]))
        except (KeyError, TypeError, ValueError, UsageError) as exc:
            raise StateFileError(f"config.json is damaged: {exc}") from None


@dataclass(slots=True)
class ReviewItem:
    """Something a sync found that a human decides on (``verify review``).

    ``kind``: ``violation`` (an entry the rules refuse; the ledger holds it anyway) or
    ``emergency`` (the core vendor acted for another vendor; policy ``review``).
    ``decision``: None while held, then ``accept`` or ``skip``; under the policies ``off``
    and ``auto`` an emergency action is decided at once (``skip`` / ``accept``, ``by``
    ``policy``).
    """

    id: int
    kind: str
    index: int
    currhash: str
    code: str
    message: str
    vendor: str | None = None
    decision: str | None = None
    by: str | None = None
    decided_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "index": self.index,
                "currhash": self.currhash, "code": self.code, "message": self.message,
                "vendor": self.vendor, "decision": self.decision, "by": self.by,
                "decided-at": self.decided_at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReviewItem:
        return cls(id=int(d["id"]), kind=str(d["kind"]), index=int(d["index"]),
                   currhash=str(d["currhash"]), code=str(d["code"]), message=str(d["message"]),
                   vendor=d.get("vendor"), decision=d.get("decision"), by=d.get("by"),
                   decided_at=d.get("decided-at"))


@dataclass(slots=True)
class SyncState:
    """Where the sync stands (the ``sync`` row of ``state.db``'s ``meta``)."""

    chain: ChainState = field(default_factory=lambda: ChainState(0))
    judged: int = 0
    synced_at: str | None = None
    reviews: list[ReviewItem] = field(default_factory=list)
    halt: dict[str, Any] | None = None
    refused_releases: dict[str, dict[str, Any]] = field(default_factory=dict)
    tree: str | None = None
    checkpoint: str | None = None
    """With ``--tlog``: the Merkle tree over the verified entries (base64url of
    :meth:`TreeState.to_bytes`) and the last signed checkpoint note the sync held them to."""

    def held(self) -> list[ReviewItem]:
        return [r for r in self.reviews if r.decision is None]

    def decisions(self, kind: str) -> dict[int, str]:
        """Entry index -> decision, for the decided items of ``kind``."""
        return {r.index: r.decision for r in self.reviews
                if r.kind == kind and r.decision is not None}

    def age(self, now: datetime) -> timedelta | None:
        return None if self.synced_at is None else now - parse_timestamp(self.synced_at)


class StateDir:
    """One verifying client's directory (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: ReleaseDB | None = None

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def db_path(self) -> Path:
        return self.path / "state.db"

    @property
    def evidence_dir(self) -> Path:
        return self.path / "evidence"

    def exists(self) -> bool:
        return self.config_path.exists()

    # -- config
    def create(self, config: Config) -> None:
        """Write a new directory; refused if one is already there."""
        if self.exists():
            raise UsageError(f"{self.path} already holds a verify state (config.json)")
        self.path.mkdir(parents=True, exist_ok=True)
        self._write(self.config_path, _dumps(config.as_dict()))

    def config(self) -> Config:
        if not self.exists():
            raise ConfigError(f"{self.path} is not a verify state directory (no config.json; "
                              "run chronicle verify init)")
        return Config.from_dict(_read_json(self.config_path))

    # -- state
    def db(self, server_key: str) -> ReleaseDB:
        """``state.db``, opened once (its rows are the release state)."""
        if self._db is None:
            try:
                self._db = ReleaseDB(self.db_path, server_key)
            except sqlite3.Error as exc:
                raise StateFileError(f"{self.db_path}: {exc}") from None
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def load_sync(self, server_key: str) -> SyncState:
        """Where the sync stands (the ``sync`` row of ``meta``)."""
        db = self.db(server_key)
        doc = db.get_meta("sync")
        if doc is None:
            return SyncState()
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise StateFileError(f"state.db: the sync position is not {STATE_FORMAT}")
        if doc.get("server-key") != server_key:
            raise StateFileError("state.db was made for another server key")
        try:
            return SyncState(
                chain=ChainState.from_dict(doc["chain"]), judged=int(doc["judged"]),
                synced_at=doc.get("synced-at"),
                reviews=[ReviewItem.from_dict(r) for r in doc["reviews"]],
                halt=doc.get("halt"), refused_releases=dict(doc["refused-releases"]),
                tree=doc.get("tree"), checkpoint=doc.get("checkpoint"))
        except (KeyError, TypeError, ValueError, ChronicleError) as exc:
            raise StateFileError(f"state.db: the sync position is damaged: {exc}") from None

    def load(self, server_key: str) -> tuple[SyncState, ReleaseDB]:
        """A sync's start: a write transaction on ``state.db``, the position, the rows."""
        db = self.db(server_key)
        db.begin()
        return self.load_sync(server_key), db

    def save(self, sync: SyncState, db: ReleaseDB, server_key: str,
             pending: list[ChainEntry]) -> None:
        """Commit the sync: the position, the unjudged entries and the rows, together."""
        db.set_pending(pending)
        self._put_sync(db, sync, server_key)
        db.commit()

    def save_sync(self, sync: SyncState, server_key: str) -> None:
        """Rewrite the position alone (reviews, halt), in its own transaction."""
        db = self.db(server_key)
        db.rollback()
        db.begin()
        self._put_sync(db, sync, server_key)
        db.commit()

    def _put_sync(self, db: ReleaseDB, sync: SyncState, server_key: str) -> None:
        db.set_meta("sync", {
            "format": STATE_FORMAT, "server-key": server_key, "chain": sync.chain.as_dict(),
            "judged": sync.judged, "synced-at": sync.synced_at,
            "reviews": [r.as_dict() for r in sync.reviews], "halt": sync.halt,
            "refused-releases": sync.refused_releases, "tree": sync.tree,
            "checkpoint": sync.checkpoint})

    def write_evidence(self, name: str, doc: dict[str, Any]) -> Path:
        self.evidence_dir.mkdir(parents=True, exist_ok=True)
        path = self.evidence_dir / name
        self._write(path, _dumps(doc))
        return path

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=False).encode("utf-8") + b"\n"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:
        raise StateFileError(f"{path.name} is not JSON: {exc}") from None
