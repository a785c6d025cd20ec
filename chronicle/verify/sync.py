"""``verify sync``: fetch only the new entries, verify them as the auditor does, judge them
with the gate's own rules, and compare our head with the mirrors.

Every entry is checked like ``chronicle audit`` checks it (the answer's signature by the
pinned key, the entry's signature, its link, currhash and summaryhash, from the saved hash
state); the walk must reach the ledger's fresh signed head. The release state is then
advanced with :func:`~chronicle.release.state.judge`, the pure code the ledger's gate runs,
on the rows of ``state.db`` (:mod:`chronicle.verify.db`). An entry
the rules refuse (a ledger that stored it anyway) or, under the ``review`` policy, a core
vendor's emergency action stops the judging there: what follows is kept verified but
unjudged until ``verify review`` decides. Mirrors are asked for ``lookup/{our head's
summaryhash}``: the same currhash agrees, a 404 is behind (waited for, then warned about),
another currhash is a split view (evidence saved, nothing else saved, exit non-zero).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from chronicle.audit.engine import TreeCheck
from chronicle.client.errors import RecordNotFound
from chronicle.client.http import ChronicleClient
from chronicle.client.tlog import TreeClient, open_checkpoint_with
from chronicle.core.checkpoint import SignedCheckpoint
from chronicle.core.encoding import atom, b64u_decode, b64u_encode, utcnow
from chronicle.core.errors import ChronicleError, IntegrityError
from chronicle.core.leaf import LeafRecord
from chronicle.core.merkle import TreeState
from chronicle.core.note import Ed25519Verifier
from chronicle.core.verify import (
    EXPORT_KEYS,
    ROW_KEYS,
    ChainFault,
    ChainVerifier,
    SignedContents,
    verify_row,
)
from chronicle.release.messages import (
    OP_UPDATE,
    MalformedMessage,
    ReleaseMessage,
    UpdateRef,
    classify,
)
from chronicle.release.state import (
    Accepted,
    ChainEntry,
    Violation,
)
from chronicle.verify.db import ReleaseDB
from chronicle.verify.faults import VerifyFault
from chronicle.verify.statedir import (
    Config,
    Mirror,
    ReviewItem,
    StateDir,
    StateFileError,
    SyncState,
)


@dataclass
class MirrorReport:
    """One mirror's answer about our head: ``agree``, ``behind``, ``split`` or ``error``."""

    url: str
    status: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "detail": self.detail}


