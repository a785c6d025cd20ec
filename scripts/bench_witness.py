"""Throughput of ``chronicle witness serve``: add-checkpoint requests per second.

Creates a witness directory (SQLite, or ``--database postgresql://…`` on a fresh
database), ``--logs`` logs with their own keys, starts ``chronicle witness serve``, and
has one client per log submit ``--requests`` checkpoints each, every one a tree grown by
``--step`` entries with its consistency proof from the last cosigned size. Every answer
must be a 200 whose cosignature verifies with the witness's key. Each request is a
durable commit (SQLite ``synchronous=FULL``; PostgreSQL's default) before it is answered.

    PYTHONPATH=. python scripts/bench_witness.py
    PYTHONPATH=. python scripts/bench_witness.py --logs 16 --requests 200 --database pg
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from benchutil import CHRONICLE, PostgresDatabase, ServerProcess, chronicle_cli, machine_summary

from chronicle.core.checkpoint import (
    AddCheckpointRequest,
    Checkpoint,
    CosignatureVerifier,
    WitnessPolicy,
    parse_signature_lines,
    sign_checkpoint,
)
from chronicle.core.merkle import MemoryHashes, leaf_hash
from chronicle.core.note import Ed25519Signer


async def one_log(session: aiohttp.ClientSession, url: str, signer: Ed25519Signer,
                  policy: WitnessPolicy, requests: int, step: int) -> list[float]:
    """Submit ``requests`` growing checkpoints of one log; the latency of each."""
    tree = MemoryHashes()
    latencies = []
    old = 0
    for _ in range(requests):
        for _ in range(step):
            tree.append(leaf_hash(f"{signer.name} {tree.size}".encode()))
        checkpoint = Checkpoint(signer.name, tree.size, tree.root())
        proof = tuple(tree.consistency_proof(old, tree.size)) if old else ()
        body = AddCheckpointRequest(old, proof, sign_checkpoint(checkpoint, signer)).to_bytes()
        started = time.perf_counter()
        async with session.post(f"{url}/add-checkpoint", data=body) as resp:
            answer = await resp.read()
        latencies.append(time.perf_counter() - started)
        if resp.status != 200 or not policy.check(checkpoint,
                                                  parse_signature_lines(answer)).satisfied:
            raise RuntimeError(f"{signer.name}: HTTP {resp.status} {answer[:200]!r}")
        old = tree.size
    return latencies


async def load(url: str, signers: list[Ed25519Signer], policy: WitnessPolicy, requests: int,
               step: int) -> tuple[float, list[float]]:
    connector = aiohttp.TCPConnector(limit=len(signers))
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        results = await asyncio.gather(*(one_log(session, url, s, policy, requests, step)
                                         for s in signers))
        elapsed = time.perf_counter() - started
    return elapsed, [x for r in results for x in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=int, default=16, help="logs, one client each")
    parser.add_argument("--requests", type=int, default=200, help="checkpoints per log")
    parser.add_argument("--step", type=int, default=10, help="entries added per checkpoint")
    parser.add_argument("--database", default="sqlite",
                        help="sqlite, pg (a fresh database on the local server), or a URL")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-witness-"))
    pg = PostgresDatabase() if args.database == "pg" else None
    database = pg.create() if pg else (None if args.database == "sqlite" else args.database)
    server = None
    try:
        witness_dir = work / "witness"
        init = json.loads(chronicle_cli("witness", "init", "--data-dir", str(witness_dir),
                                        "--name", "bench.example/witness", "--json",
                                        *(["--database", database] if database else [])))
        policy = WitnessPolicy((CosignatureVerifier.from_vkey(init["vkey"]),), 1)
        signers = [Ed25519Signer.generate(f"log{i}.example/tlog") for i in range(args.logs)]
        for signer in signers:
            chronicle_cli("witness", "add-log", "--data-dir", str(witness_dir), "--origin",
                          signer.name, "--vkey", signer.vkey())
        server = ServerProcess([*CHRONICLE, "witness", "serve", "--data-dir",
                                str(witness_dir), "--port", "0"], name="witness")
        url = server.start()
        elapsed, latencies = asyncio.run(load(url, signers, policy, args.requests, args.step))
        latencies.sort()
        total = len(latencies)
        print(json.dumps({
            "backend": "postgresql" if database else "sqlite", "logs": args.logs,
            "requests": total, "seconds": round(elapsed, 2),
            "requests-per-second": round(total / elapsed),
            "latency-ms": {"p50": round(1000 * statistics.median(latencies), 2),
                           "p99": round(1000 * latencies[int(total * 0.99) - 1], 2)},
            "machine": machine_summary()}, indent=2))
    finally:
        if server is not None:
            server.stop()
        if pg is not None:
            pg.drop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
