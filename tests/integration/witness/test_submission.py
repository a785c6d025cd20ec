"""The log's side of witnessing: the submission client against our witness on loopback
(and a scripted fake for answers ours never gives), and the background pass with its
K-of-N policy over two of our witnesses (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import gzip
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from chronicle.client.witness import (
    MAX_ANSWER,
    MAX_CONFLICTS,
    EmptyTreeError,
    LogSignatureError,
    MalformedRequestError,
    ProofRejectedError,
    UnknownLogError,
    WitnessAheadError,
    WitnessClient,
    WitnessConflictError,
    WitnessForkError,
    WitnessRefused,
    WitnessResponseError,
)
from chronicle.core.checkpoint import (
    TLOG_SIZE_CONTENT_TYPE,
    Checkpoint,
    Cosigner,
    WitnessEndpoint,
    WitnessPolicy,
    WitnessState,
    cosignature_timestamp,
    sign_checkpoint,
)
from chronicle.core.errors import RequestError, TransportError
from chronicle.core.merkle import EMPTY_ROOT
from chronicle.core.note import Ed25519Signer, NoteSignature, open_note, parse_note
from chronicle.replication.witnessing import JobSizes, WitnessingState, witness_pass
from chronicle.store import open_store
from tests.helpers import free_port, init_data_dir
from tests.witness_support import (
    ORIGIN,
    FakeClock,
    FakeLog,
    RunningWitness,
    TestLog,
    add_log,
    init_witness_dir,
    start_witness,
)

NAME = "witness.example/w1"


def client(witness: RunningWitness) -> WitnessClient:
    return WitnessClient(witness.endpoint, witness.session)


async def held(witness: RunningWitness) -> WitnessState | None:
    known = await witness.store.log(ORIGIN)
    return known.state if known else None


# --- the submission client ------------------------------------------------------------------

async def test_submits_across_10000_appends_in_steps(witness: RunningWitness,
                                                     log: TestLog) -> None:
    """From ``old 0`` to 10,000 entries in uneven steps, each cosignature verified; the size
    the witness holds is what the caller keeps, and no step needs a resubmission."""
    steps = random.Random(11)
    policy = WitnessPolicy((witness.verifier,), 1)
    known: int | None = None
    submissions = 0
    started = time.perf_counter()
    while log.size < 10_000:
        log.grow(min(10_000, log.size + steps.choice((1, 2, 3, 7, 64, 255, 256, 257, 1000))))
        submission = await client(witness).submit(log.note(), log.proofs, known)
        assert (submission.witness, submission.size, submission.conflicts) == \
            (NAME, log.size, 0)
        assert policy.check(log.checkpoint(), submission.cosignatures).satisfied
        known = submission.size
        submissions += 1
    elapsed = time.perf_counter() - started
    assert await held(witness) == WitnessState(10_000, log.tree.root())
    assert submissions > 20
    print(f"{submissions} submissions to 10,000 entries in {elapsed:.2f} s")


async def test_a_409_resubmits_from_the_size_the_witness_holds(witness: RunningWitness,
                                                               log: TestLog) -> None:
    log.grow(10)
    assert (await witness.post(log.request(0, 10))).status == 200
    # The caller knows nothing (old 0): the witness says 10, the client proves 10 -> 30.
    log.grow(30)
    submission = await client(witness).submit(log.note(), log.proofs)
    assert (submission.size, submission.conflicts) == (30, 1)
    # The caller believes the witness holds 40 (it holds 30): proved again from 30.
    log.grow(50)
    submission = await client(witness).submit(log.note(), log.proofs, 40)
    assert (submission.size, submission.conflicts) == (50, 1)
    assert await held(witness) == WitnessState(50, log.tree.root())


async def test_a_fork_at_the_witness_size_is_reported(witness: RunningWitness,
                                                      log: TestLog) -> None:
    log.grow(10)
    fork = TestLog(signer=log.signer, tag="fork ").grow(10)
    assert (await witness.post(fork.request(0))).status == 200
    for known in (None, 10):
        with pytest.raises(WitnessForkError) as caught:
            await client(witness).submit(log.note(), log.proofs, known)
        assert (caught.value.message, caught.value.known_size, caught.value.status) == (
            "the witness cosigned another root hash at size 10", 10, 409)
        assert caught.value.diagnostics() == (
            f"witness {NAME} refused (HTTP 409): the witness cosigned another root hash at "
            "size 10")


async def test_a_witness_ahead_of_the_checkpoint_is_reported(witness: RunningWitness,
                                                             log: TestLog) -> None:
    log.grow(100)
    assert (await witness.post(log.request(0))).status == 200
    stale = sign_checkpoint(log.checkpoint(50), log.signer)
    for known in (None, 100):  # learnt from a 409, or known before asking
        with pytest.raises(WitnessAheadError) as caught:
            await client(witness).submit(stale, log.proofs, known)
        assert (caught.value.message, caught.value.known_size) == (
            "the witness holds size 100, more than this checkpoint's 50", 100)


async def test_refusals_are_precise_errors(witness: RunningWitness, log: TestLog) -> None:
    stranger = TestLog("stranger.example/log").grow(3)
    with pytest.raises(UnknownLogError) as unknown:
        await client(witness).submit(stranger.note(), stranger.proofs)
    assert (unknown.value.status, unknown.value.message) == (
        404, "unknown log 'stranger.example/log'")
    impostor = TestLog(signer=Ed25519Signer.generate(ORIGIN)).grow(10)
    with pytest.raises(LogSignatureError) as forged:
        await client(witness).submit(impostor.note(), impostor.proofs)
    assert (forged.value.status, forged.value.message) == (
        403, "note has no verifiable signatures")
    assert (await witness.post(log.grow(10).request(0))).status == 200
    log.grow(20)
    fork = TestLog(signer=log.signer, tag="fork ").grow(20)
    with pytest.raises(ProofRejectedError) as bad_proof:
        await client(witness).submit(log.note(), fork.proofs, 10)
    assert (bad_proof.value.status, bad_proof.value.message) == (
        422, "old root does not match the proof")


async def test_nothing_is_sent_for_an_empty_tree_or_a_non_checkpoint() -> None:
    """Both are refused before any connection (the port is closed: no TransportError)."""
    endpoint = WitnessEndpoint(f"http://127.0.0.1:{free_port()}",
                               Cosigner.generate(NAME).verifier())
    signer = Ed25519Signer.generate(ORIGIN)
    async with aiohttp.ClientSession() as session:
        witness_client = WitnessClient(endpoint, session)
        with pytest.raises(EmptyTreeError) as empty:
            await witness_client.submit(
                sign_checkpoint(Checkpoint(ORIGIN, 0, EMPTY_ROOT), signer), TestLog().proofs)
        assert empty.value.message == "an empty tree is never submitted to a witness"
        with pytest.raises(RequestError) as garbage:
            await witness_client.submit(b"not a note\n", TestLog().proofs)
        assert garbage.value.message == ("not a signed checkpoint: note has no signature "
                                         "block (a blank line, then signatures)")
        with pytest.raises(TransportError) as unreachable:
            await witness_client.submit(TestLog().grow(1).note(), TestLog().proofs)
        assert unreachable.value.message.startswith(
            f"cannot reach witness {NAME} at {endpoint.url}/add-checkpoint: ")


# --- answers our witness never gives: a scripted one ------------------------------------------

Script = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def scripted(answer: Script) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/add-checkpoint", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def reply(status: int, body: bytes, content_type: str = "text/plain",
          **headers: str) -> Script:
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=status, body=body,
                            headers={"Content-Type": content_type, **headers})

    return answer


COSIGNER = Cosigner.generate(NAME)
CHECKPOINT_LOG = TestLog().grow(10)
GOOD = COSIGNER.cosign(CHECKPOINT_LOG.checkpoint(), 1_700_000_000)
FLIPPED = NoteSignature(GOOD.name, GOOD.key_id, GOOD.signature[:-1] + bytes([
    GOOD.signature[-1] ^ 1]))


@pytest.mark.parametrize(("script", "error", "message"), [
    (reply(200, GOOD.line().encode()), None, None),
    (reply(200, Cosigner.generate(NAME).cosign(CHECKPOINT_LOG.checkpoint(), 1).line()
           .encode()), WitnessResponseError, f"witness {NAME}: note has no verifiable "
     "signatures"),
    (reply(200, FLIPPED.line().encode()), WitnessResponseError,
     f"witness {NAME}: invalid signature for key {NAME}+{GOOD.key_id:08x}"),
    (reply(200, b"nonsense"), WitnessResponseError, f"witness {NAME}: cosignature response "
     "must be signature lines ending in a newline"),
    (reply(200, b"x" * (MAX_ANSWER + 1)), WitnessResponseError,
     f"witness {NAME} answered more than {MAX_ANSWER} bytes"),
    (reply(200, gzip.compress(GOOD.line().encode()), **{"Content-Encoding": "gzip"}),
     WitnessResponseError,
     f"witness {NAME} answered compressed (gzip) although identity was asked"),
    (reply(409, b"5\n"), WitnessResponseError,
     f"witness {NAME} answered 409 with text/plain, not {TLOG_SIZE_CONTENT_TYPE}"),
    (reply(409, b"five\n", TLOG_SIZE_CONTENT_TYPE), WitnessResponseError,
     f"witness {NAME}: tree size must be a decimal number without leading zeroes, got "
     "'five'"),
    (reply(409, b"0\n", TLOG_SIZE_CONTENT_TYPE), WitnessResponseError,
     f"witness {NAME} answered 409 with the size it was sent (0)"),
    (reply(400, b"your request is odd\nsecond line\n"), MalformedRequestError,
     "your request is odd"),
    (reply(418, b""), WitnessRefused, "HTTP 418"),
    (reply(503, b"busy\n"), TransportError, f"witness {NAME} answered HTTP 503: busy"),
    (reply(429, b"slow down\n"), TransportError,
     f"witness {NAME} answered HTTP 429: slow down"),
    (reply(302, b"", Location="/elsewhere"), WitnessRefused, "HTTP 302"),
], ids=["good", "other-key", "bad-signature", "not-lines", "too-large", "compressed",
        "409-content-type", "409-size", "409-same-size", "400", "418", "503", "429",
        "redirect"])
async def test_witness_answers_are_checked(script: Script, error: type[Exception] | None,
                                           message: str | None) -> None:
    async with scripted(script) as url, aiohttp.ClientSession() as session:
        witness_client = WitnessClient(WitnessEndpoint(url, COSIGNER.verifier()), session)
        submitting = witness_client.submit(CHECKPOINT_LOG.note(), CHECKPOINT_LOG.proofs)
        if error is None:
            assert (await submitting).cosignatures == (GOOD,)
            return
        with pytest.raises(error) as caught:
            await submitting
        assert caught.value.message == message  # type: ignore[attr-defined]


async def test_a_witness_whose_size_keeps_moving_is_given_up_on() -> None:
    sizes = iter(range(1, 100))

    async def moving(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=409, body=f"{next(sizes)}\n".encode(),
                            headers={"Content-Type": TLOG_SIZE_CONTENT_TYPE})

    async with scripted(moving) as url, aiohttp.ClientSession() as session:
        witness_client = WitnessClient(WitnessEndpoint(url, COSIGNER.verifier()), session)
        with pytest.raises(WitnessConflictError) as caught:
            await witness_client.submit(CHECKPOINT_LOG.note(), CHECKPOINT_LOG.proofs)
    assert type(caught.value) is WitnessConflictError
    assert (caught.value.message, caught.value.known_size) == (
        f"still in conflict after {MAX_CONFLICTS} submissions (the witness holds size "
        f"{MAX_CONFLICTS + 1})", MAX_CONFLICTS + 1)


# --- the background pass: two of our witnesses, K of N --------------------------------------

@contextlib.asynccontextmanager
async def two_witnesses(tmp_path: Path, log: TestLog, *, both_know_the_log: bool = True,
                        clock: FakeClock | None = None) -> AsyncIterator[
                            tuple[RunningWitness, RunningWitness]]:
    clock = clock or FakeClock()
    first = await start_witness(await init_witness_dir(tmp_path / "wa", "wa.example"),
                                clock=clock)
    second = await start_witness(await init_witness_dir(tmp_path / "wb", "wb.example"),
                                 clock=clock)
    try:
        await add_log(first.witness_dir, log)
        if both_know_the_log:
            await add_log(second.witness_dir, log)
        yield first, second
    finally:
        await first.close()
        await second.close()


@contextlib.asynccontextmanager
async def ledger_sizes(tmp_path: Path) -> AsyncIterator[JobSizes]:
    """The witnesses' sizes kept where the job will keep them: a ledger's job_state."""
    data_dir = await init_data_dir(tmp_path / "ledger")
    store = open_store(data_dir.settings().database, data_dir.path)
    await store.open()
    try:
        yield JobSizes(store.jobs)
    finally:
        await store.close()


async def test_two_witnesses_cosign_and_two_of_two_publishes(tmp_path: Path) -> None:
    log = TestLog().grow(100)
    fake = FakeLog(log)
    clock = FakeClock()
    async with two_witnesses(tmp_path, log, clock=clock) as (wa, wb), \
            ledger_sizes(tmp_path) as sizes, aiohttp.ClientSession() as session:
        witnesses = (wa.endpoint, wb.endpoint)
        policy = WitnessPolicy((wa.verifier, wb.verifier), 2)
        state = WitnessingState()

        async def one_pass(now: float) -> object:
            return await witness_pass(fake, witnesses, policy, sizes, state, session=session,
                                      now=now, republish=300.0, rand=lambda: 0.5)

        first = await one_pass(0.0)
        assert [s.witness for s in first.submissions] == ["wa.example", "wb.example"]
        assert (first.published, first.errors, first.delay) == (True, {}, 300.0)
        [(note, quorum)] = fake.published
        assert quorum.satisfied and quorum.cosigners == ("wa.example", "wb.example")
        opened = open_note(note, [log.signer.verifier(), wa.verifier, wb.verifier])
        assert [s.name for s in opened.signatures] == [ORIGIN, "wa.example", "wb.example"]
        assert (await sizes.get("wa.example"), await sizes.get("wb.example")) == (100, 100)
        # Nothing new: nothing submitted, nothing published again.
        idle = await one_pass(10.0)
        assert (idle.submissions, idle.published, idle.delay) == ((), False, 290.0)
        # Idle for the republish interval: the same checkpoint again, fresh cosignatures.
        clock.advance(301)
        republished = await one_pass(301.0)
        assert len(republished.submissions) == 2 and republished.published
        assert fake.published[-1][1].cosignatures != quorum.cosignatures
        assert [cosignature_timestamp(s) for s in fake.published[-1][1].cosignatures] == \
            [cosignature_timestamp(s) + 301 for s in quorum.cosignatures]
        # The tree grows; a fresh job (a restart: nothing in memory) starts each witness
        # from the size kept in the ledger, so no witness answers 409.
        log.grow(1000)
        state = WitnessingState()
        grown = await one_pass(400.0)
        assert [s.conflicts for s in grown.submissions] == [0, 0]
        assert grown.published and fake.published[-1][1].cosigners == ("wa.example",
                                                                        "wb.example")
        assert await held(wa) == await held(wb) == WitnessState(1000, log.tree.root())


async def test_the_quorum_decides_what_is_published(tmp_path: Path) -> None:
    """wb does not know the log yet: 2 of 2 publishes nothing until it does; 1 of 2
    publishes at once."""
    log = TestLog().grow(10)
    async with two_witnesses(tmp_path, log, both_know_the_log=False) as (wa, wb), \
            ledger_sizes(tmp_path) as sizes, aiohttp.ClientSession() as session:
        witnesses = (wa.endpoint, wb.endpoint)
        for quorum, published in ((2, False), (1, True)):
            fake = FakeLog(log)
            state = WitnessingState()
            result = await witness_pass(
                fake, witnesses, WitnessPolicy((wa.verifier, wb.verifier), quorum), sizes,
                state, session=session, now=0.0, retry=10.0, rand=lambda: 0.5)
            assert result.errors == {"wb.example": "witness wb.example refused (HTTP 404): "
                                                   f"unknown log {ORIGIN!r}"}
            assert result.published is published
            assert result.delay == 10.0
            assert result.quorum is not None and result.quorum.cosigners == ("wa.example",)
            assert len(fake.published) == int(published)
        # Two of two: once wb knows the log, the next pass asks wb only, and publishes.
        fake = FakeLog(log)
        state = WitnessingState()
        policy = WitnessPolicy((wa.verifier, wb.verifier), 2)
        failing = await witness_pass(fake, witnesses, policy, sizes, state, session=session,
                                     now=0.0, rand=lambda: 0.5)
        again = await witness_pass(fake, witnesses, policy, sizes, state, session=session,
                                   now=10.0, rand=lambda: 0.5)
        assert (failing.published, again.published, again.delay) == (False, False, 20.0)
        await add_log(wb.witness_dir, log)
        settled = await witness_pass(fake, witnesses, policy, sizes, state, session=session,
                                     now=30.0, rand=lambda: 0.5)
        assert [s.witness for s in settled.submissions] == ["wb.example"]
        assert settled.published and settled.errors == {}
        [(note, quorum)] = fake.published
        assert quorum.cosigners == ("wa.example", "wb.example")
        assert len(parse_note(note)[1]) == 3


async def test_a_pass_without_a_checkpoint_does_nothing(tmp_path: Path) -> None:
    fake = FakeLog(TestLog())
    async with ledger_sizes(tmp_path) as sizes, aiohttp.ClientSession() as session:
        result = await witness_pass(fake, (), WitnessPolicy((), 0), sizes, WitnessingState(),
                                    session=session, now=0.0)
        assert (result.checkpoint, result.submissions, result.published) == (None, (), False)
        # No witnesses, quorum 0: the log's checkpoint is published as it is.
        fake.log.grow(3)
        bare = await witness_pass(fake, (), WitnessPolicy((), 0), sizes, WitnessingState(),
                                  session=session, now=0.0)
        assert bare.published and fake.published[0][0] == fake.log.note()