@dataclass
class SyncReport:
    """What one sync did. ``fetched``: entries received; ``verified``: entries that passed
    every chain check; ``judged``: entries run through the release rules this time."""

    fetched: int = 0
    verified: int = 0
    judged: int = 0
    head: dict[str, Any] | None = None
    mirrors: list[MirrorReport] = field(default_factory=list)
    new_items: list[ReviewItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pending: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    tlog: dict[str, Any] | None = None

    on_warning: Callable[[str], None] | None = None

    def held(self) -> list[ReviewItem]:
        return [i for i in self.new_items if i.decision is None]

    def warn(self, text: str) -> None:
        """Record a warning, and show it at once (a fault may end the sync after it)."""
        self.warnings.append(text)
        if self.on_warning is not None:
            self.on_warning(text)

    def as_dict(self) -> dict[str, Any]:
        return {"fetched": self.fetched, "verified": self.verified, "judged": self.judged,
                "head": self.head, "mirrors": [m.as_dict() for m in self.mirrors],
                "review-items": [i.as_dict() for i in self.new_items],
                "held": len(self.held()), "unjudged": self.pending,
                "warnings": self.warnings, "tlog": self.tlog, "state": self.summary}


def _message(contents: bytes) -> ReleaseMessage | None:
    """The release message an entry carries, if it parses as one."""
    try:
        message = classify(contents)
    except MalformedMessage:
        return None
    return message if isinstance(message, ReleaseMessage) else None


def release_key(ref: UpdateRef) -> str:
    """How the state file names a release: ``vendor/name version_key``."""
    return f"{ref.vendor}/{ref.name} {ref.version_key}"


def summarize(release: ReleaseDB, sync: SyncState) -> dict[str, Any]:
    ledger = release.ledger()
    return {"entries": sync.chain.count, "judged": sync.judged,
            "release-ledger": ledger is not None,
            "core-vendor": None if ledger is None else ledger.core_vendor,
            "vendors": len(release.vendors()), "updates": release.count("updates"),
            "attestations": release.count("attestations"),
            "emergency-actions": release.count("emergency"),
            "violations": release.count("rejected"), "skipped": dict(release.skipped()),
            "held": len(sync.held()), "synced-at": sync.synced_at}


class TreeSync:
    """``--tlog``: the verified entries held to the ledger's signed checkpoint.

    The checkpoint is fetched before the walk, so the walk reaches its size; the Merkle tree
    over the entries (kept in the state) must have its root there, and a newer checkpoint
    must be consistent with the one the previous sync held (the ledger's own proof that its
    log only grew). Either failing is a split view: the ledger signed another history than
    the one it serves. The tree cannot make the sync cheaper: rebuilding the release state
    reads every entry anyway.
    """

    def __init__(self, vkey: str, sync: SyncState) -> None:
        self.verifier = Ed25519Verifier.from_vkey(vkey)
        self.sync = sync
        self.check: TreeCheck | None = None
        self.signed: SignedCheckpoint | None = None
        self.resumed = TreeState.empty()

    def _resumed(self) -> TreeState | None:
        if not self.sync.chain.count:
            return None
        if self.sync.tree is None:
            raise StateFileError("state.db has no Merkle tree of its entries")
        return TreeState.from_bytes(b64u_decode(self.sync.tree), size=self.sync.chain.count)

    async def start(self, client: ChronicleClient) -> None:
        tree = TreeClient(client, self.verifier)
        self.signed = await tree.checkpoint()
        new = self.signed.checkpoint
        if self.sync.checkpoint is not None:
            old = open_checkpoint_with(self.sync.checkpoint.encode(), self.verifier).checkpoint
            signed_now = self.signed.to_bytes().decode("utf-8", "replace")
            if new.size < old.size or (new.size == old.size and new.root != old.root):
                raise VerifyFault("split-view", f"the ledger's signed checkpoint (size "
                                  f"{new.size}) does not extend the one it signed before "
                                  f"(size {old.size})", checkpoint_now=signed_now)
            # The empty tree is a prefix of every tree: there is no proof to ask for.
            if new.size > old.size > 0:
                try:
                    await tree.consistency(old, new)
                except IntegrityError as exc:
                    raise VerifyFault("split-view", "the ledger's checkpoint of size "
                                      f"{new.size} is not consistent with the one of size "
                                      f"{old.size}: {exc.message}",
                                      checkpoint_now=signed_now) from None
        resumed = self._resumed()
        if resumed is not None and resumed.size > new.size:
            # A checkpoint that lags our verified head proves nothing new: keep the tree.
            self.resumed = resumed
            return
        self.check = TreeCheck(new, resumed)

    def add(self, verifier: ChainVerifier, signed: SignedContents) -> None:
        if self.check is not None:
            self.check.add(verifier, signed)
        else:
            self.resumed = self.resumed.append(_leaf(verifier, signed))[0]

    def finish(self, report: SyncReport) -> None:
        if self.check is None:
            self.sync.tree = b64u_encode(self.resumed.to_bytes())
            return
        try:
            proven = self.check.finish()
        except ChainFault as exc:
            raise VerifyFault("split-view", "the entries the ledger served do not match its "
                              f"signed checkpoint: {exc.message}") from None
        assert self.signed is not None
        self.sync.tree = b64u_encode(self.check.state.to_bytes())
        self.sync.checkpoint = self.signed.to_bytes().decode("utf-8")
        report.tlog = proven


def _leaf(verifier: ChainVerifier, signed: SignedContents) -> bytes:
    created, currhash = verifier.last_created, verifier.last_currhash
    assert created is not None
    assert currhash is not None
    return LeafRecord.build(created, signed.publickey, signed.signature, signed.contents,
                            currhash).leaf_hash()


class Judge:
    """Feeds verified entries to the release rules until an item is held for review."""

    def __init__(self, config: Config, sync: SyncState, release: ReleaseDB,
                 report: SyncReport, now: str) -> None:
        self.config, self.sync, self.release, self.report = config, sync, release, report
        self.now = now
        self.unjudged: list[ChainEntry] = []

    @property
    def halted(self) -> bool:
        return bool(self.unjudged) or bool(self.sync.held())

    def feed(self, entry: ChainEntry) -> None:
        if self.halted:
            self.unjudged.append(entry)
            return
        verdict = self.release.ingest(entry)
        self.sync.judged = entry.index + 1
        self.report.judged += 1
        if isinstance(verdict, Violation):
            self._violation(entry, verdict)
        elif isinstance(verdict, Accepted) and verdict.emergency:
            self._emergency(entry, verdict)

    def _item(self, kind: str, entry: ChainEntry, code: str, message: str,
              vendor: str | None) -> ReviewItem:
        item = ReviewItem(id=len(self.sync.reviews) + 1, kind=kind, index=entry.index,
                          currhash=entry.currhash, code=code, message=message, vendor=vendor)
        self.sync.reviews.append(item)
        self.report.new_items.append(item)
        return item

    def _violation(self, entry: ChainEntry, verdict: Violation) -> None:
        message = _message(entry.contents)
        self._item("violation", entry, verdict.code,
                   f"entry {entry.index} breaks the release rules ({verdict.code}): "
                   f"{verdict.message}", None if message is None else message.body.vendor)
        if message is not None and message.op == OP_UPDATE:
            body = message.body
            assert isinstance(body, UpdateRef)
            self.sync.refused_releases.setdefault(release_key(body), {
                "index": entry.index, "currhash": entry.currhash, "code": verdict.code,
                "message": verdict.message})

    def _emergency(self, entry: ChainEntry, verdict: Accepted) -> None:
        message = _message(entry.contents)
        vendor = None if message is None else message.body.vendor
        policy = self.config.core_vendor
        text = (f"entry {entry.index}: the core vendor's key acted for vendor {vendor} "
                f"({verdict.op}), an emergency action")
        item = self._item("emergency", entry, verdict.op, text, vendor)
        if policy == "off":
            item.decision, item.by, item.decided_at = "skip", "policy off", self.now
            self.report.warn(text + ": ignored (core-vendor policy off)")
        elif policy == "auto":
            item.decision, item.by, item.decided_at = "accept", "policy auto", self.now
            self.report.warn(text + ": applied (core-vendor policy auto)")


def held_fault(sync: SyncState) -> VerifyFault:
    held = sync.held()
    first = held[0]
    return VerifyFault("held-for-review",
                       f"{len(held)} item(s) held for review, first #{first.id}: "
                       f"{first.message} (decide with chronicle verify review)",
                       items=[i.as_dict() for i in held])


async def sync_state(state_dir: StateDir, *, wait: float = 0.0,
                     clock: Callable[[], datetime] = utcnow, request_timeout: float = 30.0,
                     on_warning: Callable[[str], None] | None = None) -> SyncReport:
    """One incremental sync of ``state_dir`` (see the module docstring); ``on_warning``
    sees each warning as it happens."""
    config = state_dir.config()
    sync, release = state_dir.load(config.server_key)
    try:
        return await _sync(state_dir, config, sync, release, wait=wait, clock=clock,
                           request_timeout=request_timeout, on_warning=on_warning)
    finally:
        release.rollback()      # nothing to undo after a commit


async def _sync(state_dir: StateDir, config: Config, sync: SyncState, release: ReleaseDB, *,
                wait: float, clock: Callable[[], datetime], request_timeout: float,
                on_warning: Callable[[str], None] | None) -> SyncReport:
    if sync.held():
        raise held_fault(sync)
    # A split view found earlier (sync.halt) stays until a sync passes the quorum: the
    # mirror fixed, or removed from config.json.
    report = SyncReport(on_warning=on_warning)
    judge = Judge(config, sync, release, report, atom(clock()))
    for entry in release.pending():
        judge.feed(entry)
    try:
        async with aiohttp.ClientSession() as session:
            verifier = await _fetch(state_dir, config, sync, judge, report, session,
                                    request_timeout)
            head = verifier.state()
            if head.count:
                assert head.currhash is not None
                assert head.summaryhash is not None
                report.head = {"index": head.count - 1,
                               "currhash": b64u_encode(head.currhash),
                               "summaryhash": b64u_encode(head.summaryhash)}
                await _quorum(state_dir, config, report, session, head.summaryhash,
                              head.currhash, wait=wait, request_timeout=request_timeout,
                              clock=clock)
    except VerifyFault as fault:
        if fault.kind == "split-view":
            _halt(state_dir, config, fault, report, clock)
        raise
    sync.chain = head
    sync.halt = None
    sync.synced_at = atom(clock())
    report.pending = len(judge.unjudged)
    state_dir.save(sync, release, config.server_key, judge.unjudged)
    report.summary = summarize(release, sync)
    return report


async def _fetch(state_dir: StateDir, config: Config, sync: SyncState, judge: Judge,
                 report: SyncReport, session: aiohttp.ClientSession,
                 request_timeout: float) -> ChainVerifier:
    async with ChronicleClient(config.url, config.server_key_raw, session=session,
                               timeout=request_timeout) as client:
        tree = None if config.tlog is None else TreeSync(config.tlog, sync)
        if tree is not None:
            await tree.start(client)
        head = await client.head()
        start = sync.chain
        if start.count == 0:
            verifier = ChainVerifier(None, keys=EXPORT_KEYS, track_hashstate=True,
                                     anchors=[b64u_decode(head.summaryhash, 32)] if head
                                     else ())
            path, fresh = "/export", None
        else:
            assert start.summaryhash is not None
            ours = b64u_encode(start.summaryhash)
            verifier = ChainVerifier(start, keys=ROW_KEYS,
                                     anchors=[b64u_decode(head.summaryhash, 32)]
                                     if head and head.summaryhash != ours else ())
            path, fresh = "/since/" + quote(ours, safe=""), True
        try:
            async for row, signed in client.walk(path, verifier, fresh=fresh):
                report.fetched += 1
                report.verified += 1
                if tree is not None:
                    tree.add(verifier, signed)
                judge.feed(ChainEntry(
                    index=signed.index, currhash=str(row[verifier.keys.curr]),
                    created=str(row["created"]), publickey=str(row["publickey"]),
                    contents=signed.contents))
        except RecordNotFound:
            fault = VerifyFault(
                "split-view", f"the ledger no longer holds the entry we last verified "
                f"(index {start.count - 1}, summaryhash {b64u_encode(start.summaryhash or b'')}"
                "): its history was rewritten")
            raise fault from None
        if head is not None and verifier.anchors and not verifier.anchors_seen:
            raise VerifyFault("split-view", "the ledger's answers end before its own signed "
                              f"head (summaryhash {head.summaryhash}): the walk was truncated")
        if head is None and start.count:
            raise VerifyFault("split-view", "the ledger says its chain is empty, but we "
                              f"verified {start.count} entries of it")
        if tree is not None:
            tree.finish(report)
        return verifier


async def _ask_mirror(mirror: Mirror, summary: str, currhash: str,
                      session: aiohttp.ClientSession, request_timeout: float
                      ) -> tuple[MirrorReport, dict[str, Any] | None]:
    try:
        async with ChronicleClient(mirror.url, b64u_decode(mirror.public_key, 32),
                                   session=session, timeout=request_timeout) as client:
            doc, parsed = await client.signed("/lookup/" + quote(summary, safe=""))
            rows = parsed.get("results")
            if not isinstance(rows, list):
                return MirrorReport(mirror.url, "error", "lookup answer has no results"), None
            for row in rows:
                verify_row(row, keys=ROW_KEYS)
                if row.get("summaryhash") != summary:
                    continue
                if row.get("currhash") == currhash:
                    return MirrorReport(mirror.url, "agree"), None
                evidence = {"url": doc.url, "signature": doc.signature,
                            "body": doc.read().decode("utf-8", "replace")}
                return MirrorReport(mirror.url, "split",
                                    f"currhash {row.get('currhash')} for our head, ours is "
                                    f"{currhash}"), evidence
            return MirrorReport(mirror.url, "error", "lookup did not return our head"), None
    except RecordNotFound:
        return MirrorReport(mirror.url, "behind", "does not have our head yet"), None
    except ChronicleError as exc:
        return MirrorReport(mirror.url, "error", exc.diagnostics()), None
    except Exception as exc:
        # A mirror is a third party: whatever its answer breaks, it counts as an error
        # against the quorum, as a refusal would, instead of ending every sync.
        return MirrorReport(mirror.url, "error", f"{type(exc).__name__}: {exc}"), None


async def _quorum(state_dir: StateDir, config: Config, report: SyncReport,
                  session: aiohttp.ClientSession, summary_raw: bytes, currhash_raw: bytes,
                  *, wait: float, request_timeout: float,
                  clock: Callable[[], datetime]) -> None:
    if not config.mirrors:
        return
    summary, currhash = b64u_encode(summary_raw), b64u_encode(currhash_raw)
    deadline = time.monotonic() + wait
    answers: dict[str, tuple[MirrorReport, dict[str, Any] | None]] = {}
    todo = list(config.mirrors)
    while True:
        results = await asyncio.gather(*(
            _ask_mirror(m, summary, currhash, session, request_timeout)
                                         for m in todo))
        for mirror, result in zip(todo, results, strict=True):
            answers[mirror.url] = result
        todo = [m for m in config.mirrors if answers[m.url][0].status in ("behind", "error")]
        if not todo or time.monotonic() >= deadline or any(
                a[0].status == "split" for a in answers.values()):
            break
        await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    report.mirrors = [answers[m.url][0] for m in config.mirrors]
    for m in report.mirrors:
        if m.status in ("behind", "error"):
            report.warn(f"mirror {m.url}: {m.status}: {m.detail}")
    split = [m for m in report.mirrors if m.status == "split"]
    if split:
        stamp = atom(clock()).replace(":", "")
        path = state_dir.write_evidence(f"split-view-{stamp}.json", {
            "head": report.head, "ledger": config.url,
            "mirrors": [{"url": m.url, "detail": m.detail, "answer": answers[m.url][1]}
                        for m in split]})
        fault = VerifyFault("split-view", f"split view: mirror {split[0].url} answers "
                            f"{split[0].detail}; evidence in {path}",
                            evidence=str(path), mirrors=[m.as_dict() for m in report.mirrors])
        raise fault
    agreed = sum(1 for m in report.mirrors if m.status == "agree")
    if agreed < config.quorum:
        raise VerifyFault("quorum", f"only {agreed} of {len(config.mirrors)} mirrors confirm "
                          f"our head (quorum {config.quorum}); nothing was saved",
                          mirrors=[m.as_dict() for m in report.mirrors])


def _halt(state_dir: StateDir, config: Config, fault: VerifyFault, report: SyncReport,
          clock: Callable[[], datetime]) -> None:
    """Keep the evidence of a split view and record it in the saved state (nothing fetched
    now is saved): every check refuses until a sync passes again."""
    evidence = fault.details.get("evidence")
    if evidence is None:
        stamp = atom(clock()).replace(":", "")
        evidence = str(state_dir.write_evidence(f"split-view-{stamp}.json", {
            "ledger": config.url, "head": report.head, "message": fault.message,
            "checkpoint-held": state_dir.load_sync(config.server_key).checkpoint,
            "checkpoint-now": fault.details.get("checkpoint_now")}))
        fault.details["evidence"] = evidence
    saved = state_dir.load_sync(config.server_key)
    saved.halt = {"kind": fault.kind, "message": fault.message, "evidence": evidence}
    state_dir.save_sync(saved, config.server_key)
