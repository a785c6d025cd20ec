"""Audit drivers: the I/O around the engine (an export file, a live server, peers, state).

``audit_export`` reads a file in 1 MiB chunks; each chunk feeds the streaming document
signature check and the incremental JSON parser, whose rows feed the engine. Memory stays
flat whatever the size of the file. ``audit_server`` does the same with HTTP bodies: a
fresh signed ``lasthash`` first (the head the chain must reach), then ``/export`` (or,
resuming from a state file, the remembered head's lookup and ``/since``), following pages.

A fault found mid-document is reported only after the rest of the document went through
its signature check: if the document itself is forged, that is the diagnosis.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import aiohttp

from chronicle.audit.engine import AuditReport, ChainAuditor, TreeCheck
from chronicle.audit.progress import Progress
from chronicle.client.errors import RecordNotFound, ServerRefused, refusal
from chronicle.client.http import ChronicleClient, Head, api_base
from chronicle.client.peers import announced_key, ask_peer
from chronicle.client.reorder import RowBuffer
from chronicle.client.sigpool import InOrder, SignaturePool
from chronicle.client.tlog import TreeClient, open_checkpoint_with
from chronicle.core import agreement
from chronicle.core.agreement import PeerReport, PeerStatus, split_view
from chronicle.core.document import DocumentParser
from chronicle.core.encoding import atom, b64u_decode, b64u_encode, decode_b64_field, utcnow
from chronicle.core.errors import ChronicleError, RequestError
from chronicle.core.merkle import TreeState
from chronicle.core.note import Ed25519Verifier
from chronicle.core.verify import (
    ROW_KEYS,
    AnchorError,
    BrokenLinkError,
    ChainFault,
    ChainState,
    DocumentSignatureError,
    HistoryRewrittenError,
    MalformedError,
    StreamingVerifier,
)

CHUNK = 1 << 20
STATE_FORMAT = "chronicle-audit-state/1"


class UsageProblem(RequestError):
    """The invocation cannot work (e.g. a state file made for another server key)."""


@dataclass(frozen=True)
class PeerSpec:
    """``URL[#PUBLICKEY]``: a peer Chronicle or a replica's ``…/chronicle/replica/{id}``."""

    url: str
    key: bytes | None

    @classmethod
    def parse(cls, text: str) -> PeerSpec:
        url, _, key_text = text.partition("#")
        key = None
        if key_text:
            key = decode_b64_field(key_text.strip(), 32)
            if key is None:
                raise UsageProblem(f"peer {text!r}: the key after '#' is not a public key")
        api_base(url)  # validates the URL
        return cls(url, key)


@dataclass
class AuditOptions:
    server_key: bytes
    anchor: bytes | None = None
    state_file: Path | None = None
    instance: str = ""
    workers: int | None = None
    mode: str = "auto"
    freshness: float | None = 600.0
    timeout: float = 30.0
    peers: list[PeerSpec] = field(default_factory=list)
    quorum: int | None = None
    progress: Progress | None = None
    tlog: Ed25519Verifier | None = None
    """``--tlog VKEY``: hold the audited chain against a checkpoint signed by this key."""
    checkpoint: bytes | None = None
    """``--checkpoint FILE``: that signed checkpoint (a server's: fetched when not given)."""


# --- state files ----------------------------------------------------------------------------

def load_state(path: Path | None, server_key: bytes, instance: str) -> ChainState | None:
    """The remembered position, or None when there is no state file yet."""
    if path is None or not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise UsageProblem(f"{path}: not an audit state file (invalid JSON)") from None
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise UsageProblem(f"{path}: not an audit state file ({STATE_FORMAT})")
    if data.get("server-key") != b64u_encode(server_key):
        raise UsageProblem(f"{path}: the state belongs to server key {data.get('server-key')}, "
                           "not the pinned one")
    if data.get("instance", "") != instance:
        raise UsageProblem(f"{path}: the state belongs to instance {data.get('instance')!r}")
    try:
        state = ChainState.from_dict(data.get("chain"))
    except ChainFault as exc:
        raise UsageProblem(f"{path}: {exc.message}") from None
    if state.count and state.hashstate is None:
        raise UsageProblem(f"{path}: the state has no hash state")
    return state


def load_tree_state(path: Path | None, state: ChainState | None) -> TreeState | None:
    """The Merkle tree over the entries a state file remembers (kept by ``--tlog``)."""
    if path is None or state is None or not state.count:
        return None
    text = json.loads(path.read_text()).get("tree")
    try:
        tree = TreeState.from_bytes(b64u_decode(text), size=state.count) \
            if isinstance(text, str) else None
    except ChronicleError:
        tree = None
    if tree is None:
        raise UsageProblem(f"{path}: the state has no Merkle tree of its entries (run the "
                           "audit with --tlog once without this state file)")
    return tree


def save_state(path: Path, state: ChainState, server_key: bytes, instance: str,
               source: str, tree: TreeState | None = None) -> None:
    """Write atomically (temp file + rename): a crash never leaves half a state."""
    data: dict[str, Any] = {"format": STATE_FORMAT, "server-key": b64u_encode(server_key),
                            "instance": instance, "source": source,
                            "audited-at": atom(utcnow()), "chain": state.as_dict()}
    if tree is not None:
        data["tree"] = b64u_encode(tree.to_bytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- export files ---------------------------------------------------------------------------

def read_signature(value: str) -> bytes:
    """``--signature``: the base64url signature itself, or a file holding it (or raw)."""
    text = value.strip()
    sig = decode_b64_field(text, 64)
    if sig is not None:
        return sig
    path = Path(value)
    if path.is_file():
        raw = path.read_bytes()
        sig = decode_b64_field(raw.strip().decode("ascii", "replace"), 64)
        if sig is not None:
            return sig
        if len(raw) == 64:
            return raw
        raise UsageProblem(f"{path}: not a detached Ed25519 signature")
    raise UsageProblem("--signature: not a base64url Ed25519 signature nor a readable file")


def _check_document(header: dict[str, Any], results_is_list: bool, count_in_doc: int,
                    status: int = 200) -> None:
    state = header.get("status")
    if state == "ERROR":
        raise refusal(status, str(header.get("message", "error document")), {})
    if state != "OK":
        raise MalformedError("the document has no status OK", field="status",
                             expected="OK", found=repr(state))
    if not results_is_list:
        raise MalformedError("the document has no results list", field="results")
    total = header.get("total")
    if total is not None:
        if not isinstance(total, int) or isinstance(total, bool):
            raise MalformedError("the document's total is not an integer", field="total",
                                 found=repr(total))
        if total != count_in_doc:
            raise AnchorError(f"the document says total {total} but carries {count_in_doc} "
                              "entries", index=count_in_doc, field="total",
                              expected=str(total), found=str(count_in_doc))


def _check_end_anchor(auditor: ChainAuditor, anchor: bytes) -> dict[str, Any]:
    """With a file, the chain must *end* at the anchor (a summaryhash from a signed head)."""
    text = b64u_encode(anchor)
    v = auditor.verifier
    last = v.last_summaryhash
    if last == anchor:
        return {"summaryhash": text, "index": v.count - 1, "status": "end"}
    seen = v.anchors_seen.get(text)
    if seen is not None:
        raise AnchorError(f"the chain continues past the anchor (found at entry {seen[0]})",
                          index=seen[0] + 1, field="summary", expected=text,
                          found=b64u_encode(last or b""))
    raise AnchorError("the chain ends before the anchor: truncated (or another chain)",
                      index=v.count, field="summary", expected=text,
                      found="empty chain" if last is None else b64u_encode(last))


def audit_export(path: Path, signature: bytes | None, options: AuditOptions) -> AuditReport:
    """Verify an export document file end to end (see the module docstring)."""
    started = time.monotonic()
    remembered = load_state(options.state_file, options.server_key, options.instance)
    size = path.stat().st_size
    doc_sig = StreamingVerifier(options.server_key, signature) if signature else None
    parser = DocumentParser()
    progress = options.progress
    anchors = [options.anchor] if options.anchor else []
    tree = _tree_check(options, None)
    with SignaturePool(workers=options.workers, mode=options.mode) as pool, \
            path.open("rb") as fh:
        pool.expect_bytes(size)
        auditor = ChainAuditor(InOrder(pool), remembered=remembered, anchors=anchors,
                               track_hashstate=options.state_file is not None, tree=tree)

        def drain_then(fault: ChronicleError) -> None:
            if doc_sig is not None:
                _drain(fh, doc_sig)
                if not doc_sig.verify():
                    raise _bad_document(path) from fault

        try:
            while chunk := fh.read(CHUNK):
                if doc_sig is not None:
                    doc_sig.update(chunk)
                rows = parser.feed(chunk)
                if rows:
                    auditor.feed(rows)
                if progress is not None:
                    progress.update(auditor.count, parser.bytes_seen / size if size else None)
            auditor.feed(parser.close())
            auditor.finish()
        except ChainFault as fault:
            drain_then(fault)
            raise
        if doc_sig is not None and not doc_sig.verify():
            raise _bad_document(path)
        _check_document(parser.header, parser.results_is_list, auditor.count)
        report = AuditReport(source=str(path))
        if options.anchor is not None:
            report.anchors.append(_check_end_anchor(auditor, options.anchor))
        _fill_report(report, auditor, remembered, started)
    return report


def _tree_check(options: AuditOptions, resumed: TreeState | None,
                served: bytes | None = None) -> TreeCheck | None:
    """``--tlog``: the check of the audited chain against the signed checkpoint (given
    with ``--checkpoint``, else ``served`` by the audited server)."""
    if options.tlog is None:
        return None
    note = options.checkpoint if options.checkpoint is not None else served
    if note is None:
        raise UsageProblem("--tlog with --export needs the signed checkpoint "
                           "(--checkpoint FILE)")
    signed = open_checkpoint_with(note, options.tlog)
    if resumed is not None and resumed.size > signed.checkpoint.size:
        raise UsageProblem(f"the checkpoint's tree (size {signed.checkpoint.size}) is older "
                           f"than the state file's ({resumed.size} entries): use a newer "
                           "checkpoint, or no state file")
    return TreeCheck(signed.checkpoint, resumed)


def _drain(fh: BinaryIO, verifier: StreamingVerifier) -> None:
    while chunk := fh.read(CHUNK):
        verifier.update(chunk)


def _bad_document(path: Path) -> DocumentSignatureError:
    return DocumentSignatureError(f"the signature of {path.name} does not verify with the "
                                  "pinned server key", field="signature")


def _fill_report(report: AuditReport, auditor: ChainAuditor, remembered: ChainState | None,
                 started: float) -> None:
    if auditor.tree is not None:
        report.tlog = auditor.tree.finish()
        report.tree = auditor.tree.state
    report.entries = auditor.count
    report.verified = auditor.verified
    report.resumed_from = remembered.count if remembered else None
    report.first_currhash = auditor.first_currhash
    report.last = auditor.last()
    report.state = auditor.verifier.state()
    report.seconds = time.monotonic() - started


# --- live servers -----------------------------------------------------------------------------

async def audit_server(url: str, options: AuditOptions) -> AuditReport:
    """Verify a live chain against a fresh signed head (see the module docstring)."""
    started = time.monotonic()
    remembered = load_state(options.state_file, options.server_key, options.instance)
    report = AuditReport(source=api_base(url) + (f"?instance={options.instance}"
                                                 if options.instance else ""))
    progress = options.progress
    async with ChronicleClient(url, options.server_key, instance=options.instance,
                               freshness=options.freshness, timeout=options.timeout) as client:
        tree = None
        if options.tlog is not None:
            # Before the head: the chain then reaches at least the checkpoint's size.
            served = None if options.checkpoint is not None else \
                (await TreeClient(client, options.tlog).checkpoint()).to_bytes()
            resumed = load_tree_state(options.state_file, remembered)
            tree = _tree_check(options, resumed, served)
        head = await client.head()
        anchors: dict[str, str | None] = {}
        if head is not None:
            anchors[head.summaryhash] = head.currhash
        if options.anchor is not None:
            anchors.setdefault(b64u_encode(options.anchor), None)
        start: ChainState | None = None
        if remembered is not None and remembered.count:
            await _check_still_on_chain(client, remembered)
            start = remembered
        with SignaturePool(workers=options.workers, mode=options.mode) as pool:
            auditor = ChainAuditor(InOrder(pool), start=start, anchors=[_raw(a) for a in anchors],
                                   keys=ROW_KEYS if start else None,
                                   track_hashstate=options.state_file is not None, tree=tree)
            seen = auditor.verifier.anchors_seen
            if start is not None and start.summaryhash and start.currhash:
                text = b64u_encode(start.summaryhash)
                if text in anchors:
                    seen[text] = (start.count - 1, b64u_encode(start.currhash))
            if start is None:
                await _walk(client, "/export", auditor, fresh=None, progress=progress)
            # Catch up to the signed head with `since` (a resumed audit starts here; after an
            # export, a cached or slow export may end before the head we were shown).
            for _ in range(2):
                if all(a in seen for a in anchors) or auditor.count == 0:
                    break
                last = auditor.verifier.last_summaryhash
                assert last is not None
                auditor.verifier.expect_keys(ROW_KEYS)
                try:
                    await _walk_since(client, last, auditor, progress=progress)
                except ServerRefused:
                    break  # no continuation offered: reported below as truncated

            auditor.finish()
        for summary, currhash in anchors.items():
            where = seen.get(summary)
            if where is None:
                raise AnchorError("the chain ends before the signed head: truncated",
                                  index=auditor.count, field="summaryhash", expected=summary,
                                  found=_last_text(auditor))
            if currhash is not None and where[1] != currhash:
                raise AnchorError("the signed head's currhash differs from the chain's",
                                  index=where[0], field="currhash", expected=currhash,
                                  found=where[1])
            report.anchors.append({"summaryhash": summary, "index": where[0],
                                   "status": "on-chain"})
        _fill_report(report, auditor, remembered, started)
        audited = head or (Head(report.last["currhash"], report.last["summaryhash"])
                           if report.last else None)
    if options.peers and audited is not None:
        report.peers = await check_peers(audited, options)
    return report


def _raw(text: str) -> bytes:
    return b64u_decode(text, 32)


def _last_text(auditor: ChainAuditor) -> str:
    last = auditor.verifier.last_summaryhash
    return "empty chain" if last is None else b64u_encode(last)


async def _check_still_on_chain(client: ChronicleClient, remembered: ChainState) -> None:
    assert remembered.summaryhash is not None
    assert remembered.currhash is not None
    summary = b64u_encode(remembered.summaryhash)
    current = b64u_encode(remembered.currhash)
    index = remembered.count - 1
    try:
        entries = [e async for e in client.lookup(summary)]
    except RecordNotFound:
        raise HistoryRewrittenError("the head verified by the previous audit is no longer on "
                                    "the chain: history was rewritten", index=index,
                                    field="summaryhash", expected=summary,
                                    found="no such entry") from None
    for entry in entries:
        if entry.summaryhash == summary:
            if entry.currhash != current:
                raise HistoryRewrittenError("the entry verified by the previous audit has "
                                            "changed: history was rewritten", index=index,
                                            field="currhash", expected=current,
                                            found=entry.currhash)
            return
    raise HistoryRewrittenError("the head verified by the previous audit is no longer on the "
                                "chain", index=index, field="summaryhash", expected=summary,
                                found=", ".join(e.summaryhash for e in entries))


async def _walk(client: ChronicleClient, path: str, auditor: ChainAuditor, *,
                fresh: bool | None, progress: Progress | None = None) -> None:
    base = auditor.count
    async with aclosing(client.documents(path, fresh=fresh)) as docs:
        async for doc in docs:
            try:
                async for rows in doc.rows():
                    auditor.feed(rows)
                    if progress is not None:
                        # `total` (unpaginated export, any since) comes before the rows.
                        total = doc.header_so_far.get("total")
                        fraction = ((auditor.count - base) / total
                                    if isinstance(total, int) and total > 0 else None)
                        progress.update(auditor.count, fraction)
            except ChainFault:
                await doc.drain()
                raise


async def _walk_since(client: ChronicleClient, last: bytes, auditor: ChainAuditor, *,
                      progress: Progress | None = None) -> None:
    """``since`` our last verified entry, every page, fed to the auditor in chain order.

    The rows go through a :class:`RowBuffer` on disk first: a PHP replica lists them in
    summary-hash order, not chain order (protocol.md). Each page's signature is checked as
    it is read; rows that do not continue the chain are a broken link.
    """
    head = b64u_encode(auditor.verifier.last_currhash or b"")
    with tempfile.TemporaryDirectory(prefix="chronicle-audit-") as spool, \
            RowBuffer(Path(spool)) as buffer:
        path = "/since/" + quote(b64u_encode(last), safe="")
        async with aclosing(client.documents(path, fresh=True)) as docs:
            async for doc in docs:
                try:
                    async for rows in doc.rows():
                        buffer.add(rows)
                except ChainFault:
                    await doc.drain()
                    raise
        for rows in buffer.chain_from(head):
            auditor.feed(rows)
            if progress is not None:
                progress.update(auditor.count, None)
        left = buffer.left()
        if left:
            raise BrokenLinkError(f"{len(left)} row(s) of the since answer do not continue "
                                  "the chain in any order", index=auditor.count,
                                  field="prevhash",
                                  expected=b64u_encode(auditor.verifier.last_currhash or b""),
                                  found=left[0])


# --- split view ---------------------------------------------------------------------------------

async def _ask(spec: PeerSpec, head: Head, options: AuditOptions) -> PeerReport:
    """One peer's verdict on the audited head (its key pinned, or the one it announces)."""
    pinned = spec.key is not None
    try:
        async with aiohttp.ClientSession() as session:
            def client_for(url: str, key: bytes) -> ChronicleClient:
                return ChronicleClient(url, key, freshness=options.freshness,
                                       timeout=options.timeout, session=session)

            key = spec.key or await announced_key(client_for, spec.url)
            async with client_for(spec.url, key) as peer:
                answer = await ask_peer(peer, agreement.Head(head.currhash, head.summaryhash))
    except ChronicleError as exc:
        return PeerReport(spec.url, PeerStatus.ERROR, pinned=pinned, error=exc.diagnostics())
    answer.discard()
    return replace(answer.report, url=spec.url, pinned=pinned, public_key=b64u_encode(key))


async def check_peers(head: Head, options: AuditOptions,
                      ask: Callable[..., Any] = _ask) -> list[dict[str, Any]]:
    """Ask every peer for the audited head; raise :class:`SplitViewError` on a
    disagreement, or when fewer than ``quorum`` peers confirm the same currhash."""
    reports: list[PeerReport] = list(await asyncio.gather(
        *(ask(spec, head, options) for spec in options.peers)))
    verdict = split_view(agreement.Head(head.currhash, head.summaryhash), reports,
                         quorum=options.quorum)
    if verdict is not None:
        raise verdict
    return [r.as_dict() for r in reports]
