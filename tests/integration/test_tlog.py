"""The Merkle tree kept with the default chain (issue 11): enable, endpoints, proofs, tiles.

Tiles are read by a small reader written here from the C2SP tlog-tiles and RFC 6962 texts
(paths, tile contents, the tree hash, audit paths), not from chronicle's code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from chronicle.cli import main
from chronicle.client.http import ChronicleClient
from chronicle.client.tlog import TreeClient, parse_consistency, parse_inclusion
from chronicle.core.blakechain import Entry
from chronicle.core.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from chronicle.core.encoding import b64u_decode, b64u_encode, utcnow
from chronicle.core.errors import IntegrityError
from chronicle.core.leaf import LeafRecord
from chronicle.core.merkle import MemoryHashes, ProofError, TreeState
from chronicle.core.note import Ed25519Signer, Ed25519Verifier, NoteSignatureError
from chronicle.core.protocol import ACTION_TREE_ENABLED
from chronicle.core.sapient import SigningKey
from chronicle.ledger import Ledger
from chronicle.server.keys import TLOG
from chronicle.store import Store, open_store
from chronicle.store.tlog import STATUS_BUILDING, IssuedCheckpoint
from chronicle.treelog import MSG_NO_TREE, enable
from tests.helpers import RunningServer, serving, start_server

ORIGIN = "ledger.test/chronicle/tlog"


# --- plumbing ---------------------------------------------------------------------------------

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def cli(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr, without log lines (the in-process server's logs land
    in the stderr the runner captures while the command runs)."""
    result = CliRunner().invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    stderr = "".join(line for line in result.stderr.splitlines(keepends=True)
                     if not LOG_LINE.match(line))
    return result.exit_code, result.stdout, stderr


async def acli(*args: str) -> tuple[int, str, str]:
    """The CLI runs its own event loop: run it in a thread while our server runs here."""
    return await asyncio.to_thread(cli, *args)


def key_path(srv: RunningServer) -> Path:
    return srv.ctx.data_dir.tlog_key_path(srv.ctx.settings)


async def enable_tree(srv: RunningServer, origin: str = ORIGIN) -> str:
    report = await enable(srv.ctx.store, srv.ctx.ledger(""), srv.key, key_path(srv), origin,
                          clock=utcnow)
    return report.vkey


async def append(ledger: Ledger, count: int, tag: str = "e") -> list[Entry]:
    """``count`` entries signed by a throwaway key, through the sequencer (group commits)."""
    key = SigningKey.generate()
    out: list[Entry] = []
    for start in range(0, count, 2000):
        bodies = [f"{tag} {i}".encode() for i in range(start, min(count, start + 2000))]
        out += await asyncio.gather(*(ledger.append(b, key.public, key.sign(b))
                                      for b in bodies))
    return out


async def chain_leaves(store: Store) -> list[bytes]:
    head = await store.chain("").head()
    entries = [] if head is None else await store.chain("").range(0, head.index + 1)
    return [LeafRecord.of(e).leaf_hash() for e in entries]


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with serving(tmp_path / "ledger", "alice") as server:
        yield server


def later(srv: RunningServer, seconds: float = 1.0) -> None:
    """Move the server's checkpoint clock on (its checkpoint may be a second old)."""
    treelog = srv.runner.app[TLOG]
    now = treelog.monotonic()
    treelog.monotonic = lambda: now + seconds


def tree_client(srv: RunningServer, vkey: str) -> tuple[ChronicleClient, TreeClient]:
    client = ChronicleClient(srv.url, srv.key.public)
    return client, TreeClient(client, Ed25519Verifier.from_vkey(vkey))


# --- an independent tile reader (C2SP tlog-tiles, RFC 6962) -----------------------------------

def spec_tile_path(level: str, n: int, width: int) -> str:
    """tlog-tiles: N in 3-digit groups, every group but the last prefixed with x; a partial
    tile adds .p/W."""
    groups = []
    while True:
        groups.append(f"{n % 1000:03d}")
        n //= 1000
        if n == 0:
            break
    groups.reverse()
    path = "/".join([f"x{g}" for g in groups[:-1]] + [groups[-1]])
    return f"tile/{level}/{path}" + ("" if width == 256 else f".p/{width}")


def rfc_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def rfc_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def rfc_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 2.1 MTH over leaf hashes: split at the largest power of two below n."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return rfc_node(rfc_mth(leaves[:k]), rfc_mth(leaves[k:]))


