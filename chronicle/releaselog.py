"""The server side of a release ledger (issue 12; docs/release.md): enabling it, and the
answers of ``/chronicle/release/``.

- :func:`enable` (``chronicle release enable``): checks the chain's history replays cleanly
  under the release rules (counting what is skipped), makes the chain a release ledger
  under its head lock (from that commit on, the gate in
  :class:`~chronicle.store.release.ReleaseHook` judges every append), then appends the
  server-signed enable entry naming the core vendor and its first key, judged like any
  other entry. Interrupted after the first step, a second run only appends the entry.
- :class:`ReleaseReads`: vendors, a vendor's keys, a package's updates, one update with
  its attestations, from the persisted state; each row with the chain position (index,
  currhash) of the entry that proves it.

Only the chain where it was enabled has a gate: replicas copy verified entries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from chronicle.core.encoding import atom
from chronicle.core.errors import NotFoundError, RequestError
from chronicle.core.sapient import SigningKey
from chronicle.ledger import Clock, Ledger
from chronicle.release.messages import (
    enable_contents,
    normalize_version,
    valid_package,
    valid_vendor,
)
from chronicle.release.state import (
    VIOLATIONS,
    Attestation,
    ChainEntry,
    KeyRecord,
    Position,
    ReleaseState,
    UpdateKey,
    UpdateRecord,
)
from chronicle.store import Store
from chronicle.store import rows as store_rows
from chronicle.store.release import ReleaseLedger

MSG_NOT_RELEASE = "This chain is not a release ledger"
PAGE = 1000
"""Rows per page of every listing under ``/chronicle/release/``."""
_PAGE_READ = 2000
_ENTRIES = (f"SELECT {store_rows.RANGE_COLS} FROM entries WHERE instance = ? "  # noqa: S608
            "AND idx >= ? AND idx < ? ORDER BY idx")


def already_enabled(ledger: ReleaseLedger) -> RequestError:
    assert ledger.enable is not None
    message = VIOLATIONS["already-enabled"][1].format(index=ledger.enable.at.index)
    return RequestError(f"{message} (core vendor {ledger.enable.core_vendor}, core key "
                        f"{ledger.enable.core_key})", status=409)


@dataclass(frozen=True, slots=True)
class EnableReport:
    """What ``enable`` did: the enable entry's position, the history replayed."""

    instance: str
    core_vendor: str
    core_key: str
    index: int
    currhash: str
    history: int
    skipped: dict[str, int]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"instance": self.instance, "core-vendor": self.core_vendor,
                "core-key": self.core_key, "index": self.index, "currhash": self.currhash,
                "history": self.history, "skipped": self.skipped,
                "seconds": round(self.seconds, 3)}


def _ingest(session_rows: list[Any], state: ReleaseState) -> None:
    for row in session_rows:
        state.ingest(ChainEntry.from_entry(store_rows.entry(row)))


def _check_history(state: ReleaseState) -> None:
    """A release ledger starts from a history without release messages: a verifier
    replays from entry 0, and must find nothing to refuse there."""
    for rejected in state.rejected():
        raise RequestError(f"entry {rejected.at.index} is a release message the rules refuse "
                           f"({rejected.code}: {rejected.message}); a chain holding it "
                           "cannot become a release ledger", status=409)
    if state.ledger() is not None:
        enabled = state.ledger()
        assert enabled is not None
        raise RequestError(f"entry {enabled.at.index} already enables a release ledger on "
                           "this chain, but the database has no release state for it "
                           "(was it imported?)", status=409)


async def _prepare(store: Store, instance: str, server_key: SigningKey, clock: Clock) -> int:
    """Replay the history (pages, no lock), then under the head lock catch up with what
    was appended meanwhile and make the chain a release ledger; entries replayed."""
    state = ReleaseState(server_key=server_key.public_b64)
    chain = store.chain(instance)
    head = await chain.head()
    end = 0 if head is None else head.index + 1
    async for page in chain.pages(0, end, _PAGE_READ):
        for entry in page:
            state.ingest(ChainEntry.from_entry(entry))
    _check_history(state)
    async with store.write(instance) as tx:
        if await store.release.ledger(instance) is not None:
            raise RequestError("the release ledger is being enabled by another process",
                               status=409)
        now = await tx.head()
        stop = 0 if now is None else now.index + 1
        for start in range(end, stop, _PAGE_READ):
            _ingest(await tx.session.fetch(_ENTRIES, tx.instance_id, start,
                                                 min(stop, start + _PAGE_READ)), state)
        _check_history(state)
        await store.release.prepare(tx, server_key.public_b64, atom(clock()), state.skipped())
    return stop


async def enable(store: Store, ledger: Ledger, server_key: SigningKey, core_vendor: str,
                 core_key: str, *, clock: Clock) -> EnableReport:
    """Turn ``ledger``'s chain into a release ledger (see the module docstring)."""
    started = time.monotonic()
    instance = ledger.instance
    contents = enable_contents(clock(), core_vendor, core_key)   # validates both
    existing = await store.release.ledger(instance)
    history = 0
    if existing is not None and existing.enable is not None:
        raise already_enabled(existing)
    if existing is not None and existing.server_key != server_key.public_b64:
        raise RequestError(f"enabling the release ledger was begun with server key "
                           f"{existing.server_key}; only that key may sign its enable "
                           "entry", status=409)
    if existing is None:
        history = await _prepare(store, instance, server_key, clock)
    entry = await ledger.append(contents, server_key.public, server_key.sign(contents))
    done = await store.release.ledger(instance)
    assert done is not None
    assert done.enable is not None
    if done.enable.at.index != entry.index:
        raise already_enabled(done)
    state_skipped = await store.release.skipped(instance)
    return EnableReport(instance, core_vendor, core_key, entry.index,
                        done.enable.at.currhash, history, state_skipped,
                        time.monotonic() - started)


