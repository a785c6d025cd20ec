"""Our witness (c2sp.org/tlog-witness) on loopback, against a log built in memory: every
answer the spec names, with its exact body, its durable state, and its lock (run on
SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from chronicle.cli.common import open_witness
from chronicle.core.checkpoint import (
    MAX_PROOF_LINES,
    TLOG_SIZE_CONTENT_TYPE,
    AddCheckpointRequest,
    Checkpoint,
    Cosigner,
    WitnessState,
    cosignature_timestamp,
    parse_signature_lines,
    sign_checkpoint,
    verify_cosignatures,
)
from chronicle.core.encoding import b64u_decode
from chronicle.core.merkle import EMPTY_ROOT
from chronicle.core.note import (
    Ed25519Signer,
    NoteSignature,
    b64encode,
    format_key,
    format_note,
    parse_note,
    sign_note,
)
from chronicle.core.sapient import SIGNATURE_HEADER, verify
from chronicle.store.witness import open_witness_store
from chronicle.witness import Cosigned, Witness
from tests.helpers import Response, ServerProcess, http_request, stop_process
from tests.witness_support import (
    ORIGIN,
    RunningWitness,
    TestLog,
    add_log,
    init_witness_dir,
)

TEXT = "text/plain; charset=utf-8"


def cosignatures(witness: RunningWitness, checkpoint: Checkpoint, body: bytes) -> list[int]:
    """The timestamps of the witness's cosignatures in a 200 body, each verified."""
    lines = parse_signature_lines(body)
    verified = verify_cosignatures(checkpoint, lines, [witness.verifier])
    assert verified == lines
    return [cosignature_timestamp(s) for s in verified]


async def state(witness: RunningWitness) -> WitnessState | None:
    known = await witness.store.log(ORIGIN)
    assert known is not None
    return known.state


def assert_refused(answer: Response, status: int, text: str) -> None:
    """A refusal: ``status`` and one line of plain text (the answer is signed: checked)."""
    assert (answer.status, answer.headers["Content-Type"], answer.body) == (
        status, TEXT, text.encode() + b"\n")


# --- cosigning ----------------------------------------------------------------------------

async def test_cosigns_a_first_checkpoint_from_old_zero(witness: RunningWitness,
                                                        log: TestLog) -> None:
    answer = await witness.post(log.request(0))
    assert answer.status == 200
    assert answer.headers["Content-Type"] == TEXT
    [stamp] = cosignatures(witness, log.checkpoint(), answer.body)
    assert abs(stamp - time.time()) < 60
    assert await state(witness) == WitnessState(5, log.tree.root(5))
    known = await witness.store.log(ORIGIN)
    assert known is not None and known.checkpoint == log.note()


async def test_cosigns_a_grown_tree_with_a_consistency_proof(witness: RunningWitness,
                                                             log: TestLog) -> None:
    assert (await witness.post(log.request(0))).status == 200
    log.grow(1000)
    answer = await witness.post(log.request(5))
    assert answer.status == 200
    cosignatures(witness, log.checkpoint(), answer.body)
    assert await state(witness) == WitnessState(1000, log.tree.root())
    # The same checkpoint again (old = its size, no proof): cosigned again, fresh time.
    again = await witness.post(log.request(1000))
    assert again.status == 200
    cosignatures(witness, log.checkpoint(), again.body)


async def test_refuses_a_rolled_back_checkpoint(witness: RunningWitness,
                                                log: TestLog) -> None:
    log.grow(12)
    assert (await witness.post(log.request(0))).status == 200
    for old in (0, 5):
        answer = await witness.post(log.request(old, 5))
        assert (answer.status, answer.headers["Content-Type"], answer.body) == (
            409, TLOG_SIZE_CONTENT_TYPE, b"12\n")
    assert_refused(await witness.post(log.request(12, 5)), 400,
                   "old size 12 is larger than the checkpoint's 5")
    assert await state(witness) == WitnessState(12, log.tree.root(12))


async def test_refuses_a_fork_at_the_same_size_with_409(witness: RunningWitness,
                                                        log: TestLog) -> None:
    log.grow(12)
    assert (await witness.post(log.request(0))).status == 200
    fork = TestLog(signer=log.signer, tag="fork ").grow(12)
    body = fork.request(12)
    answer = await witness.post(body)
    assert (answer.status, answer.headers["Content-Type"], answer.body) == (
        409, TLOG_SIZE_CONTENT_TYPE, b"12\n")
    assert await state(witness) == WitnessState(12, log.tree.root(12))
    [kept] = await witness.store.evidence(ORIGIN)
    assert (kept.status, kept.reason, kept.request) == (
        409, "size 12 was cosigned with another root hash", body)
    assert kept.known == WitnessState(12, log.tree.root(12))
    # The same request again is not kept twice; a stale old size is no evidence.
    await witness.post(body)
    await witness.post(fork.request(0))
    assert len(await witness.store.evidence(ORIGIN)) == 1