def rfc_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 2.1.1 PATH(m, D[n])."""
    if len(leaves) <= 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return [*rfc_path(m, leaves[:k]), rfc_mth(leaves[k:])]
    return [*rfc_path(m - k, leaves[k:]), rfc_mth(leaves[:k])]


def rfc_root_from_path(m: int, n: int, leaf: bytes, path: list[bytes]) -> bytes:
    """RFC 9162 2.1.3.2: the root an audit path leads to."""
    fn, sn, r = m, n - 1, leaf
    for p in path:
        if fn % 2 == 1 or fn == sn:
            r = rfc_node(p, r)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = rfc_node(r, p)
        fn, sn = fn >> 1, sn >> 1
    assert sn == 0
    return r


async def fetch(srv: RunningServer, path: str) -> Any:
    return await srv.request("GET", "/chronicle/tlog/" + path)


# --- end to end -------------------------------------------------------------------------------

async def test_publish_then_prove_with_the_cli(srv: RunningServer) -> None:
    for i in range(3):
        assert (await srv.publish("alice", f"before {i}")).status == 200
    dd = str(srv.ctx.data_dir.path)
    code, out, err = await acli("tlog", "enable", "--data-dir", dd, "--origin", ORIGIN,
                                "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["origin"], report["backfilled"], report["size"], report["announced"]) == \
        (ORIGIN, 3, 4, 3)
    assert (key_path(srv).stat().st_mode & 0o777) == 0o600
    assert key_path(srv).read_text().startswith(f"PRIVATE+KEY+{ORIGIN}+")
    vkey = report["vkey"]
    assert Ed25519Verifier.from_vkey(vkey).name == ORIGIN
    # The announcement is the server's own signed entry, on the chain, in the tree.
    announced = await srv.ctx.store.chain("").entry_at(3)
    assert announced is not None and announced.publickey == srv.key.public
    assert json.loads(announced.contents) == {"server-action": ACTION_TREE_ENABLED,
                                              "now": announced.created, "origin": ORIGIN,
                                              "vkey": vkey}
    receipt = (await srv.publish("alice", "after")).json["results"]
    pk = b64u_encode(srv.key.public)
    # "--" ends the options: a base64url currhash may start with "-".
    code, out, err = await acli("prove", "--url", srv.url, "--server-key", pk,
                                "--checkpoint-key", vkey, "--json", "--", receipt["currhash"])
    assert code == 0, err
    proven = json.loads(out)
    assert (proven["ok"], proven["index"], proven["tree-size"], proven["currhash"]) == \
        (True, 4, 5, receipt["currhash"])
    assert proven["contents-sha256"] == hashlib.sha256(b"after").hexdigest()
    assert open_checkpoint(proven["checkpoint"].encode(), [Ed25519Verifier.from_vkey(vkey)]
                           ).checkpoint.size == 5
    code, out, _ = await acli("prove", "1", "--url", srv.url, "--server-key", pk,
                              "--checkpoint-key", vkey)
    assert code == 0 and out.startswith("OK: entry 1 (currhash ")
    code, _, err = await acli("tlog", "status", "--data-dir", dd, "--json")
    assert code == 0


async def test_prove_refusals(srv: RunningServer) -> None:
    vkey = await enable_tree(srv)
    other = Ed25519Signer.generate(ORIGIN).vkey()
    pk = b64u_encode(srv.key.public)
    base = ("--url", srv.url, "--server-key", pk)
    code, _, err = await acli("prove", "0", *base, "--checkpoint-key", other)
    assert code == 1
    assert err.strip() == ("error: the checkpoint is not signed by the checkpoint key "
                           f"{ORIGIN}+{Ed25519Verifier.from_vkey(other).key_id:08x}; "
                           "field checkpoint")
    code, _, err = await acli("prove", "0", "--url", srv.url, "--server-key",
                              b64u_encode(SigningKey.generate().public),
                              "--checkpoint-key", vkey)
    assert code == 1
    assert err.startswith("error: response to GET /tlog/checkpoint is not signed by the "
                          "pinned server key; field Body-Signature-Ed25519")
    code, _, err = await acli("prove", "7", *base, "--checkpoint-key", vkey)
    assert (code, err.strip()) == (1, "error: server refused (HTTP 404): Entry 7 is not on "
                                      "the chain")
    code, _, err = await acli("prove", "not-a-hash", *base, "--checkpoint-key", vkey)
    assert code == 2 and "Invalid value for ENTRY: a leaf index or a currhash (base64url)" in err
    code, _, err = await acli("prove", "0", *base, "--checkpoint-key", "nonsense")
    assert code == 2 and "Invalid value for --checkpoint-key: verifier key must be " \
        "<name>+<key id>+<base64 key>" in err


async def test_consistency_across_10000_appends(srv: RunningServer) -> None:
    vkey = await enable_tree(srv)
    ledger = srv.ctx.ledger("")
    first = await append(ledger, 17, "old")
    client, tree = tree_client(srv, vkey)
    async with client:
        old = (await tree.checkpoint()).checkpoint
        assert old.size == 18
        await append(ledger, 10_000, "new")
        later(srv)
        new = (await tree.checkpoint()).checkpoint
        assert new.size == 10_018
        proof = await tree.consistency(old, new)
        assert len(proof) > 5
        # An entry from before the appends, proven in the new tree by currhash.
        proven = await tree.inclusion(b64u_encode(first[3].currhash), new)
        assert proven.index == 4
        # The roots are those of the chain's leaves, recomputed here.
        leaves = await chain_leaves(srv.ctx.store)
        assert rfc_mth(leaves[:18]) == old.root and rfc_mth(leaves) == new.root
        tampered = [*proof[:2], bytes(32), *proof[3:]]
        results = {"old-size": old.size, "new-size": new.size,
                   "proof": [b64u_encode(h) for h in tampered]}
        with pytest.raises(ProofError):
            parse_consistency(results, old, new)


async def test_tiles_read_by_an_independent_reader(srv: RunningServer) -> None:
    """Fetch the checkpoint and every tile a reader needs; rebuild the root at the
    checkpoint's size and an inclusion proof from tiles alone, with RFC 6962's functions."""
    vkey = await enable_tree(srv)
    await append(srv.ctx.ledger(""), 600)
    note = (await fetch(srv, "checkpoint")).body
    assert note.decode().startswith(f"{ORIGIN}\n601\n")
    checkpoint = open_checkpoint(note, [Ed25519Verifier.from_vkey(vkey)]).checkpoint
    size = checkpoint.size
    leaves: list[bytes] = []
    bundle_entries: list[bytes] = []
    for n in range(size // 256 + 1):
        width = min(256, size - 256 * n)
        tile = await fetch(srv, spec_tile_path("0", n, width))
        assert tile.status == 200 and tile.headers["Content-Type"] == "application/octet-stream"
        assert tile.headers["Cache-Control"] == ("public, max-age=31536000, immutable"
                                                 if width == 256 else "public, max-age=60")
        assert len(tile.body) == 32 * width
        leaves += [tile.body[i:i + 32] for i in range(0, len(tile.body), 32)]
        bundle = (await fetch(srv, spec_tile_path("entries", n, width))).body
        pos = 0
        while pos < len(bundle):  # uint16 big-endian length, then the entry
            length = int.from_bytes(bundle[pos:pos + 2], "big")
            bundle_entries.append(bundle[pos + 2:pos + 2 + length])
            pos += 2 + length
    assert [rfc_leaf(e) for e in bundle_entries] == leaves
    assert rfc_mth(leaves) == checkpoint.root
    # Level 1 holds the level-8 hashes: the root of each 256-leaf block.
    level1 = (await fetch(srv, spec_tile_path("1", 0, size >> 8))).body
    assert level1 == b"".join(rfc_mth(leaves[i:i + 256]) for i in range(0, 512, 256))
    # An inclusion proof from the tiles alone, checked by recomputing the root.
    for m in (0, 255, 256, 511, 600):
        path = rfc_path(m, leaves)
        assert rfc_root_from_path(m, size, leaves[m], path) == checkpoint.root
    # The entries are the chain's, as leaf records (SHA-256 of the contents, currhash).
    first = LeafRecord.from_bytes(bundle_entries[5])
    entry = await srv.ctx.store.chain("").entry_at(5)
    assert entry is not None and first.currhash == entry.currhash
    first.check_contents(entry.contents)
    # A partial tile narrower than the tree's is its prefix; past the tree: not found.
    narrow = await fetch(srv, spec_tile_path("0", 2, 50))
    assert narrow.body == b"".join(leaves[512:562])
    for missing in (spec_tile_path("0", 2, 256), spec_tile_path("0", 2, 90),
                    spec_tile_path("0", 3, 1), spec_tile_path("1", 0, 256),
                    spec_tile_path("entries", 2, 256), spec_tile_path("2", 0, 1)):
        answer = await fetch(srv, missing)
        assert answer.status == 404, missing
        assert answer.json["message"] == f"Tile {missing} is not in the tree (size 601)"


async def test_backfill_equals_the_incrementally_built_tree(srv: RunningServer) -> None:
    store = srv.ctx.store
    await enable_tree(srv)
    await append(srv.ctx.ledger(""), 700)
    iid = await store.instance_id("")
    hashes = "SELECT idx, hash FROM tlog_hashes WHERE instance = ? ORDER BY idx"
    incremental = [(i, bytes(h)) for i, h in await store.db.read(hashes, iid)]
    tree = await store.tlog.tree("")
    assert tree is not None and tree.size == 701
    assert len(incremental) == 2 * 701 - bin(701).count("1")
    assert tree.state() == TreeState.from_leaf_hashes(await chain_leaves(store))
    # As if the tree had never been built: a build interrupted at its start, run again.
    async with store.db.transaction() as s:
        await s.execute("DELETE FROM tlog_hashes WHERE instance = ?", iid)
        await s.execute("UPDATE tlog_trees SET status = ?, size = 0, treestate = ? "
                        "WHERE instance = ?", STATUS_BUILDING, TreeState.empty().to_bytes(), iid)
    report = await enable(store, srv.ctx.ledger(""), srv.key, key_path(srv), ORIGIN,
                          clock=utcnow)
    assert (report.backfilled, report.size, report.announced) == (701, 701, 0)
    assert [(i, bytes(h)) for i, h in await store.db.read(hashes, iid)] == incremental
    rebuilt = await store.tlog.tree("")
    assert rebuilt is not None and rebuilt.treestate == tree.treestate and rebuilt.active
    # The hook goes on from the backfilled state.
    await append(srv.ctx.ledger(""), 5, "more")
    assert (await store.tlog.tree("")).state() == TreeState.from_leaf_hashes(  # type: ignore[union-attr]
        await chain_leaves(store))


async def test_enable_refusals(srv: RunningServer) -> None:
    dd = str(srv.ctx.data_dir.path)
    for origin, why in (
            ("https://ledger.test/chronicle/tlog",
             "give the tiles URL prefix without its scheme (e.g. "
             "ledger.example.org/chronicle/tlog)"),
            ("ledger.test/chronicle/tlog/", "no trailing slash"),
            ("ledger test", "it must be non-empty printable ASCII without spaces or '+'"),
            ("ledger+test", "it must be non-empty printable ASCII without spaces or '+'"),
            ("", "it must be non-empty printable ASCII without spaces or '+'"),
            ("lédger.test", "it must be non-empty printable ASCII without spaces or '+'")):
        code, _, err = await acli("tlog", "enable", "--data-dir", dd, "--origin", origin)
        assert code == 2, origin
        assert err.strip().endswith(f"Invalid value for '--origin': invalid origin "
                                    f"{origin!r}: {why}"), err
    assert not key_path(srv).exists()
    # A key file naming another log is not taken over.
    key_path(srv).write_text(Ed25519Signer.generate("other.test").skey() + "\n")
    code, _, err = await acli("tlog", "enable", "--data-dir", dd, "--origin", ORIGIN)
    assert (code, err.strip()) == (1, f"error: {key_path(srv)} holds the checkpoint key of "
                                      f"other.test, not of {ORIGIN}")
    key_path(srv).unlink()
    code, out, err = await acli("tlog", "enable", "--data-dir", dd, "--origin", ORIGIN)
    assert code == 0, err
    # Once enabled, the origin never changes; the same origin again changes nothing.
    code, _, err = await acli("tlog", "enable", "--data-dir", dd, "--origin", "other.test")
    assert (code, err.strip()) == (1, f"error: the Merkle tree is already enabled with origin "
                                      f"{ORIGIN}; an origin never changes")
    code, out, err = await acli("tlog", "enable", "--data-dir", dd, "--origin", ORIGIN,
                                "--json")
    assert code == 0 and json.loads(out)["already-enabled"] is True
    assert json.loads(out)["announced"] == 0
    # A replaced key file is refused (the vkey is on the chain).
    original = key_path(srv).read_text()
    key_path(srv).write_text(Ed25519Signer.generate(ORIGIN).skey())
    code, _, err = await acli("tlog", "enable", "--data-dir", dd, "--origin", ORIGIN)
    tree = await srv.ctx.store.tlog.tree("")
    assert tree is not None
    assert (code, err.strip()) == (1, f"error: {key_path(srv)} is not the checkpoint key of "
                                      f"this tree (its vkey is {tree.vkey})")
    # ... and the server stops issuing checkpoints with it (its fault: 500).
    later(srv)
    answer = await fetch(srv, "checkpoint")
    assert (answer.status, answer.json["message"]) == (
        500, "Checkpoints are unavailable: the checkpoint key cannot be read")
    key_path(srv).write_text(original)
    assert (await fetch(srv, "checkpoint")).status == 200


async def test_an_interrupted_enable_is_finished_only_with_its_origin(
        srv: RunningServer) -> None:
    store = srv.ctx.store
    signer = Ed25519Signer.generate(ORIGIN)
    await store.tlog.start_building("", ORIGIN, signer.vkey(), "2026-01-01T00:00:00+00:00")
    key_path(srv).write_text(signer.skey())
    assert (await fetch(srv, "checkpoint")).json["message"] == MSG_NO_TREE
    with pytest.raises(Exception, match=f"^enabling the tree with origin {ORIGIN} was "
                                        "interrupted; finish it with that origin$"):
        await enable_tree(srv, "other.test")
    await srv.publish("alice", "while building")  # a building tree is no part of appends
    await enable_tree(srv)
    tree = await store.tlog.tree("")
    assert tree is not None and tree.active and tree.size == 2


async def test_endpoint_errors_are_signed_and_exact(srv: RunningServer) -> None:
    for path in ("checkpoint", "tile/0/000.p/1", "proof/inclusion/0",
                 "proof/consistency/0/1"):
        answer = await fetch(srv, path)  # fetch checks the server's signature on each
        assert (answer.status, answer.json["message"]) == (404, MSG_NO_TREE), path
    await enable_tree(srv)
    receipt = (await srv.publish("alice", "one")).json["results"]
    later(srv)
    unknown = b64u_encode(hashlib.sha256(b"nothing").digest())
    for path, status, message in (
            ("proof/inclusion/0?size=x", 400, "Tree size must be a decimal number without "
                                              "leading zeroes"),
            ("proof/inclusion/0?size=01", 400, "Tree size must be a decimal number without "
                                               "leading zeroes"),
            ("proof/inclusion/0?size=-1", 400, "Tree size must be a decimal number without "
                                               "leading zeroes"),
            ("proof/inclusion/0?size=1&size=2", 400, "Only one size parameter may be "
                                                     "provided"),
            ("proof/inclusion/0?size=3", 404, "Tree size 3 is beyond the current tree "
                                              "(size 2)"),
            ("proof/inclusion/1?size=1", 404, "Entry 1 is not in the tree of size 1"),
            ("proof/inclusion/0?size=0", 404, "Entry 0 is not in the tree of size 0"),
            ("proof/inclusion/2", 404, "Entry 2 is not on the chain"),
            ("proof/inclusion/007", 400, "Leaf index must be a decimal number without "
                                         "leading zeroes"),
            (f"proof/inclusion/{unknown}", 404, "No record found matching this hash."),
            ("proof/inclusion/not-a-hash", 404, "No record found matching this hash."),
            (f"proof/inclusion/{receipt['summaryhash']}", 404,
             "No record found matching this hash."),
            ("proof/consistency/2/1", 400, "No consistency proof from size 2 to size 1"),
            ("proof/consistency/1/3", 404, "Tree size 3 is beyond the current tree (size 2)"),
            ("proof/consistency/a/2", 400, "Tree size must be a decimal number without "
                                           "leading zeroes"),
            ("tile/0/0001", 404, "not a tile path: 'tile/0/0001'"),
            ("tile/0/000.p/256", 404, "not a tile path: 'tile/0/000.p/256'"),
            ("tile/entries/x000/001", 404, "non-canonical tile index in "
                                           "'tile/entries/x000/001'"),
            ("tile/0/000.p/3", 404, "Tile tile/0/000.p/3 is not in the tree (size 2)")):
        answer = await fetch(srv, path)
        assert (answer.status, answer.json["message"]) == (status, message), path
    ok = await fetch(srv, f"proof/inclusion/{receipt['currhash']}?size=2")
    assert ok.status == 200 and ok.headers["Content-Type"] == "application/json"
    results = ok.json["results"]
    assert (results["index"], results["tree-size"], results["currhash"]) == \
        (1, 2, receipt["currhash"])
    assert results["checkpoint"] is None  # no checkpoint was issued at that size yet
    empty = (await fetch(srv, "proof/consistency/0/2")).json["results"]
    assert empty["proof"] == [] and empty["old-root"] == b64u_encode(
        hashlib.sha256(b"").digest())


async def test_checkpoint_covers_what_is_committed_within_a_second(
        srv: RunningServer) -> None:
    vkey = await enable_tree(srv)
    verifier = Ed25519Verifier.from_vkey(vkey)
    first = await fetch(srv, "checkpoint")
    assert first.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert first.headers["Cache-Control"] == "no-cache"
    assert open_checkpoint(first.body, [verifier]).checkpoint.size == 1
    await srv.publish("alice", "x")
    again = await fetch(srv, "checkpoint")  # within the second: the same checkpoint
    assert again.body == first.body
    later(srv)
    newer = open_checkpoint((await fetch(srv, "checkpoint")).body, [verifier]).checkpoint
    assert newer.size == 2
    # A proof asked without a size covers its entry at once (a fresher checkpoint).
    await srv.publish("alice", "y")
    proof = (await fetch(srv, "proof/inclusion/2")).json["results"]
    assert proof["tree-size"] == 3
    proven = open_checkpoint(proof["checkpoint"].encode(), [verifier]).checkpoint
    parse_inclusion(proof, proven, index=2)
    # Every checkpoint served is recorded with its note.
    iid = await srv.ctx.store.instance_id("")
    for size in (1, 2, 3):
        issued = await srv.ctx.store.tlog.checkpoint(iid, size)
        assert issued is not None
        assert open_checkpoint(issued.note.encode(), [verifier]).checkpoint.size == size
    latest = await srv.ctx.store.tlog.latest_checkpoint(iid)
    assert latest is not None and latest.size == 3


async def test_tampered_answers_are_rejected(srv: RunningServer) -> None:
    vkey = await enable_tree(srv)
    await append(srv.ctx.ledger(""), 40)
    later(srv)
    verifier = Ed25519Verifier.from_vkey(vkey)
    note = (await fetch(srv, "checkpoint")).body
    checkpoint = open_checkpoint(note, [verifier]).checkpoint
    results = (await fetch(srv, f"proof/inclusion/7?size={checkpoint.size}")).json["results"]
    parse_inclusion(results, checkpoint, index=7)
    proof = results["proof"]
    for tampered, error in (
            ({**results, "proof": [proof[0], b64u_encode(bytes(32)), *proof[2:]]},
             "root does not match the proof"),
            ({**results, "proof": proof[:-1]}, "inclusion proof for leaf 7 of 41 must have"),
            ({**results, "index": 8}, "root does not match the proof"),
            ({**results, "leaf-hash": b64u_encode(bytes(32))},
             "the leaf hash is not the hash of the leaf")):
        with pytest.raises(IntegrityError, match=error):
            parse_inclusion(tampered, checkpoint)
    leaf = bytearray(b64u_decode(results["leaf"]))
    leaf[-1] ^= 1
    forged = {**results, "leaf": b64u_encode(bytes(leaf)),
              "leaf-hash": b64u_encode(rfc_leaf(bytes(leaf))),
              "currhash": b64u_encode(bytes(leaf[-32:]))}
    with pytest.raises(ProofError, match="root does not match the proof"):
        parse_inclusion(forged, checkpoint)
    # A checkpoint whose text was changed no longer verifies with the vkey.
    bad = note.replace(b"\n41\n", b"\n42\n")
    with pytest.raises(NoteSignatureError):
        open_checkpoint(bad, [verifier])
    # A tile whose hashes were changed rebuilds another root.
    tile = bytearray((await fetch(srv, "tile/0/000.p/41")).body)
    tile[0] ^= 1
    assert rfc_mth([bytes(tile[i:i + 32]) for i in range(0, len(tile), 32)]) != \
        checkpoint.root
    # A checkpoint signed by the right key for a tree that is not the server's: the
    # consistency proof from it fails.
    signer_text = key_path(srv).read_text().strip()
    forged_cp = Checkpoint(ORIGIN, 20, hashlib.sha256(b"x").digest())
    sign_checkpoint(forged_cp, Ed25519Signer.from_skey(signer_text))
    consistency = (await fetch(srv, f"proof/consistency/20/{checkpoint.size}")).json["results"]
    with pytest.raises(ProofError):
        parse_consistency(consistency, forged_cp, checkpoint)


async def test_instances_stay_plain_chronicle_chains(tmp_path: Path) -> None:
    async with serving(tmp_path / "ledger", instances=["side"]) as srv:
        await srv.add_client("bob", instance="side")
        await enable_tree(srv)
        assert (await srv.publish("bob", "side entry",
                                  path="/chronicle/publish?instance=side")).status == 200
        answer = await fetch(srv, "checkpoint?instance=side")
        assert (answer.status, answer.json["message"]) == (404, MSG_NO_TREE)
        assert (await fetch(srv, "checkpoint?instance=nope")).json["message"] == \
            "Instance not found"
        tree = await srv.ctx.store.tlog.tree("")
        assert tree is not None and tree.size == 1
        assert await srv.ctx.store.tlog.tree("side") is None


async def test_a_tree_out_of_step_fails_the_batch_and_stores_nothing(
        srv: RunningServer) -> None:
    store = srv.ctx.store
    await enable_tree(srv)
    iid = await store.instance_id("")
    state = TreeState.from_leaf_hashes([bytes(32)] * 5)
    async with store.db.transaction() as s:
        await s.execute("UPDATE tlog_trees SET size = 5, treestate = ? WHERE instance = ?",
                        state.to_bytes(), iid)
    answer = await srv.publish("alice", "lost")
    assert (answer.status, answer.json["message"]) == (503, "Nothing was stored, retry later")
    head = await store.chain("").head()
    assert head is not None and head.index == 0
    tree = await store.tlog.tree("")
    assert tree is not None and tree.size == 5  # untouched: the batch rolled back whole


async def test_proofs_agree_with_a_tree_built_in_memory(srv: RunningServer) -> None:
    await enable_tree(srv)
    await append(srv.ctx.ledger(""), 30)
    memory = MemoryHashes.from_leaf_hashes(await chain_leaves(srv.ctx.store))
    results = (await fetch(srv, "proof/consistency/9/31")).json["results"]
    assert [b64u_decode(h) for h in results["proof"]] == memory.consistency_proof(9, 31)
    assert b64u_decode(results["new-root"]) == memory.root()
    results = (await fetch(srv, "proof/inclusion/13?size=20")).json["results"]
    assert [b64u_decode(h) for h in results["proof"]] == memory.inclusion_proof(13, 20)


async def test_audit_holds_the_chain_against_a_signed_checkpoint(
        srv: RunningServer, tmp_path: Path) -> None:
    vkey = await enable_tree(srv)
    await append(srv.ctx.ledger(""), 50)
    later(srv)
    pk = b64u_encode(srv.key.public)
    code, out, err = await acli("audit", srv.url, "--server-key", pk, "--tlog", vkey,
                                "--json", "--state", str(tmp_path / "audit.state"))
    assert code == 0, err
    report = json.loads(out)
    assert report["tlog"]["status"] == "matches" and report["tlog"]["tree-size"] == 51
    # Resumed from the state file: the tree continues from the remembered one.
    await append(srv.ctx.ledger(""), 7, "more")
    later(srv, 2.0)
    code, out, err = await acli("audit", srv.url, "--server-key", pk, "--tlog", vkey,
                                "--state", str(tmp_path / "audit.state"))
    assert code == 0, err
    assert "tlog: the tree of ledger.test/chronicle/tlog at size 58 matches the signed " \
           "checkpoint" in out
    # An export file, with a checkpoint file.
    export = await srv.request("GET", "/chronicle/export")
    (tmp_path / "export.json").write_bytes(export.body)
    sig = export.headers["Body-Signature-Ed25519"]
    note = (await fetch(srv, "checkpoint")).body
    (tmp_path / "cp.txt").write_bytes(note)
    base = ("--export", str(tmp_path / "export.json"), "--server-key", pk, "--signature", sig,
            "--tlog", vkey)
    code, out, err = await acli("audit", *base, "--checkpoint", str(tmp_path / "cp.txt"),
                                "--json")
    assert code == 0, err
    assert json.loads(out)["tlog"]["tree-size"] == 58
    code, _, err = await acli("audit", *base)
    assert (code, err.strip()) == (2, "error: --tlog with --export needs the signed "
                                      "checkpoint (--checkpoint FILE)")
    # A checkpoint of another tree at the same size, signed with the log's own key.
    signer = Ed25519Signer.from_skey(key_path(srv).read_text().strip())
    (tmp_path / "forged.txt").write_bytes(sign_checkpoint(
        Checkpoint(ORIGIN, 58, hashlib.sha256(b"another tree").digest()), signer))
    code, _, err = await acli("audit", *base, "--checkpoint", str(tmp_path / "forged.txt"))
    assert code == 13
    assert err.startswith("error: hash-mismatch at entry 57 (field root): expected '"
                          + b64u_encode(hashlib.sha256(b"another tree").digest()))
    assert err.strip().endswith("- the tree over the audited entries does not have the "
                                "signed checkpoint's root")
    # A newer checkpoint than the export: the export is truncated.
    await append(srv.ctx.ledger(""), 1, "last")
    later(srv, 3.0)
    (tmp_path / "newer.txt").write_bytes((await fetch(srv, "checkpoint")).body)
    code, _, err = await acli("audit", *base, "--checkpoint", str(tmp_path / "newer.txt"))
    assert code == 14
    assert err.strip() == ("error: anchor at entry 58 (field tree-size): expected '59', "
                           "found '58' - the chain ends before the signed checkpoint's tree "
                           "size: truncated (or another chain)")
    # A checkpoint by another key.
    other = Ed25519Signer.generate(ORIGIN)
    (tmp_path / "other.txt").write_bytes(sign_checkpoint(
        Checkpoint(ORIGIN, 58, bytes(32)), other))
    code, _, err = await acli("audit", *base, "--checkpoint", str(tmp_path / "other.txt"))
    assert code == 10
    assert err.strip() == ("error: document-signature (field checkpoint) - the checkpoint is "
                           f"not signed by the checkpoint key {ORIGIN}+"
                           f"{Ed25519Verifier.from_vkey(vkey).key_id:08x}")
    code, _, err = await acli("audit", srv.url, "--server-key", pk, "--checkpoint",
                              str(tmp_path / "cp.txt"))
    assert (code, err.strip()) == (2, "error: --checkpoint goes with --tlog VKEY")


# --- a replica watching its upstream's tree ----------------------------------------------------

async def test_replica_checks_the_upstream_tree_between_syncs(tmp_path: Path) -> None:
    from tests.integration.test_replication import QUIET, add_source, cli, ledger, sync

    upstream = await start_server(await ledger(tmp_path, "A", **QUIET))
    replica = await ledger(tmp_path, "B", **QUIET)
    try:
        vkey = await enable_tree(upstream)
        await append(upstream.ctx.ledger(""), 20)
        later(upstream)
        await add_source(replica, upstream.url, upstream.key.public)
        dd = str(replica.path)
        res = await cli("replica", "set-checkpoint-key", "--data-dir", dd, "upstream",
                        "--checkpoint-key", "bad")
        assert res.code == 2 and "Invalid value for --checkpoint-key" in res.stderr
        res = await cli("replica", "set-checkpoint-key", "--data-dir", dd, "upstream",
                        "--checkpoint-key", vkey)
        assert (res.code, res.stdout.strip()) == (0, f"upstream: checkpoints checked with "
                                                     f"{vkey}")

        async def watched() -> Any:
            store = open_store(replica.settings().database, replica.path)
            await store.open()
            try:
                source = await store.replication.source("upstream")
                assert source is not None
                return source, await store.tlog.upstream(source.id)
            finally:
                await store.close()

        assert (await sync(replica)).code == 0
        _, first = await watched()
        assert (first.last.size, first.last.url) == (
            21, f"{upstream.url}/chronicle/tlog/checkpoint")
        assert first.last.body.startswith(f"{ORIGIN}\n21\n".encode())
        await append(upstream.ctx.ledger(""), 100, "more")
        later(upstream, 2.0)
        assert (await sync(replica)).code == 0
        _, second = await watched()
        assert second.last.size == 121
        # The upstream signs a checkpoint of another tree of its size: the consistency
        # proof from the last verified one fails; the source stops as forked.
        treelog = upstream.runner.app[TLOG]
        signer = Ed25519Signer.from_skey(key_path(upstream).read_text().strip())
        forged = sign_checkpoint(Checkpoint(ORIGIN, 121, bytes(32)), signer).decode()

        async def lying(instance: str, *, covering: int = 0) -> IssuedCheckpoint:
            return IssuedCheckpoint(121, bytes(32), forged, "now")

        await append(upstream.ctx.ledger(""), 1, "last")
        treelog.checkpoint = lying
        res = await sync(replica)
        assert res.code == 1
        (report,) = res.json["sources"]
        assert report["status"] == "forked"
        assert report["error"].startswith("the upstream signed a checkpoint of a smaller "
                                          "tree, or of another tree of the same size")
        evidence = await cli("replica", "evidence", "--data-dir", dd, "upstream", "--json")
        docs = evidence.json["faults"][0]["documents"]
        assert [d["role"] for d in docs] == ["upstream tlog checkpoint (verified before)",
                                             "upstream tlog checkpoint"]
        assert docs[1]["body"] == forged and docs[0]["signed-by"] == b64u_encode(
            upstream.key.public)
        # Resumed, a larger tree whose consistency proof fails is a fork as well.
        assert (await cli("replica", "resume", "--data-dir", dd, "upstream")).code == 0
        bigger = sign_checkpoint(Checkpoint(ORIGIN, 122, bytes(32)), signer).decode()

        async def lying_bigger(instance: str, *, covering: int = 0) -> IssuedCheckpoint:
            return IssuedCheckpoint(122, bytes(32), bigger, "now")

        treelog.checkpoint = lying_bigger
        res = await sync(replica)
        (report,) = res.json["sources"]
        assert report["status"] == "forked"
        assert report["error"] == ("the upstream's checkpoints are not consistent: new root "
                                   "does not match the proof; field proof")
        evidence = await cli("replica", "evidence", "--data-dir", dd, "upstream", "--json")
        assert [d["role"] for d in evidence.json["faults"][-1]["documents"]] == [
            "upstream tlog checkpoint (verified before)", "upstream tlog checkpoint",
            "upstream tlog consistency proof"]
        _, kept = await watched()
        assert kept.last.size == 121  # the last verified checkpoint stays the one remembered
    finally:
        await upstream.close()


async def test_a_watched_upstream_without_a_tree_only_postpones(tmp_path: Path) -> None:
    from tests.integration.test_replication import QUIET, add_source, cli, ledger, sync

    upstream = await start_server(await ledger(tmp_path, "A", **QUIET))
    replica = await ledger(tmp_path, "B", **QUIET)
    try:
        await add_source(replica, upstream.url, upstream.key.public)
        vkey = Ed25519Signer.generate(ORIGIN).vkey()
        assert (await cli("replica", "set-checkpoint-key", "--data-dir", str(replica.path),
                          "upstream", "--checkpoint-key", vkey)).code == 0
        res = await sync(replica)
        assert res.code == 3
        (report,) = res.json["sources"]
        assert (report["status"], report["error"]) == (
            "error", f"server refused (HTTP 404): {MSG_NO_TREE}")
    finally:
        await upstream.close()


async def test_enable_while_publishing_keeps_the_tree_in_step(srv: RunningServer) -> None:
    """`tlog enable` (another process's connection) backfills while the server appends:
    the catch-up under the chain-head lock leaves no entry out and none twice."""
    await append(srv.ctx.ledger(""), 3000, "old")
    stop = asyncio.Event()

    async def publish() -> int:
        count = 0
        while not stop.is_set():
            assert (await srv.publish("alice", f"during {count}")).status == 200
            count += 1
        return count

    publisher = asyncio.get_running_loop().create_task(publish())
    code, _, err = await acli("tlog", "enable", "--data-dir", str(srv.ctx.data_dir.path),
                              "--origin", ORIGIN)
    await asyncio.sleep(0.2)
    stop.set()
    published = await publisher
    assert code == 0, err
    assert published > 0
    tree = await srv.ctx.store.tlog.tree("")
    assert tree is not None
    leaves = await chain_leaves(srv.ctx.store)
    assert tree.size == len(leaves) == 3000 + published + 1
    assert tree.state() == TreeState.from_leaf_hashes(leaves)


async def test_activation_catches_up_under_the_lock_and_checks_the_backfill(
        srv: RunningServer) -> None:
    store = srv.ctx.store
    await append(srv.ctx.ledger(""), 10)
    signer = Ed25519Signer.generate(ORIGIN)
    tree = await store.tlog.start_building("", ORIGIN, signer.vkey(), "t")
    built, stored = TreeState.empty().extend((await chain_leaves(store))[:10])
    await store.tlog.write_hashes(tree.instance_id, stored)
    await append(srv.ctx.ledger(""), 4, "late")  # appended while building: not in the tree
    assert (await store.tlog.tree("")).size == 0  # type: ignore[union-attr]
    wrong = TreeState.from_leaf_hashes([bytes(32)] * 10)
    with pytest.raises(Exception, match="^the stored hashes do not match the tree built "
                                        r"from the chain \(is another `tlog enable` "
                                        r"running\?\)$"):
        async with store.write("") as tx:
            await store.tlog.activate(tx, wrong)
    async with store.write("") as tx:
        active = await store.tlog.activate(tx, built)
    assert active.size == 14
    assert active == TreeState.from_leaf_hashes(await chain_leaves(store))
    with pytest.raises(Exception, match=r"^the tree being built was removed or enabled "
                                        "meanwhile$"):
        async with store.write("") as tx:
            await store.tlog.activate(tx, built)


async def test_audit_tlog_usage_errors(srv: RunningServer, tmp_path: Path) -> None:
    vkey = await enable_tree(srv)
    await append(srv.ctx.ledger(""), 5)
    later(srv)
    pk = b64u_encode(srv.key.public)
    state = str(tmp_path / "audit.state")
    old_note = tmp_path / "old.txt"
    old_note.write_bytes((await fetch(srv, "checkpoint")).body)
    code, _, err = await acli("audit", srv.url, "--server-key", pk, "--tlog", "x+y")
    assert code == 2
    assert err.strip().endswith("Invalid value for --tlog: verifier key must be "
                                "<name>+<key id>+<base64 key>")
    # A state file made without --tlog has no tree to go on from.
    assert (await acli("audit", srv.url, "--server-key", pk, "--state", state))[0] == 0
    await append(srv.ctx.ledger(""), 2, "more")
    later(srv, 2.0)
    code, _, err = await acli("audit", srv.url, "--server-key", pk, "--tlog", vkey,
                              "--state", state)
    assert (code, err.strip()) == (2, f"error: {state}: the state has no Merkle tree of its "
                                      "entries (run the audit with --tlog once without this "
                                      "state file)")
    (tmp_path / "audit.state").unlink()
    assert (await acli("audit", srv.url, "--server-key", pk, "--tlog", vkey, "--state",
                       state))[0] == 0
    # A checkpoint older than what the state file already holds cannot be checked.
    code, _, err = await acli("audit", srv.url, "--server-key", pk, "--tlog", vkey,
                              "--state", state, "--checkpoint", str(old_note))
    assert (code, err.strip()) == (2, "error: the checkpoint's tree (size 6) is older than "
                                      "the state file's (8 entries): use a newer checkpoint, "
                                      "or no state file")


async def test_an_unreadable_key_file_is_refused(srv: RunningServer) -> None:
    key_path(srv).write_text("garbage\n")
    code, _, err = await acli("tlog", "enable", "--data-dir", str(srv.ctx.data_dir.path),
                              "--origin", ORIGIN)
    assert (code, err.strip()) == (1, f"error: {key_path(srv)}: signer key must be "
                                      "PRIVATE+KEY+<name>+<key id>+<base64 key>")
    assert await srv.ctx.store.tlog.tree("") is None
