"""A ledger with its Merkle tree on, witnessed by two of our own witnesses, end to end.

`serve` runs the witnessing job (leader only): it submits each new checkpoint, and
`GET /chronicle/tlog/checkpoint` serves it with the witnesses' cosignatures. With
`witness-quorum` set, only a checkpoint that many witnesses cosigned is served: a
witness that does not know the log holds publication back (a signed 503), and adding the
log to it releases it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from chronicle.cli.common import open_witness
from chronicle.core.checkpoint import Checkpoint, Cosigner
from chronicle.core.encoding import atom, utcnow
from chronicle.core.note import Ed25519Verifier, open_note
from chronicle.core.sapient import SigningKey
from chronicle.treelog import enable
from tests.helpers import Response, RunningServer, init_data_dir, start_server
from tests.integration.test_tlog import acli
from tests.witness_support import init_witness_dir, start_witness

ORIGIN = "ledger.test/witnessed"
QUIET = {"replicate_interval": "", "cross_sign_interval": "", "scheduled_attestation": ""}


async def served_checkpoint(srv: RunningServer, *, cosigners: int,
                            within: float = 30.0) -> Response:
    """Poll the checkpoint until it carries ``cosigners`` cosignatures (the job's pace)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        answer = await srv.request("GET", "/chronicle/tlog/checkpoint")
        if answer.status == 200 and answer.body.count("\n\u2014 ".encode()) == 1 + cosigners:
            return answer
        assert loop.time() < deadline, (answer.status, answer.body)
        await asyncio.sleep(0.2)


async def test_two_witnesses_cosign_what_the_ledger_serves(tmp_path: Path) -> None:
    data_dir = await init_data_dir(tmp_path / "ledger", **QUIET)
    srv = await start_server(data_dir)
    try:
        report = await enable(srv.ctx.store, srv.ctx.ledger(""), srv.key,
                              data_dir.tlog_key_path(srv.ctx.settings), ORIGIN, clock=utcnow)
    finally:
        await srv.close()
    log_verifier = Ed25519Verifier.from_vkey(report.vkey)

    wa = await start_witness(await init_witness_dir(tmp_path / "wa", "wa.example"))
    wb = await start_witness(await init_witness_dir(tmp_path / "wb", "wb.example"))
    try:
        async with open_witness(wa.witness_dir) as store:
            await store.add_log(ORIGIN, (report.vkey,), atom(utcnow()))
        raw = data_dir.read_raw()
        raw["witnesses"] = [f"{w.url} {w.verifier.vkey()}" for w in (wa, wb)]
        raw["witness-quorum"] = 2
        data_dir.write_raw(raw)

        srv = await start_server(data_dir)
        try:
            alice = await srv.add_client("alice")
            for n in range(5):
                assert (await srv.publish(alice, f"witnessed {n}")).status == 200
            # wb does not know the log: 2 of 2 cannot be met, nothing is served.
            await asyncio.sleep(1.0)
            held = await srv.request("GET", "/chronicle/tlog/checkpoint")
            assert held.status == 503 and held.headers["Retry-After"] == "10"
            assert held.json["message"] == \
                "No checkpoint has been cosigned by 2 witness(es) yet; retry later"

            async with open_witness(wb.witness_dir) as store:
                await store.add_log(ORIGIN, (report.vkey,), atom(utcnow()))
            answer = await served_checkpoint(srv, cosigners=2)
            note = open_note(answer.body, [log_verifier, wa.verifier, wb.verifier])
            assert [s.name for s in note.signatures] == [ORIGIN, "wa.example", "wb.example"]
            checkpoint = Checkpoint.parse(note.text)
            head = await srv.ctx.store.chain("").head()
            assert head is not None and checkpoint.size == head.index + 1
            # A client proves an entry against the checkpoint the witnesses cosigned.
            prove = ("prove", "2", "--url", srv.url, "--server-key", srv.key.public_b64,
                     "--checkpoint-key", report.vkey, "--json")
            code, stdout, stderr = await acli(*prove, "--witness", wa.verifier.vkey(),
                                              "--witness", wb.verifier.vkey())
            assert code == 0, stderr
            proven = json.loads(stdout)
            assert proven["witnesses"] == ["wa.example", "wb.example"]
            assert proven["tree-size"] == checkpoint.size
            stranger = Cosigner("stranger.example", SigningKey.generate()).verifier().vkey()
            code, _, stderr = await acli(*prove, "--witness", stranger)
            assert code == 1
            assert stderr.strip().endswith(
                f"the checkpoint (size {checkpoint.size}) is cosigned by 0 of the 1 "
                "witness(es) required (none)")
            jobs = srv.ctx.jobs
            assert jobs is not None
            assert await jobs.store.jobs.get("witness-size:wa.example") == \
                str(checkpoint.size)

            # The tree grows: the next checkpoint is witnessed too, without a restart.
            for n in range(5, 8):
                assert (await srv.publish(alice, f"witnessed {n}")).status == 200
            size = checkpoint.size + 3
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while True:
                answer = await served_checkpoint(srv, cosigners=2)
                grown = Checkpoint.parse(open_note(
                    answer.body, [log_verifier, wa.verifier, wb.verifier]).text)
                if grown.size == size:
                    break
                assert loop.time() < deadline
                await asyncio.sleep(0.2)
            metrics = (await srv.request("GET", "/metrics")).body.decode()
            assert 'chronicle_witness_submissions_total{status="cosigned",witness="wa.example"}' \
                in metrics
        finally:
            await srv.close()
    finally:
        await wa.close()
        await wb.close()
