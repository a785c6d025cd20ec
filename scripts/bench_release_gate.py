"""Publishing through the release gate vs plain publishing (issue 12: goal >= 0.70).

    python scripts/bench_release_gate.py                      # 5 pairs, c=16, 5000 each
    python scripts/bench_release_gate.py --runs 7 -n 10000 --levels 16 64
    python scripts/bench_release_gate.py --append --runs 5 -n 5000      # the sequencer alone

``--runs`` interleaved pairs of fresh ledgers (``chronicle serve``, SQLite; the order
flipped every run so drift hits both alike):

- ``plain``: a ledger without the gate, loaded with ``-n`` publishes of random bodies as
  long as a release message;
- ``gate``: ``chronicle release enable`` on a fresh ledger, the registry's vouching for one
  vendor published, then ``-n`` publishes of that vendor's signed ``update`` messages
  (each a new version, so every one is judged, accepted and its state rows written).

``--append``: the sequencer alone, in this process (no HTTP, no generator): ``--runs``
interleaved pairs of fresh ledgers, plain then gated, each appending ``-n`` pre-signed
bodies in concurrent groups of 16 (batches as at c=16); reports CPU µs per append.

Every request is signed before the run (Sapient and, for releases, op-sig); the generator
(scripts/loadgen.py) checks every answer's signature and receipt. Reports each run's
req/s, the medians, and their ratio. Afterwards the gated ledger's state must hold exactly
the releases acknowledged (``release status``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchutil
import loadgen
import uvloop
from loadgen import LoadResult, Request

from chronicle.core.encoding import b64u_decode, b64u_encode
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, SigningKey
from chronicle.release.messages import AddKey, Metadata, Update, sign_message

CORE = SigningKey.from_seed(hashlib.sha256(b"bench-core").digest())
VENDOR = SigningKey.from_seed(hashlib.sha256(b"bench-vendor").digest())


def _release(n: int) -> bytes:
    meta = Metadata(repo="https://github.com/acme/widget",
                    commit=hashlib.sha1(str(n).encode(), usedforsecurity=False).hexdigest(),
                    tree="b3t1:" + b64u_encode(hashlib.sha256(str(n).encode()).digest()))
    return sign_message(Update("acme", f"pkg{n % 50}", f"{n // 50}.{n % 7}.{n % 3}", meta),
                        VENDOR)


def _signed(client: SigningKey, client_id: str, body: bytes) -> Request:
    return Request("POST", "/chronicle/publish", body, {
        CLIENT_HEADER: client_id, SIGNATURE_HEADER: client.sign_b64(body),
        "Content-Type": "application/json"})


def _run(args: argparse.Namespace, base: Path, gate: bool, level: int,
         run_no: int) -> dict[str, Any]:
    data_dir = base / f"run-{run_no}-{'gate' if gate else 'plain'}-c{level}"
    server_key = benchutil.init_data_dir(data_dir, {"publish-new-clients": "false"})
    client = SigningKey.generate()
    client_id = benchutil.add_client(data_dir, client.public_b64)
    if gate:
        benchutil.chronicle_cli("release", "enable", "--data-dir", str(data_dir),
                                "--core-vendor", "registry", "--core-key", CORE.public_b64)
    server = benchutil.chronicle_server(data_dir)
    server.start()
    checker = loadgen.publish_checker(b64u_decode(server_key, 32))
    size = len(_release(0))
    try:
        if gate:
            vouch = [_signed(client, client_id,
                             sign_message(AddKey("acme", VENDOR.public_b64), CORE))]
            setup = uvloop.run(loadgen.run_load(server.url, vouch, 1, checker, label="vouch"))
            assert setup.errors == 0, setup.error_kinds
        made = [0]   # releases signed so far: a measurement attempt repeated sends new ones

        def prepare() -> list[Request]:
            total = args.requests + args.warmup
            bodies = [_release(made[0] + i) for i in range(total)] if gate else \
                loadgen.random_bodies(total, size)
            made[0] += total
            return [_signed(client, client_id, b) for b in bodies]

        def run(reqs: list[Request]) -> LoadResult:
            return uvloop.run(loadgen.run_load(server.url, reqs[args.warmup:], level, checker,
                                               label="gate" if gate else "plain",
                                               time_cap=args.time_cap,
                                               warmup=reqs[:args.warmup]))

        row, attempts = benchutil.measured(prepare, run, server.pid,
                                           quiet_wait=args.quiet_wait, retries=args.retries,
                                           max_other=args.max_other)
    finally:
        server.stop()
    if gate:
        status = json.loads(benchutil.chronicle_cli("release", "status", "--data-dir",
                                                    str(data_dir), "--json"))
        acknowledged = sum(a["ok"] + args.warmup for a in attempts)
        row["state_updates"] = status["updates"]
        row["state_matches"] = status["updates"] == acknowledged
    shutil.rmtree(data_dir, ignore_errors=True)
    # The server's CPU is measured over the warm-up requests too.
    row.update(gate=gate, run=run_no, body_bytes=size, cpu_ms_per_publish=round(
        1000 * row["server_cpu_s"] / (row["requests"] + args.warmup), 3))
    return row


def _append_run(base: Path, gate: bool, count: int, run_no: int) -> dict[str, Any]:
    """CPU and wall seconds of appending ``count`` pre-signed bodies through a Ledger."""
    import asyncio
    import time

    from chronicle.core.encoding import utcnow
    from chronicle.ledger import Ledger
    from chronicle.releaselog import enable
    from chronicle.store import open_store

    async def go() -> dict[str, Any]:
        where = base / f"append-{run_no}-{'gate' if gate else 'plain'}"
        where.mkdir(parents=True)
        store = open_store("sqlite:chronicle.db", where)
        await store.create_schema()
        await store.ensure_instance("")
        server, client = SigningKey.generate(), SigningKey.generate()
        ledger = Ledger(store, "")
        try:
            size = len(_release(0))
            if gate:
                await enable(store, ledger, server, "registry", CORE.public_b64, clock=utcnow)
                vouch = sign_message(AddKey("acme", VENDOR.public_b64), CORE)
                await ledger.append(vouch, client.public, client.sign(vouch))
                bodies = [_release(i) for i in range(count)]
            else:
                bodies = loadgen.random_bodies(count, size)
            signed = [(b, client.sign(b)) for b in bodies]
            cpu, wall = time.process_time(), time.monotonic()
            for i in range(0, count, 16):
                await asyncio.gather(*(ledger.append(b, client.public, sig)
                                       for b, sig in signed[i:i + 16]))
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        finally:
            await ledger.stop()
            await store.close()
        return {"gate": gate, "run": run_no, "appends": count,
                "cpu_us_per_append": round(1e6 * cpu / count, 1),
                "wall_us_per_append": round(1e6 * wall / count, 1)}

    return asyncio.run(go())


def bench_append(args: argparse.Namespace, base: Path) -> list[dict[str, Any]]:
    rows = []
    for run_no in range(args.runs):
        for gate in ((False, True) if run_no % 2 == 0 else (True, False)):
            row = _append_run(base, gate, args.requests, run_no)
            print(f"run {run_no + 1}/{args.runs} {'gate' if gate else 'plain'}: "
                  f"{row['cpu_us_per_append']} us CPU, {row['wall_us_per_append']} us wall "
                  "per append", flush=True)
            rows.append(row)
    for what in ("cpu_us_per_append", "wall_us_per_append"):
        plain = statistics.median(r[what] for r in rows if not r["gate"])
        gated = statistics.median(r[what] for r in rows if r["gate"])
        print(f"median {what.replace('_', ' ')}: plain {plain:.1f}, gate {gated:.1f} "
              f"(+{gated - plain:.1f})")
    return rows


def bench(args: argparse.Namespace, base: Path) -> list[dict[str, Any]]:
    rows = []
    for level in args.levels:
        for run_no in range(args.runs):
            for gate in ((False, True) if run_no % 2 == 0 else (True, False)):
                print(f"c={level} run {run_no + 1}/{args.runs}, "
                      f"{'gate' if gate else 'plain'}:", flush=True)
                rows.append(_run(args, base, gate, level, run_no))
    return rows


def summary(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| concurrency | publishing | runs | req/s (each run) | median req/s | server CPU "
           "ms per publish (each run) | median CPU ms |", "|---:|---|---:|---|---:|---|---:|"]
    for level in sorted({r["concurrency"] for r in rows}):
        rps, cpu = {}, {}
        for gate in (False, True):
            mine = [r for r in rows if r["concurrency"] == level and r["gate"] is gate]
            rps[gate] = statistics.median(r["rps"] for r in mine)
            cpu[gate] = statistics.median(r["cpu_ms_per_publish"] for r in mine)
            each = ", ".join(f"{r['rps']:.0f}" for r in mine)
            each_cpu = ", ".join(f"{r['cpu_ms_per_publish']:.3f}" for r in mine)
            out.append(f"| {level} | {'release gate' if gate else 'plain'} | {len(mine)} | "
                       f"{each} | {rps[gate]:.0f} | {each_cpu} | {cpu[gate]:.3f} |")
        out.append(f"\nc={level}: gate/plain throughput = {rps[True] / rps[False]:.2f} "
                   f"(median {rps[True]:.0f} vs {rps[False]:.0f} req/s); server CPU per "
                   f"publish {cpu[True]:.3f} vs {cpu[False]:.3f} ms (plain/gate = "
                   f"{cpu[False] / cpu[True]:.2f})\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--levels", type=int, nargs="+", default=[16])
    parser.add_argument("--runs", type=int, default=5, help="interleaved pairs of runs")
    parser.add_argument("--time-cap", type=float, default=180.0)
    parser.add_argument("--quiet-wait", type=float, default=30.0)
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--max-other", type=float, default=0.15)
    parser.add_argument("--append", action="store_true",
                        help="measure the sequencer alone, in this process")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="chronicle-bench-release-", dir="/tmp"))
    started = datetime.now(UTC)
    print(f"# bench_release_gate {started:%Y-%m-%d %H:%M} UTC; {benchutil.machine_summary()}",
          flush=True)
    try:
        if args.append:
            rows = bench_append(args, base)
        else:
            rows = bench(args, base)
            print("\n".join(summary(rows)))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json_out:
        args.json_out.write_text(json.dumps({"started": started.isoformat(),
                                             "machine": benchutil.machine_summary(),
                                             "rows": rows}, indent=2))
    bad = [r for r in rows if r.get("errors") or r.get("state_matches") is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