async def test_refuses_a_larger_inconsistent_tree_with_422(witness: RunningWitness,
                                                           log: TestLog) -> None:
    log.grow(12)
    assert (await witness.post(log.request(0))).status == 200
    fork = TestLog(signer=log.signer, tag="fork ").grow(20)
    assert_refused(await witness.post(fork.request(12)), 422,
                   "old root does not match the proof")
    short = AddCheckpointRequest(12, tuple(fork.tree.consistency_proof(12, 20))[:-1],
                                 fork.note()).to_bytes()
    assert_refused(await witness.post(short), 422,
                   "consistency proof from 12 to 20 must have 4 hashes, got 3")
    log.grow(20)
    wrong_proof = AddCheckpointRequest(12, tuple(fork.tree.consistency_proof(12, 20)),
                                       log.note()).to_bytes()
    assert_refused(await witness.post(wrong_proof), 422, "old root does not match the proof")
    assert await state(witness) == WitnessState(12, log.tree.root(12))
    assert [e.status for e in await witness.store.evidence(ORIGIN)] == [422, 422, 422]


async def test_refuses_a_bad_log_signature_with_403(witness: RunningWitness,
                                                    log: TestLog) -> None:
    impostor = TestLog(signer=Ed25519Signer.generate(ORIGIN)).grow(5)
    assert_refused(await witness.post(impostor.request(0)), 403,
                   "note has no verifiable signatures")
    text, [signature] = parse_note(log.note())
    flipped = bytes([signature.signature[0] ^ 1]) + signature.signature[1:]
    note = format_note(text, [NoteSignature(signature.name, signature.key_id, flipped)])
    tampered = AddCheckpointRequest(0, (), note).to_bytes()
    key = format_key(log.signer.name, log.signer.key_id)
    assert_refused(await witness.post(tampered), 403, f"invalid signature for key {key}")
    assert await state(witness) is None
    assert await witness.store.evidence(ORIGIN) == []


async def test_answers_404_for_an_unknown_origin(witness: RunningWitness, log: TestLog) -> None:
    other = TestLog("other.example/log").grow(3)
    assert_refused(await witness.post(other.request(0)), 404,
                   "unknown log 'other.example/log'")


async def test_malformed_bodies_are_400_with_the_reason(witness: RunningWitness,
                                                        log: TestLog) -> None:
    note = log.note()
    proof_line = b64encode(EMPTY_ROOT).encode() + b"\n"
    cases = {
        b"": "add-checkpoint body ends before the blank line",
        b"old 0\n" + note: "consistency proof line is not base64",  # no blank line
        b"new 0\n\n" + note: "add-checkpoint body must start with 'old <size>'",
        b"old 01\n\n" + note:
            "old size must be a decimal number without leading zeroes, got '01'",
        b"old -1\n\n" + note:
            "old size must be a decimal number without leading zeroes, got '-1'",
        b"old 0\nnot base64!\n\n" + note: "consistency proof line is not base64",
        b"old 0\nAAAA\n\n" + note:
            "consistency proof line must be a 32-byte hash, got 3 bytes",
        b"old 0\n" + proof_line * (MAX_PROOF_LINES + 1) + b"\n" + note:
            f"add-checkpoint body has more than {MAX_PROOF_LINES} consistency proof lines",
        b"old \xff\n\n" + note: "add-checkpoint header is not ASCII",
        b"old 0\n\n": "add-checkpoint request has no checkpoint",
        b"old 0\n\nnot a note\n":
            "note has no signature block (a blank line, then signatures)",
        b"old 0\n\n" + sign_checkpoint(Checkpoint(ORIGIN, 0, EMPTY_ROOT), log.signer):
            "an empty tree is never cosigned",
        b"old 0\n\n" + sign_note(f"{ORIGIN}\n012\nroot\n", log.signer):
            "checkpoint size must be a decimal number without leading zeroes, got '012'",
        b"old 9\n\n" + note: "old size 9 is larger than the checkpoint's 5",
    }
    for body, reason in cases.items():
        assert_refused(await witness.post(body), 400, reason)
    assert_refused(await witness.post(b"old 0\n" + proof_line + b"\n" + note), 422,
                   "the consistency proof from size 0 must be empty")
    assert await state(witness) is None


async def test_http_level_refusals_are_signed_text(witness: RunningWitness) -> None:
    limit = witness.witness_dir.settings().max_body_size
    too_big = await witness.post(b"old 0\n\n" + b"x" * limit)
    assert_refused(too_big, 413, f"Request body too large (limit {limit} bytes)")
    wrong_method = await witness.get("/add-checkpoint")
    assert_refused(wrong_method, 405, "Method not allowed. Must be one of: POST")
    assert_refused(await witness.get("/nothing"), 404, "Not found")


async def test_describes_itself(witness: RunningWitness, log: TestLog) -> None:
    await witness.post(log.request(0))
    answer = await witness.get("/")
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json == {
        "name": "witness.example/w1", "vkey": witness.verifier.vkey(),
        "public-key": witness.key.public_b64, "protocol": "https://c2sp.org/tlog-witness",
        "add-checkpoint": "/add-checkpoint", "logs": [{"origin": ORIGIN, "size": 5}]}


