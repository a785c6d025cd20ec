"""`chronicle audit`, called through the CLI's ``main`` in-process.

Export files: every recorded PHP export is accepted; crafted damaged copies (re-signed with
server A's recorded key, so the document signature holds and the entry-level check must
find the damage) are refused with the right exit code, entry index and field. Live audits:
a server of ours on loopback (incremental audits, pagination, a rewritten history, split
views against peers) and recorded PHP answers replayed on loopback.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from chronicle.cli import main
from chronicle.core.blakechain import ChainBuilder
from chronicle.core.encoding import b64u_decode, b64u_encode, php_json, utcnow
from chronicle.core.sapient import SigningKey
from tests.helpers import (
    VECTORS,
    RunningServer,
    free_port,
    init_data_dir,
    load_vector,
    start_server,
)
from tests.integration.test_client import (
    KEYS,
    REPLICA,
    SECRET_A,
    RecordedChronicle,
)

INDEX = load_vector("exports/index.json")
PK_A = KEYS["servers"]["A"]["publickey"]
PK_B = KEYS["servers"]["B"]["publickey"]
A_EXPORT = VECTORS / "exports" / "A-final-export.body.json"
A_ANCHOR = json.loads((VECTORS / "exports" / "A-final-lasthash.body.json").read_text()
                      )["results"][0]["summaryhash"]
CLIENT_KEYS = {c["publickey"]: SigningKey.from_text(c["secretkey"])
               for c in KEYS["clients"].values()}


@pytest.fixture
def backend() -> str:
    """Storage-agnostic: SQLite only (overrides the suite's backend parametrisation)."""
    return "sqlite"


class Outcome:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code = code
        self.stdout = stdout
        self.stderr = stderr

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.stdout)
        return parsed

    def __repr__(self) -> str:
        return f"exit {self.code}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def cli(*args: str) -> Outcome:
    result = CliRunner().invoke(main, ["audit", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr)


async def acli(*args: str) -> Outcome:
    """The CLI runs its own event loop: call it from a thread while our servers run here."""
    return await asyncio.to_thread(cli, *args)


def audit_file(path: Path, *extra: str, key: str = PK_A) -> Outcome:
    return cli("--export", str(path), "--server-key", key, "--json", *extra)


def signed_document(tmp_path: Path, doc: dict[str, Any] | str, name: str = "doc.json",
                    key: SigningKey = SECRET_A) -> tuple[Path, str]:
    body = (doc if isinstance(doc, str) else php_json(doc)).encode()
    path = tmp_path / name
    path.write_bytes(body)
    return path, key.sign_b64(body)


# --- recorded exports -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["A-final-export", "B-final-export", "B-final-replica-export"])
def test_recorded_exports_are_accepted(name: str) -> None:
    item = INDEX[name]
    out = audit_file(VECTORS / "exports" / item["file"], "--signature",
                     item["body_signature_ed25519"], key=item["server_publickey"])
    assert out.code == 0, out
    rows = json.loads((VECTORS / "exports" / item["file"]).read_text())["results"]
    assert out.json["entries"] == len(rows) == out.json["verified"]
    assert out.json["last"]["summaryhash"] == rows[-1]["summary"]


def test_anchor_from_a_signed_lasthash(tmp_path: Path) -> None:
    sig = INDEX["A-final-export"]["body_signature_ed25519"]
    out = audit_file(A_EXPORT, "--signature", sig, "--anchor", A_ANCHOR)
    assert out.code == 0, out
    assert out.json["anchors"] == [{"summaryhash": A_ANCHOR, "index": 28, "status": "end"}]
    # The detached signature as a file (base64url text, or 64 raw bytes) works too.
    (tmp_path / "sig.txt").write_text(sig + "\n")
    (tmp_path / "sig.bin").write_bytes(b64u_decode(sig, 64))
    assert audit_file(A_EXPORT, "--signature-file", str(tmp_path / "sig.txt")).code == 0
    assert audit_file(A_EXPORT, "--signature", str(tmp_path / "sig.bin")).code == 0
    # An anchor alone (no document signature) also proves the whole chain.
    assert audit_file(A_EXPORT, "--anchor", A_ANCHOR).code == 0


def test_text_output() -> None:
    out = cli("--export", str(A_EXPORT), "--server-key", PK_A, "--signature",
              INDEX["A-final-export"]["body_signature_ed25519"])
    assert out.code == 0, out
    assert out.stdout.startswith("OK: 29 entries verified")
    assert "entry 28" in out.stdout
    assert out.stderr == ""  # no progress bar when not on a terminal


def a_doc() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(A_EXPORT.read_text())
    return loaded


def _drop(doc: dict[str, Any], *positions: int, fix_total: bool = True) -> None:
    for pos in sorted(positions, reverse=True):
        doc["results"].pop(pos)
    if fix_total:
        doc["total"] = len(doc["results"])


Mutation = Callable[[dict[str, Any]], None]
DAMAGES: dict[str, tuple[Mutation, tuple[str, ...], int, int, str]] = {
    "changed byte in a body": (
        lambda d: d["results"][5].update(contents=d["results"][5]["contents"][:-1] + "X"),
        (), 11, 5, "signature"),
    "forged signature": (
        lambda d: d["results"][9].update(signature=SigningKey.generate().sign_b64(
            d["results"][9]["contents"].encode())), (), 11, 9, "signature"),
    "swapped entries": (
        lambda d: d["results"].__setitem__(slice(7, 9), d["results"][8:6:-1]),
        (), 12, 7, "prev"),
    "removed entry": (lambda d: _drop(d, 10), (), 12, 10, "prev"),
    "altered summary": (
        lambda d: d["results"][12].update(summary=d["results"][13]["summary"]),
        (), 13, 12, "summary"),
    "altered hash": (
        lambda d: d["results"][3].update(hash=d["results"][2]["hash"]), (), 13, 3, "hash"),
    "truncated head": (lambda d: _drop(d, 0, 1), (), 12, 0, "prev"),
    "truncated tail vs anchor": (lambda d: _drop(d, 26, 27, 28), ("--anchor", A_ANCHOR),
                                 14, 26, "summary"),
    "truncated tail vs total": (lambda d: _drop(d, 27, 28, fix_total=False), (),
                                14, 27, "total"),
    "wrong total": (lambda d: d.update(total=30), (), 14, 29, "total"),
    "empty prev in the middle": (lambda d: d["results"][4].update(prev=""), (), 12, 4, "prev"),
    "anchor in the middle": (lambda d: None, ("--anchor", "PLACEHOLDER-20"), 14, 21,
                             "summary"),
    "error document": (lambda d: d.update(status="ERROR", message="nope"), (), 1, -1, ""),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_exports_are_refused(tmp_path: Path, damage: str) -> None:
    mutate, extra, code, index, field = DAMAGES[damage]
    doc = a_doc()
    mutate(doc)
    path, sig = signed_document(tmp_path, doc)
    extra = tuple(doc["results"][20]["summary"] if a == "PLACEHOLDER-20" else a for a in extra)
    out = audit_file(path, "--signature", sig, *extra)
    assert out.code == code, out
    assert out.stderr.startswith("error: ")
    report = out.json
    assert report["ok"] is False and report["exit-code"] == code
    if index >= 0:
        assert (report["index"], report["field"]) == (index, field), report
        assert f"at entry {index}" in out.stderr


def test_unsigned_damage_is_a_document_signature_fault(tmp_path: Path) -> None:
    sig = INDEX["A-final-export"]["body_signature_ed25519"]
    body = A_EXPORT.read_bytes().replace(b"late entry 3", b"late entry 4")
    (tmp_path / "x.json").write_bytes(body)
    out = audit_file(tmp_path / "x.json", "--signature", sig)
    # The entry fault (signature of entry 28) is found first, but the document is forged:
    # that is the diagnosis.
    assert (out.code, out.json["fault"]) == (10, "document-signature"), out
    assert audit_file(A_EXPORT, "--signature", sig, key=PK_B).code == 10


def test_malformed_document(tmp_path: Path) -> None:
    text = A_EXPORT.read_text()
    path, sig = signed_document(tmp_path, text[: len(text) // 2])
    out = audit_file(path, "--signature", sig)
    assert (out.code, out.json["fault"]) == (15, "malformed"), out


def test_usage_and_io_errors(tmp_path: Path) -> None:
    assert cli("--server-key", PK_A).code == 2
    assert cli("http://127.0.0.1:1", "--export", str(A_EXPORT), "--server-key", PK_A).code == 2
    assert audit_file(A_EXPORT).code == 2  # neither a signature nor an anchor
    assert audit_file(A_EXPORT, "--anchor", "nope").code == 2
    assert cli("--export", str(A_EXPORT), "--server-key", "short", "--anchor", A_ANCHOR
               ).code == 2
    missing = audit_file(tmp_path / "missing.json", "--anchor", A_ANCHOR)
    assert (missing.code, missing.json["fault"]) == (3, "transport"), missing
    unreachable = cli(f"http://127.0.0.1:{free_port()}", "--server-key", PK_A, "--json",
                      "--timeout", "2")
    assert unreachable.code == 3, unreachable


def test_help_documents_exit_codes() -> None:
    out = CliRunner().invoke(main, ["audit", "--help"])
    assert out.exit_code == 0
    for code in ("10", "11", "12", "13", "14", "15", "16", "17"):
        assert f"  {code}  " in out.stdout


# --- incremental audits of export files -------------------------------------------------------

def rebuilt(rows: list[dict[str, Any]], change_at: int | None = None) -> dict[str, Any]:
    """A consistent chain from ``rows`` (entry ``change_at`` rewritten and re-signed by its
    publisher, every hash recomputed): what a server rewriting history would serve."""
    builder = ChainBuilder(None)
    out = []
    for pos, row in enumerate(rows):
        contents = row["contents"].encode()
        signature = b64u_decode(row["signature"], 64)
        if pos == change_at:
            contents += b" (rewritten)"
            signature = CLIENT_KEYS[row["publickey"]].sign(contents)
        entry = builder.append(contents, b64u_decode(row["publickey"], 32), signature,
                               row["created"])
        out.append({"contents": contents.decode(),
                    "prev": None if entry.prevhash is None else b64u_encode(entry.prevhash),
                    "hash": b64u_encode(entry.currhash),
                    "summary": b64u_encode(entry.summaryhash), "created": entry.created,
                    "publickey": row["publickey"], "signature": b64u_encode(signature)})
    return {"version": "1.3.x", "datetime": "2026-11-28T05:00:00+00:00", "status": "OK",
            "total": len(out), "results": out}


def test_incremental_export_audits(tmp_path: Path) -> None:
    state = tmp_path / "audit.state"
    rows = a_doc()["results"]
    first, sig1 = signed_document(tmp_path, rebuilt(rows[:20]), "first.json")
    out = audit_file(first, "--signature", sig1, "--state", str(state))
    assert (out.code, out.json["entries"], out.json["verified"]) == (0, 20, 20), out
    saved = json.loads(state.read_text())
    assert saved["chain"]["count"] == 20 and saved["server-key"] == PK_A

    sig = INDEX["A-final-export"]["body_signature_ed25519"]
    out = audit_file(A_EXPORT, "--signature", sig, "--state", str(state))
    assert out.code == 0, out
    assert (out.json["entries"], out.json["verified"], out.json["resumed-from"]) == (29, 9, 20)
    assert json.loads(state.read_text())["chain"]["count"] == 29

    rewritten, sig2 = signed_document(tmp_path, rebuilt(rows, change_at=10), "rewritten.json")
    out = audit_file(rewritten, "--signature", sig2, "--state", str(state))
    assert (out.code, out.json["fault"], out.json["index"]) == (16, "history-rewritten", 28)
    shorter, sig3 = signed_document(tmp_path, rebuilt(rows[:25]), "shorter.json")
    out = audit_file(shorter, "--signature", sig3, "--state", str(state))
    assert (out.code, out.json["fault"]) == (16, "history-rewritten"), out
    assert json.loads(state.read_text())["chain"]["count"] == 29  # failures keep the state

    other_key = audit_file(A_EXPORT, "--anchor", A_ANCHOR, "--state", str(state), key=PK_B)
    assert other_key.code == 2, other_key


# --- live servers of ours -----------------------------------------------------------------------

async def publish_many(srv: RunningServer, count: int, prefix: str = "entry") -> None:
    for i in range(count):
        res = await srv.publish("alice", f"{prefix} {i}")
        assert res.status == 200, res.body


async def test_live_audit_then_incremental(server: RunningServer, tmp_path: Path) -> None:
    state = str(tmp_path / "live.state")
    pk = server.key.public_b64
    await publish_many(server, 12)
    out = await acli(server.url, "--server-key", pk, "--state", state, "--json")
    assert out.code == 0, out
    assert (out.json["entries"], out.json["verified"]) == (12, 12)
    assert out.json["anchors"][0]["index"] == 11

    await publish_many(server, 5, "more")
    out = await acli(server.url, "--server-key", pk, "--state", state, "--json")
    assert out.code == 0, out
    report = out.json
    assert (report["entries"], report["verified"], report["resumed-from"]) == (17, 5, 12)

    out = await acli(server.url, "--server-key", pk, "--state", state, "--json")
    assert (out.code, out.json["entries"], out.json["verified"]) == (0, 17, 0), out

    wrong = await acli(server.url, "--server-key", SigningKey.generate().public_b64, "--json")
    assert (wrong.code, wrong.json["fault"]) == (10, "document-signature"), wrong


async def test_live_paginated_audit(tmp_path: Path) -> None:
    srv = await start_server(await init_data_dir(tmp_path / "paged", paginate_export=4))
    try:
        await srv.add_client("alice")
        await publish_many(srv, 10)
        state = str(tmp_path / "paged.state")
        out = await acli(srv.url, "--server-key", srv.key.public_b64, "--state", state,
                         "--json")
        assert (out.code, out.json["entries"]) == (0, 10), out
        await publish_many(srv, 9, "later")  # the since answer is paginated too
        out = await acli(srv.url, "--server-key", srv.key.public_b64, "--state", state,
                         "--json")
        assert (out.code, out.json["entries"], out.json["verified"]) == (0, 19, 9), out
    finally:
        await srv.close()


async def test_live_large_export_streams(server: RunningServer) -> None:
    """More rows than the server renders in memory: its spooled, streamed export."""
    alice = server.identities["alice"]
    ledger = server.ctx.ledger("")
    bodies = [b"bulk %d" % i for i in range(1100)]
    await asyncio.gather(*(ledger.append(b, alice.key.public, alice.key.sign(b),
                                         client_id=alice.client_id) for b in bodies))
    out = await acli(server.url, "--server-key", server.key.public_b64, "--json",
                     "--workers", "2")
    assert (out.code, out.json["entries"]) == (0, 1100), out


async def test_rewritten_history_is_caught(tmp_path: Path) -> None:
    key = SigningKey.generate()
    state = str(tmp_path / "h.state")
    srv = await start_server(await init_data_dir(tmp_path / "one", key))
    try:
        await srv.add_client("alice")
        await publish_many(srv, 6)
        out = await acli(srv.url, "--server-key", key.public_b64, "--state", state, "--json")
        assert out.code == 0, out
    finally:
        await srv.close()
    # Same server key, another history (e.g. the operator rebuilt the database).
    srv = await start_server(await init_data_dir(tmp_path / "two", key))
    try:
        await srv.add_client("alice")
        await publish_many(srv, 8, "other")
        out = await acli(srv.url, "--server-key", key.public_b64, "--state", state, "--json")
        assert (out.code, out.json["fault"], out.json["index"]) == (16, "history-rewritten", 5)
    finally:
        await srv.close()


# --- recorded PHP servers -------------------------------------------------------------------------

async def test_audit_recorded_php_server(tmp_path: Path) -> None:
    recorded = await RecordedChronicle().start()
    try:
        recorded.add(134)  # final lasthash
        recorded.add(133)  # final export
        out = await acli(recorded.url, "--server-key", PK_A, "--max-age", "0", "--json")
        assert out.code == 0, out
        assert (out.json["entries"], out.json["anchors"][0]["summaryhash"]) == (29, A_ANCHOR)
        assert recorded.requests == ["/chronicle/lasthash", "/chronicle/export"]
    finally:
        await recorded.close()


async def test_audit_recorded_php_replica_paginated() -> None:
    recorded = await RecordedChronicle().start()
    try:
        recorded.add(102)  # replica lasthash: {"curr-hash", "summary-hash"}
        for exchange in range(123, 131):  # replica export, pages of 5, first prev ""
            recorded.add(exchange)
        out = await acli(recorded.url + REPLICA, "--server-key", PK_B, "--max-age", "0",
                         "--json")
        assert out.code == 0, out
        assert out.json["entries"] == 29
    finally:
        await recorded.close()


async def test_lying_server_truncates_its_export(tmp_path: Path) -> None:
    """A server (A's key) shows a signed head but serves an export without its tail and
    no continuation: truncated vs the signed head."""
    recorded = await RecordedChronicle().start()
    try:
        doc = a_doc()
        _drop(doc, 27, 28)
        recorded.add(134)
        recorded.add(133, body=php_json(doc).encode(), sign_with=SECRET_A)
        # Asked to continue from its (truncated) end, it claims not to know it (signed 400).
        recorded.add(23, target="/chronicle/since/" + doc["results"][-1]["summary"])
        out = await acli(recorded.url, "--server-key", PK_A, "--max-age", "0", "--json")
        assert (out.code, out.json["fault"], out.json["index"]) == (14, "anchor", 27), out
    finally:
        await recorded.close()


# --- split view --------------------------------------------------------------------------------

def copy_database(src_dir: Path, dst_dir: Path) -> None:
    source = sqlite3.connect(src_dir / "chronicle.db")
    target = sqlite3.connect(dst_dir / "chronicle.db")
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


class LyingPeer:
    """A peer that answers the lookup of our head with a different (well-formed) entry."""

    def __init__(self, head_summary: str) -> None:
        self.key = SigningKey.generate()
        self.head_summary = head_summary
        self.runner: web.AppRunner | None = None
        self.url = ""

    def _signed(self, doc: dict[str, Any]) -> web.Response:
        body = php_json(doc).encode()
        return web.Response(body=body, content_type="application/json",
                            headers={"Body-Signature-Ed25519": self.key.sign_b64(body)})

    async def _index(self, _: web.Request) -> web.Response:
        return self._signed({"version": "1.3.x", "datetime": _now(), "status": "OK",
                             "results": [], "public-key": self.key.public_b64})

    async def _lookup(self, _: web.Request) -> web.Response:
        publisher = SigningKey.generate()
        entry = ChainBuilder(None).append(b"the other story", publisher.public,
                                          publisher.sign(b"the other story"), _now())
        row = {"contents": "the other story", "prevhash": None,
               "currhash": b64u_encode(entry.currhash), "summaryhash": self.head_summary,
               "created": entry.created, "publickey": publisher.public_b64,
               "signature": b64u_encode(entry.signature)}
        return self._signed({"version": "1.3.x", "datetime": _now(), "status": "OK",
                             "results": [row]})

    async def start(self) -> LyingPeer:
        app = web.Application()
        app.router.add_get("/chronicle", self._index)
        app.router.add_get("/chronicle/lookup/{hash}", self._lookup)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def twin_dir_of(srv: RunningServer) -> Path:
    return Path(srv.ctx.data_dir.path)


def _now() -> str:
    from chronicle.core.encoding import atom

    return atom(utcnow())


@pytest.fixture
async def peers(server: RunningServer, tmp_path: Path
                ) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    await publish_many(server, 4)
    twin_dir = await init_data_dir(tmp_path / "twin")
    copy_database(tmp_path / "ledger", twin_dir.path)  # the `server` fixture's data dir
    twin = await start_server(twin_dir)
    empty = await start_server(await init_data_dir(tmp_path / "empty"))
    try:
        yield twin, empty
    finally:
        await twin.close()
        await empty.close()


async def test_split_view_peers_and_quorum(server: RunningServer,
                                           peers: tuple[RunningServer, RunningServer]) -> None:
    twin, empty = peers
    pk = server.key.public_b64
    out = await acli(server.url, "--server-key", pk, "--json", "--peer", twin.url,
                     "--peer", f"{empty.url}#{empty.key.public_b64}")
    assert out.code == 0, out
    statuses = {p["url"]: (p["status"], p["pinned"]) for p in out.json["peers"]}
    assert statuses == {twin.url: ("agrees", False),
                        f"{empty.url}#{empty.key.public_b64}".split("#")[0]: ("missing", True)}
    out = await acli(server.url, "--server-key", pk, "--json", "--peer", twin.url,
                     "--peer", empty.url, "--quorum", "2")
    assert (out.code, out.json["fault"]) == (17, "split-view"), out
    out = await acli(server.url, "--server-key", pk, "--json", "--peer", twin.url,
                     "--peer", empty.url, "--quorum", "1")
    assert out.code == 0, out

    head = json.loads((await server.request("GET", "/chronicle/lasthash")).body)
    liar = await LyingPeer(head["results"][0]["summaryhash"]).start()
    try:
        out = await acli(server.url, "--server-key", pk, "--json", "--peer", twin.url,
                         "--peer", liar.url)
        assert (out.code, out.json["fault"]) == (17, "split-view"), out
        assert {p["status"] for p in out.json["peers"]} == {"agrees", "disagrees"}
    finally:
        await liar.close()
    # Export-file audits can ask peers too (for the export's last entry).
    doc = (await server.request("GET", "/chronicle/export"))
    sig = doc.headers["Body-Signature-Ed25519"]
    path = twin_dir_of(twin) / "export.json"
    path.write_bytes(doc.body)
    out = await acli("--export", str(path), "--server-key", pk, "--signature", sig, "--json",
                     "--peer", twin.url)
    assert (out.code, out.json["peers"][0]["status"]) == (0, "agrees"), out


async def test_empty_chain_and_peer_urls(server: RunningServer) -> None:
    out = await acli(server.url, "--server-key", server.key.public_b64, "--json")
    assert (out.code, out.json["entries"], out.json["last"]) == (0, 0, None), out
    from chronicle.audit.runner import PeerSpec, UsageProblem
    from chronicle.client.http import api_base, chronicle_root

    # Where a peer's own index (and its announced key) is, whatever URL it was given as.
    assert chronicle_root(api_base(f"http://h:1{REPLICA}")) == "http://h:1/chronicle"
    assert chronicle_root(api_base("http://h:1")) == "http://h:1/chronicle"
    spec = PeerSpec.parse(f"http://h:1{REPLICA}#{PK_B}")
    assert (spec.url, spec.key) == (f"http://h:1{REPLICA}", b64u_decode(PK_B, 32))
    with pytest.raises(UsageProblem):
        PeerSpec.parse("http://h:1#not-a-key")


async def test_audit_of_a_named_instance(tmp_path: Path) -> None:
    srv = await start_server(await init_data_dir(tmp_path / "multi", instances=["pkgs"],
                                                 paginate_export=2))
    try:
        await srv.add_client("alice")
        bob = await srv.add_client("bob", instance="pkgs")
        await publish_many(srv, 2)
        for i in range(5):
            res = await srv.publish(bob, f"pkg {i}", path="/chronicle/publish?instance=pkgs")
            assert res.status == 200, res.body
        out = await acli(srv.url, "--server-key", srv.key.public_b64, "--instance", "pkgs",
                         "--json")
        assert (out.code, out.json["entries"]) == (0, 5), out
        assert out.json["source"].endswith("?instance=pkgs")
    finally:
        await srv.close()
