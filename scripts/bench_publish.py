"""Publish throughput: chronicle serve vs. the crypto-only ceiling, at concurrency 1/16/64.

For each concurrency: start scripts/ceiling_server.py, load it; start a fresh
``chronicle serve`` (new data dir, one registered client), load it with the same
generator. Each server is its own subprocess; the generator runs in this process and
shares the machine's cores with the server (it verifies every answer's signature).

    python scripts/bench_publish.py                  # 5000 timed requests per run
    python scripts/bench_publish.py -n 20000 --levels 16 --json-out /tmp/pub.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from benchutil import (
    Profiler,
    ServerProcess,
    add_client,
    ceiling_server,
    chronicle_server,
    init_data_dir,
    machine_summary,
    measured,
    proc_status,
)
from loadgen import LoadResult, Request, prepare_publishes, publish_checker, run_load

from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import SigningKey


def _measure(server: ServerProcess, key: SigningKey, client_id: str, concurrency: int,
             args: argparse.Namespace, label: str) -> dict[str, Any]:
    """Pre-sign, load ``server`` (already started); retry if other processes disturbed it."""
    server_pk = b64u_decode(server.server_key, 32, what="server key")

    def prepare() -> list[Request]:
        return prepare_publishes(key, client_id, args.requests + args.warmup,
                                 size=args.body_size)

    def run(reqs: list[Request]) -> LoadResult:
        return uvloop.run(run_load(server.url, reqs[args.warmup:], concurrency,
                                   publish_checker(server_pk), label=label,
                                   time_cap=args.time_cap, warmup=reqs[:args.warmup]))

    best, attempts = measured(prepare, run, server.pid, quiet_wait=args.quiet_wait,
                              retries=args.retries, max_other=args.max_other)
    best["published_all_attempts"] = sum(
        a["ok"] + args.warmup - sum(v for k, v in a["error_kinds"].items()
                                    if k.startswith("warmup:"))
        for a in attempts)
    best["server_peak_rss_mb"] = round(proc_status(server.pid)["VmHWM"] / 1024, 1)
    return best


def run_level(concurrency: int, key: SigningKey, args: argparse.Namespace,
              base: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    ceiling = ceiling_server("bench-client", key.public_b64)
    ceiling.start()
    try:
        rows.append(_measure(ceiling, key, "bench-client", concurrency, args, "ceiling"))
    finally:
        ceiling.stop()

    data_dir = base / f"publish-c{concurrency}"
    server_key = init_data_dir(data_dir, {"publish-new-clients": "false"})
    client_id = add_client(data_dir, key.public_b64)
    chronicle = chronicle_server(data_dir)
    chronicle.start()
    chronicle.server_key = server_key
    profiler = None
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        profiler = Profiler(chronicle.pid, args.profile / f"chronicle-publish-c{concurrency}.txt",
                            idle=True)
    try:
        row = _measure(chronicle, key, client_id, concurrency, args, "chronicle")
    finally:
        if profiler is not None:
            written = profiler.stop()
            print(f"  profile: {written}", flush=True)
        code = chronicle.stop()
    with sqlite3.connect(data_dir / "chronicle.db") as db:
        stored = db.execute("SELECT count(*) FROM entries").fetchone()[0]
    row["stored_entries"] = stored
    row["exit_code"] = code
    expected = row["published_all_attempts"]
    if stored != expected:
        print(f"  !! chronicle stored {stored} entries, expected {expected}", flush=True)
    rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    ceilings = {r["concurrency"]: r["rps"] for r in rows if r["label"] == "ceiling"}
    lines = ["| target | concurrency | requests | req/s | p50 ms | p90 ms | p99 ms | max ms "
             "| errors | chronicle/ceiling | server CPU s | generator CPU s | others' share "
             "| attempts |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = ""
        if r["label"] == "chronicle" and ceilings.get(r["concurrency"]):
            ratio = f"{100 * r['rps'] / ceilings[r['concurrency']]:.0f}%"
        lines.append(f"| {r['label']} | {r['concurrency']} | {r['requests']} | {r['rps']:.0f} "
                     f"| {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} "
                     f"| {r['max_ms']:.2f} | {r['errors']} | {ratio} | {r['server_cpu_s']} "
                     f"| {r['client_cpu_s']} | {r['other_share']:.0%} | {r['attempts']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=5000,
                        help="timed requests per target and level")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests first")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--body-size", type=int, default=256)
    parser.add_argument("--time-cap", type=float, default=180.0, help="seconds per run")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="wait up to this many seconds for an idle machine before each "
                             "run (0: don't)")
    parser.add_argument("--retries", type=int, default=2,
                        help="measure again (at most this often) when other processes used "
                             "more than --max-other of the machine during a run")
    parser.add_argument("--max-other", type=float, default=0.10)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the data dirs")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record py-spy profiles (collapsed stacks, --idle --threads) of "
                             "each chronicle server into DIR (slows the server a little)")
    args = parser.parse_args(argv)

    key = SigningKey.generate()  # throwaway client key
    base = Path(tempfile.mkdtemp(prefix="chronicle-bench-publish-", dir="/tmp"))
    started = datetime.now(UTC)
    print(f"# bench_publish {started:%Y-%m-%d %H:%M} UTC; {machine_summary()}; "
          f"{args.requests} timed + {args.warmup} warm-up requests, "
          f"{args.body_size}-byte bodies; data under {base}", flush=True)
    rows: list[dict[str, Any]] = []
    try:
        for level in args.levels:
            print(f"concurrency {level}:", flush=True)
            rows.extend(run_level(level, key, args, base))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps({"started": started.isoformat(),
                                             "machine": machine_summary(),
                                             "args": {k: str(v) for k, v in vars(args).items()},
                                             "rows": rows}, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
