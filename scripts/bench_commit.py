"""Group commits through the sequencer alone (no HTTP): what one batch costs the store.

    python scripts/bench_commit.py --backend postgres --commits 1000 --batch 8
    python scripts/bench_commit.py --ab /tmp/base --runs 5 --backend sqlite postgres

Each run makes a fresh ledger (``chronicle init``; on PostgreSQL in a throwaway database),
enables the Merkle tree, then appends ``--commits`` batches of ``--batch`` pre-signed
entries through :class:`~chronicle.ledger.Ledger` in this process, one batch at a time
(each batch is one group commit), and reports the wall time per group commit (median and
p90) and this process's CPU per entry. It times the storage path the publish endpoint
waits on, without the HTTP server and the load generator competing for the 2 cores.

``--ab DIR`` runs this script in subprocesses instead, alternating a chronicle package in
DIR (A) with the one this interpreter imports (B), ``--runs`` pairs, and prints the
medians and the paired ratios B/A.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchutil
import uvloop

from chronicle.core.sapient import SigningKey

ORIGIN = "bench.example/chronicle/tlog"


def one_run(backend: str, commits: int, batch: int, admin_url: str) -> dict[str, Any]:
    from chronicle.config import DataDir
    from chronicle.ledger import Ledger
    from chronicle.store import open_store

    base = Path(tempfile.mkdtemp(prefix="chronicle-bench-commit-", dir="/tmp"))
    pg = benchutil.PostgresDatabase(admin_url) if backend == "postgres" else None
    try:
        database = pg.create({}) if pg is not None else None
        benchutil.init_data_dir(base / "data", {"publish-new-clients": "false"},
                                database=database)
        benchutil.chronicle_cli("tlog", "enable", "--data-dir", str(base / "data"),
                                "--origin", ORIGIN, "--json")
        key = SigningKey.generate()
        signed = [(b, key.sign(b)) for b in
                  (f"commit bench {i} ".encode().ljust(256, b".")
                   for i in range(commits * batch))]

        async def go() -> tuple[list[float], float]:
            dd = DataDir(base / "data")
            settings = dd.settings()
            store = open_store(settings.database, dd.path)
            await store.open()
            ledger = Ledger(store, "", max_batch=max(batch, settings.max_batch))
            times: list[float] = []
            try:
                cpu0 = time.process_time()
                for start in range(0, len(signed), batch):
                    t0 = time.perf_counter()
                    await asyncio.gather(*(ledger.append(b, key.public, s)
                                           for b, s in signed[start:start + batch]))
                    times.append(time.perf_counter() - t0)
                return times, time.process_time() - cpu0
            finally:
                await ledger.stop()
                await store.close()

        times, cpu = uvloop.run(go())
    finally:
        if pg is not None:
            pg.drop()
        shutil.rmtree(base, ignore_errors=True)
    times.sort()
    return {"backend": backend, "commits": commits, "batch": batch,
            "commit_ms_p50": round(1000 * statistics.median(times), 3),
            "commit_ms_p90": round(1000 * times[int(0.9 * len(times))], 3),
            "cpu_us_per_entry": round(1e6 * cpu / (commits * batch), 1)}


def ab(args: argparse.Namespace) -> int:
    results: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    for pair in range(args.runs):
        for side in (("A", "B") if pair % 2 == 0 else ("B", "A")):
            env = dict(os.environ)
            if side == "A":
                env["PYTHONPATH"] = str(args.ab)
            for backend in args.backend:
                out = subprocess.run(
                    [sys.executable, __file__, "--backend", backend, "--commits",
                     str(args.commits), "--batch", str(args.batch), "--json"],
                    env=env, capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["pair"] = pair
                results[side].append(row)
                print(f"pair {pair} {side} {backend}: {row['commit_ms_p50']} ms p50, "
                      f"{row['commit_ms_p90']} ms p90 per group commit, "
                      f"{row['cpu_us_per_entry']} us CPU per entry", flush=True)
    print("\n| backend | figure | A median | B median | B/A (paired median) |")
    print("|---|---|---:|---:|---:|")
    for backend in args.backend:
        a = [r for r in results["A"] if r["backend"] == backend]
        b = [r for r in results["B"] if r["backend"] == backend]
        for fig in ("commit_ms_p50", "commit_ms_p90", "cpu_us_per_entry"):
            ratio = statistics.median(y[fig] / x[fig] for x, y in zip(a, b, strict=True))
            print(f"| {backend} | {fig} | {statistics.median(r[fig] for r in a)} "
                  f"| {statistics.median(r[fig] for r in b)} | {ratio:.2f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", nargs="+", choices=["sqlite", "postgres"],
                        default=["sqlite"])
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8, help="entries per group commit")
    parser.add_argument("--pg-admin-url", default=benchutil.PG_ADMIN_URL)
    parser.add_argument("--ab", type=Path, metavar="DIR",
                        help="alternate with the chronicle package in DIR (side A)")
    parser.add_argument("--runs", type=int, default=5, help="--ab: pairs of runs")
    parser.add_argument("--json", action="store_true", help="one JSON line per backend")
    args = parser.parse_args(argv)
    if args.ab is not None:
        return ab(args)
    for backend in args.backend:
        row = one_run(backend, args.commits, args.batch, args.pg_admin_url)
        print(json.dumps(row) if args.json else
              f"{backend}: {row['commit_ms_p50']} ms p50, {row['commit_ms_p90']} ms p90 per "
              f"group commit of {args.batch}; {row['cpu_us_per_entry']} us CPU per entry "
              f"({benchutil.code_summary()})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
