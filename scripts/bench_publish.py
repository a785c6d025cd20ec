"""Publish throughput: chronicle serve vs. the crypto-only ceiling, per backend and process count.

For each concurrency level and each process count N (``--workers``): start
scripts/ceiling_server.py with N processes and load it; then, for each backend
(``--backend sqlite postgres``), a fresh ``chronicle serve --workers N`` (new data dir,
for PostgreSQL a new database, dropped afterwards; one registered client), loaded with the
same generator. With ``--durable-floor`` the ceiling server also runs a second time as
the *durable floor* (``--durable``: every entry appended to a file and answered after one
``fdatasync`` per group), what any server keeping the durable-before-answer guarantee is
bounded by here. The generator runs in this process and shares the machine's cores with
the servers (and with PostgreSQL); it verifies every answer's signature and receipt.
Afterwards the database must hold exactly the acknowledged entries: one row per receipt,
with the receipt's currhash, indexes 0..n-1 and every prevhash linking to the row before.

    python scripts/bench_publish.py                      # SQLite, 1 process, c=1/16/64
    python scripts/bench_publish.py --backend sqlite postgres --workers 1 2 --levels 16 64
    python scripts/bench_publish.py -n 20000 --levels 16 --profile /tmp/prof
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from benchutil import (
    PG_ADMIN_URL,
    PostgresDatabase,
    Profiler,
    ServerProcess,
    add_client,
    ceiling_server,
    chronicle_cli,
    chronicle_server,
    init_data_dir,
    machine_summary,
    measured,
    postgres_pids,
    tree_peak_rss_mb,
)
from loadgen import LoadResult, Request, prepare_publishes, publish_checker, run_load

from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import SigningKey

C16 = 16  # the concurrency the targets are stated for


def _measure(server: ServerProcess, key: SigningKey, client_id: str, concurrency: int,
             args: argparse.Namespace, label: str, receipts: dict[str, str] | None = None,
             db_pids: Callable[[], list[int]] | None = None) -> dict[str, Any]:
    """Pre-sign, load ``server`` (already started); retry if other processes disturbed it."""
    server_pk = b64u_decode(server.server_key, 32, what="server key")
    checker = publish_checker(server_pk, receipts)

    def prepare() -> list[Request]:
        return prepare_publishes(key, client_id, args.requests + args.warmup,
                                 size=args.body_size)

    def run(reqs: list[Request]) -> LoadResult:
        return uvloop.run(run_load(server.url, reqs[args.warmup:], concurrency, checker,
                                   label=label, time_cap=args.time_cap,
                                   warmup=reqs[:args.warmup]))

    best, _ = measured(prepare, run, server.pid, db_pids=db_pids, quiet_wait=args.quiet_wait,
                       retries=args.retries, max_other=args.max_other)
    best["server_peak_rss_mb"], best["server_peak_rss_sum_mb"] = tree_peak_rss_mb(server.pid)
    return best


def _profiler(server: ServerProcess, name: str, workers: int,
              args: argparse.Namespace) -> Profiler | None:
    if not args.profile:
        return None
    args.profile.mkdir(parents=True, exist_ok=True)
    return Profiler(server.pid, args.profile / f"publish-{name}-{args.profile_mode}.txt",
                    idle=args.profile_mode == "wall", subprocesses=workers > 1)


# --- what the database holds afterwards ------------------------------------------------------

Row = tuple[int, bytes | None, bytes, bytes]  # idx, prevhash, currhash, signature


def _rows_sqlite(path: Path) -> list[Row]:
    with sqlite3.connect(path) as db:
        return [(i, bytes(p) if p is not None else None, bytes(c), bytes(s)) for i, p, c, s in
                db.execute("SELECT idx, prevhash, currhash, signature FROM entries "
                           "ORDER BY instance, idx")]


def _rows_postgres(url: str) -> list[Row]:
    import asyncpg

    async def go() -> list[Row]:
        conn = await asyncpg.connect(url, timeout=30)
        try:
            recs = await conn.fetch("SELECT idx, prevhash, currhash, signature FROM entries "
                                    "ORDER BY instance, idx", timeout=300)
        finally:
            await conn.close()
        return [(r[0], bytes(r[1]) if r[1] is not None else None, bytes(r[2]), bytes(r[3]))
                for r in recs]

    return asyncio.run(go())


def check_stored(rows: list[Row], receipts: dict[str, str], before: int = 0) -> list[str]:
    """The stored chain is exactly the ``before`` entries the set-up made (the tree's
    announcement) followed by the acknowledged publishes, gap-free and linked."""
    acked = {b64u_decode(sig, 64): b64u_decode(curr, 32) for sig, curr in receipts.items()}
    problems: list[str] = []
    if len(rows) != before + len(acked):
        problems.append(f"{len(rows)} entries stored, {before} before the run and "
                        f"{len(acked)} acknowledged")
    prev: bytes | None = None
    unacked = wrong = 0
    for n, (idx, prevhash, currhash, signature) in enumerate(rows):
        if idx != n:
            problems.append(f"index {idx} at position {n}: the chain has a gap")
            break
        if prevhash != prev:
            problems.append(f"entry {idx}: prevhash does not link to entry {idx - 1}")
            break
        prev = currhash
        receipt = acked.get(signature)
        if receipt is None and n < before:
            continue
        if receipt is None:
            unacked += 1
        elif receipt != currhash:
            wrong += 1
    if unacked:
        problems.append(f"{unacked} stored entries were never acknowledged")
    if wrong:
        problems.append(f"{wrong} stored entries differ from their receipt's currhash")
    return problems


# --- one configuration -----------------------------------------------------------------------

def run_ceiling(concurrency: int, workers: int, key: SigningKey,
                args: argparse.Namespace, durable: Path | None = None) -> dict[str, Any]:
    """The ceiling server, or with ``durable`` (a fresh directory) the durable floor."""
    label = "ceiling" if durable is None else "floor"
    ceiling = ceiling_server("bench-client", key.public_b64, workers, durable)
    ceiling.start()
    profiler = _profiler(ceiling, f"{label}-w{workers}-c{concurrency}", workers, args)
    try:
        row = _measure(ceiling, key, "bench-client", concurrency, args, label)
    finally:
        if profiler is not None:
            print(f"  profile: {profiler.stop()}", flush=True)
        row_exit = ceiling.stop()
    row.update(backend="-", workers=workers, exit_code=row_exit, stored_problems=[])
    return row


def run_chronicle(concurrency: int, workers: int, backend: str, key: SigningKey,
                  args: argparse.Namespace, base: Path) -> dict[str, Any]:
    name = f"{backend}-w{workers}-c{concurrency}"
    data_dir = base / name
    pg = PostgresDatabase(args.pg_admin_url) if backend == "postgres" else None
    try:
        database = pg.create(args.pg_setting) if pg is not None else None
        server_key = init_data_dir(data_dir, {"publish-new-clients": "false"},
                                   database=database)
        client_id = add_client(data_dir, key.public_b64)
        if args.tlog:
            chronicle_cli("tlog", "enable", "--data-dir", str(data_dir), "--origin",
                          "bench.example/chronicle/tlog", "--json", timeout=600)
        server = chronicle_server(data_dir, workers)
        server.start()
        server.server_key = server_key
        profiler = _profiler(server, f"chronicle-{name}", workers, args)
        receipts: dict[str, str] = {}
        db_pids = (lambda: postgres_pids(pg.name)) if pg is not None else None
        try:
            row = _measure(server, key, client_id, concurrency, args, "chronicle", receipts,
                           db_pids)
        finally:
            if profiler is not None:
                print(f"  profile: {profiler.stop()}", flush=True)
            code = server.stop()
        rows = (_rows_postgres(pg.url) if pg is not None
                else _rows_sqlite(data_dir / "chronicle.db"))
    finally:
        if pg is not None and not args.keep:
            pg.drop()
    problems = check_stored(rows, receipts, before=1 if args.tlog else 0)
    row.update(backend=backend, workers=workers, exit_code=code, stored_entries=len(rows),
               acknowledged=len(receipts), stored_problems=problems)
    if problems:
        print(f"  !! {name}: {'; '.join(problems)}", flush=True)
    else:
        print(f"  database holds exactly the {len(receipts)} acknowledged entries, "
              f"chain gap-free and linked", flush=True)
    return row


# --- output ------------------------------------------------------------------------------------

def _ratio(a: float, b: float | None) -> str:
    return f"{100 * a / b:.0f}%" if b else ""


def table(rows: list[dict[str, Any]]) -> str:
    ceilings = {(r["concurrency"], r["workers"]): r["rps"] for r in rows
                if r["label"] == "ceiling"}
    lines = ["| target | backend | processes | concurrency | requests | req/s | p50 ms | p90 ms "
             "| p99 ms | max ms | errors | of the ceiling | server CPU s | database CPU s "
             "| generator CPU s | others' share | attempts | stored = acknowledged |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
             "|---:|---|"]
    for r in rows:
        ceiling = r["label"] == "ceiling"
        ratio = "" if ceiling else _ratio(r["rps"], ceilings.get((r["concurrency"],
                                                                   r["workers"])))
        stored = "" if r["label"] != "chronicle" else \
            ("yes" if not r["stored_problems"] else "**NO**")
        db_cpu = r["db_cpu_s"] if r["backend"] == "postgres" else ""
        lines.append(f"| {r['label']} | {r['backend']} | {r['workers']} | {r['concurrency']} "
                     f"| {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.2f} "
                     f"| {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} "
                     f"| {r['errors']} | {ratio} | {r['server_cpu_s']} | {db_cpu} "
                     f"| {r['client_cpu_s']} | {r['other_share']:.0%} | {r['attempts']} "
                     f"| {stored} |")
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The targets this run can speak to, each with its figures."""
    ch = {(r["backend"], r["workers"], r["concurrency"]): r for r in rows
          if r["label"] == "chronicle"}
    ceil = {(r["workers"], r["concurrency"]): r["rps"] for r in rows if r["label"] == "ceiling"}
    floor = {(r["workers"], r["concurrency"]): r["rps"] for r in rows if r["label"] == "floor"}
    out = []

    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    for (backend, workers, level), r in sorted(ch.items()):
        if level != C16:
            continue
        tag = f"{backend}, {workers} process{'es' if workers > 1 else ''}, c={level}"
        out.append(f"{tag}: zero errors: {mark(r['errors'] == 0)} ({r['errors']})")
        out.append(f"{tag}: p99 <= 50 ms: {mark(r['p99_ms'] <= 50)} ({r['p99_ms']:.1f} ms)")
        c = ceil.get((workers, level))
        if c:
            out.append(f"{tag}: >= 70% of the ceiling: {mark(r['rps'] >= 0.7 * c)} "
                       f"({r['rps']:.0f} / {c:.0f} req/s = {_ratio(r['rps'], c)})")
        f = floor.get((workers, level))
        if f and c:
            out.append(f"{tag}: the durable floor itself is {_ratio(f, c)} of the ceiling; "
                       f"chronicle is {_ratio(r['rps'], f)} of the floor ({r['rps']:.0f} / "
                       f"{f:.0f} req/s)")
    for (backend, workers, level), r in sorted(ch.items()):
        sq = ch.get(("sqlite", 1, level))
        if backend == "postgres" and workers == 1 and sq:
            out.append(f"postgres >= 70% of sqlite, 1 process, c={level}: "
                       f"{mark(r['rps'] >= 0.7 * sq['rps'])} ({r['rps']:.0f} / "
                       f"{sq['rps']:.0f} req/s = {_ratio(r['rps'], sq['rps'])})")
        one = ch.get((backend, 1, level))
        if workers == 2 and one:
            out.append(f"{backend}, 2 processes no more than 10% slower than 1, c={level}: "
                       f"{mark(r['rps'] >= 0.9 * one['rps'])} ({r['rps']:.0f} vs "
                       f"{one['rps']:.0f} req/s = {_ratio(r['rps'], one['rps'])})")
    for r in ch.values():
        if r["stored_problems"]:
            out.append(f"{r['backend']} w{r['workers']} c={r['concurrency']}: database "
                       f"check FAILED: {r['stored_problems']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=5000,
                        help="timed requests per target and level")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests first")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--backend", nargs="+", choices=["sqlite", "postgres"],
                        default=["sqlite"], help="one or more backends, measured in turn")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="process counts (chronicle serve --workers N; the ceiling "
                             "runs with as many processes)")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL,
                        help="PostgreSQL URL used to create and drop one database per run")
    parser.add_argument("--pg-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="ALTER DATABASE ... SET KEY = VALUE on each fresh database "
                             "(repeatable), e.g. plan_cache_mode=force_custom_plan")
    parser.add_argument("--tlog", action="store_true",
                        help="enable the Merkle tree (tlog enable) on each fresh ledger "
                             "before serving, so every publish extends it too")
    parser.add_argument("--durable-floor", action="store_true",
                        help="also measure the durable floor: the ceiling server answering "
                             "only after an fdatasync of its appended entries")
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
    parser.add_argument("--keep", action="store_true",
                        help="keep the data dirs (and the PostgreSQL databases)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record py-spy profiles (collapsed stacks per thread, "
                             "--subprocesses with workers) of each server (ceiling and "
                             "chronicle) into DIR (slows the servers a little)")
    parser.add_argument("--profile-mode", choices=["wall", "cpu"], default="wall",
                        help="wall: every thread at every sample, waiting included "
                             "(py-spy --idle); cpu: only threads running on a CPU")
    args = parser.parse_args(argv)
    if any(not 1 <= w <= 64 for w in args.workers):
        parser.error("--workers must be between 1 and 64")
    if any("=" not in kv for kv in args.pg_setting):
        parser.error("--pg-setting takes KEY=VALUE")
    args.pg_setting = dict(kv.split("=", 1) for kv in args.pg_setting)

    key = SigningKey.generate()  # throwaway client key
    base = Path(tempfile.mkdtemp(prefix="chronicle-bench-publish-", dir="/tmp"))
    started = datetime.now(UTC)
    print(f"# bench_publish {started:%Y-%m-%d %H:%M} UTC; {machine_summary()}; "
          f"{args.requests} timed + {args.warmup} warm-up requests, "
          f"{args.body_size}-byte bodies; tree {'on' if args.tlog else 'off'}; "
          f"backends {' '.join(args.backend)}; processes "
          f"{' '.join(map(str, args.workers))}"
          + (f"; PostgreSQL database settings {args.pg_setting}" if args.pg_setting else "")
          + f"; data under {base}", flush=True)
    rows: list[dict[str, Any]] = []
    try:
        for level in args.levels:
            for workers in args.workers:
                print(f"concurrency {level}, {workers} process(es):", flush=True)
                rows.append(run_ceiling(level, workers, key, args))
                if args.durable_floor:
                    floor_dir = base / f"floor-w{workers}-c{level}"
                    floor_dir.mkdir()
                    rows.append(run_ceiling(level, workers, key, args, floor_dir))
                for backend in args.backend:
                    rows.append(run_chronicle(level, workers, backend, key, args, base))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(rows))
    print()
    for line in verdicts(rows):
        print(f"- {line}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"started": started.isoformat(),
                                             "machine": machine_summary(),
                                             "args": {k: str(v) for k, v in vars(args).items()},
                                             "rows": rows}, indent=2))
    failed = any(r["errors"] or r["stored_problems"] for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