async def status(store: Store, instance: str) -> dict[str, Any]:
    """Whether the chain is a release ledger, its core vendor, and what its state holds."""
    ledger = await store.release.ledger(instance)
    if ledger is None:
        return {"enabled": False}
    enable = ledger.enable
    out: dict[str, Any] = {"enabled": enable is not None, "server-key": ledger.server_key,
                           "prepared": ledger.prepared}
    if enable is not None:
        out.update({"core-vendor": enable.core_vendor, "core-key": enable.core_key,
                    "at": position(enable.at), "now": enable.now})
    out.update(await store.release.counts(instance))
    out["skipped"] = await store.release.skipped(instance)
    return out


# --- the read endpoints' answers ------------------------------------------------------------------

def position(at: Position | None) -> dict[str, Any] | None:
    """A chain position as the endpoints show it."""
    return None if at is None else {"index": at.index, "currhash": at.currhash}


def key_obj(k: KeyRecord) -> dict[str, Any]:
    return {"publickey": k.publickey, "name": k.name, "limited": k.limited,
            "trusted": k.trusted, "added": position(k.added), "added-by": k.added_by,
            "added-emergency": k.added_emergency, "revoked": position(k.revoked),
            "revoked-by": k.revoked_by, "revoked-emergency": k.revoked_emergency}


def update_obj(u: UpdateRecord) -> dict[str, Any]:
    return {"vendor": u.vendor, "name": u.name, "version": u.version,
            "version-normalized": u.version_key, "at": position(u.at),
            "signer": u.signer, "emergency": u.emergency, "verifiable": u.metadata.verifiable,
            "metadata": u.metadata.to_obj(), "op-body": u.body, "op-sig": u.op_sig,
            "revoked": position(u.revoked), "revoked-by": u.revoked_by,
            "revoke-reason": u.revoke_reason, "revoked-emergency": u.revoked_emergency}


def attestation_obj(a: Attestation) -> dict[str, Any]:
    return {"at": position(a.at), "attestor": a.attestor, "attestation": a.attestation,
            "details": a.details, "signer": a.signer}


def _vendor(text: str) -> str:
    if not valid_vendor(text):
        raise RequestError(f"not a vendor name: {text[:200]!r}")
    return text


def _package(vendor: str, name: str) -> tuple[str, str]:
    if not valid_package(name):
        raise RequestError(f"not a package name: {name[:200]!r}")
    return _vendor(vendor), name


def _after(text: str | None) -> int:
    if text is None:
        return -1
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise RequestError("after must be an entry index (a decimal number)")
    return int(text)


class ReleaseReads:
    """What ``/chronicle/release/`` answers, for a chain that is an enabled release ledger."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def _enabled(self, instance: str) -> None:
        ledger = await self.store.release.ledger(instance)
        if ledger is None or ledger.enable is None:
            raise NotFoundError(MSG_NOT_RELEASE)

    async def ledger(self, instance: str) -> dict[str, Any]:
        """The enable entry's facts: the core vendor, its first key, where."""
        ledger = await self.store.release.ledger(instance)
        if ledger is None or ledger.enable is None:
            raise NotFoundError(MSG_NOT_RELEASE)
        e = ledger.enable
        return {"core-vendor": e.core_vendor, "core-key": e.core_key, "now": e.now,
                "at": position(e.at)}

    async def vendors(self, instance: str, after: str | None) -> dict[str, Any]:
        await self._enabled(instance)
        if after is not None:
            _vendor(after)
        page, following = await self.store.release.vendor_page(instance, after or "", PAGE)
        return {"vendors": [{"vendor": v.vendor, "keys": v.keys, "trusted": v.trusted,
                             "since": v.since} for v in page],
                "next": following}

    async def keys(self, instance: str, vendor: str) -> dict[str, Any]:
        await self._enabled(instance)
        keys = await self.store.release.keys(instance, _vendor(vendor))
        if not keys:
            raise NotFoundError(f"unknown vendor {vendor}: it has no keys")
        return {"vendor": vendor, "keys": [key_obj(k) for k in keys]}

    async def updates(self, instance: str, vendor: str, name: str,
                      after: str | None) -> dict[str, Any]:
        await self._enabled(instance)
        vendor, name = _package(vendor, name)
        found, following = await self.store.release.updates(instance, vendor, name,
                                                            _after(after), PAGE)
        if not found and after is None:
            raise NotFoundError(f"there are no updates of {vendor}/{name}")
        return {"package": f"{vendor}/{name}", "updates": [update_obj(u) for u in found],
                "next": following}

    async def update(self, instance: str, vendor: str, name: str, version: str,
                     after: str | None) -> dict[str, Any]:
        await self._enabled(instance)
        vendor, name = _package(vendor, name)
        try:
            key = UpdateKey(vendor, name, normalize_version(version))
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        found = await self.store.release.update(instance, key)
        if found is None:
            raise NotFoundError(VIOLATIONS["update-unknown"][1].format(
                vendor=vendor, name=name, version=version))
        attestations, following = await self.store.release.attestations(
            instance, key, _after(after), PAGE)
        return {"update": update_obj(found),
                "attestations": [attestation_obj(a) for a in attestations],
                "next": following}