# --- state: durable, locked, kept across removal -------------------------------------------

async def test_removed_log_comes_back_with_its_state(witness: RunningWitness,
                                                     log: TestLog) -> None:
    assert (await witness.post(log.request(0))).status == 200
    assert await witness.store.remove_log(ORIGIN) == 1
    assert_refused(await witness.post(log.request(5)), 404, f"unknown log {ORIGIN!r}")
    await add_log(witness.witness_dir, log)
    answer = await witness.post(log.request(0))
    assert (answer.status, answer.body) == (409, b"5\n")


async def test_concurrent_requests_never_go_backwards_or_cosign_two_roots(
        tmp_path: Path, log: TestLog, witness: RunningWitness) -> None:
    """Many requests at once, from two witness processes' worth of connections (two stores
    on one database): for each old size exactly one wins; the state only grows."""
    log.grow(10)
    assert (await witness.post(log.request(0))).status == 200
    settings = witness.witness_dir.settings()
    second = open_witness_store(settings.database, witness.witness_dir.path)
    await second.open()
    try:
        cosigner = Cosigner(settings.name, witness.key)
        witnesses = [Witness(witness.store, cosigner), Witness(second, cosigner)]
        log.grow(40)
        forks = [TestLog(signer=log.signer, tag=f"fork{i} ").grow(40) for i in range(3)]
        # Every request starts from 10: sizes 11..40 of the real log, and the forks at 40
        # (consistent with nothing the witness holds beyond 10).
        bodies = [log.request(10, size) for size in range(11, 41)]
        bodies += [AddCheckpointRequest(10, tuple(log.tree.consistency_proof(10, 40)),
                                        f.note()).to_bytes() for f in forks]
        answers = await asyncio.gather(*(witnesses[i % 2].add_checkpoint(body)
                                         for i, body in enumerate(bodies)))
        won = [a for a in answers if isinstance(a, Cosigned)]
        assert len(won) == 1
        assert await state(witness) == WitnessState(won[0].checkpoint.size,
                                                    won[0].checkpoint.root)
        assert all(a.status in (409, 422) for a in answers if not isinstance(a, Cosigned))
    finally:
        await second.close()


async def test_state_survives_a_witness_restart(tmp_path: Path) -> None:
    """`chronicle witness serve` in a subprocess (so the worktree's code is what runs):
    killed with SIGKILL after cosigning, restarted, it still refuses to go back."""
    witness_dir = await init_witness_dir(tmp_path / "w")
    log = TestLog().grow(8)
    await add_log(witness_dir, log)
    key = witness_dir.signing_key(witness_dir.settings())
    process = ServerProcess(witness_dir.path, command=("witness", "serve"))
    async with aiohttp.ClientSession() as session:
        try:
            url = await process.start()
            described = await http_request(session, url, key.public, "GET", "/")
            assert described.json["name"] == "witness.example/w1"
            answer = await http_request(session, url, key.public, "POST", "/add-checkpoint",
                                        log.request(0))
            assert answer.status == 200
            await stop_process(process)  # SIGKILL: no graceful anything
            url = await process.start()
            rolled_back = await http_request(session, url, key.public, "POST",
                                             "/add-checkpoint", log.request(0, 3))
            assert (rolled_back.status, rolled_back.body) == (409, b"8\n")
            log.grow(20)
            grown = await http_request(session, url, key.public, "POST", "/add-checkpoint",
                                       log.request(8))
            assert grown.status == 200
            assert await stop_process(process, graceful=True) == 0
        finally:
            await stop_process(process)
    async with open_witness(witness_dir) as store:
        known = await store.log(ORIGIN)
    assert known is not None and known.state == WitnessState(20, log.tree.root())


async def test_serves_behind_the_connection_gate(tmp_path: Path) -> None:
    """The ledger's admission applies: over ``max-connections-per-ip``, a signed 503 (in
    the witness's plain text) and the connection closed."""
    witness_dir = await init_witness_dir(tmp_path / "w", max_connections_per_ip=1)
    key = witness_dir.signing_key(witness_dir.settings())
    process = ServerProcess(witness_dir.path, command=("witness", "serve"))
    try:
        url = urlsplit(await process.start())
        _, first = await asyncio.open_connection(url.hostname, url.port)
        reader, second = await asyncio.open_connection(url.hostname, url.port)
        raw = await asyncio.wait_for(reader.read(), 10)
        head, _, body = raw.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
        assert head.startswith(b"HTTP/1.1 503 ")
        assert (headers["Content-Type"], body) == (TEXT, b"Too many connections; retry later\n")
        assert verify(key.public, body, b64u_decode(headers[SIGNATURE_HEADER], 64))
        for writer in (first, second):
            writer.close()
    finally:
        await stop_process(process)
