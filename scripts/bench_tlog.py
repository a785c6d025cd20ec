"""The Merkle tree's costs (issue 11): backfill, the inclusion proof endpoint, publishing.

    python scripts/bench_tlog.py backfill --entries 1000000
    python scripts/bench_tlog.py proofs --entries 1000000 -n 20000 --levels 16
    python scripts/bench_tlog.py publish --runs 5 -n 5000 --levels 16
    python scripts/bench_tlog.py append --runs 5 -n 20000

- ``backfill``: a chain of ``--entries`` built straight through the store, then ``chronicle
  tlog enable`` on it (a subprocess, timed: key, backfill, activation, announcement); the
  stored tree is then checked against a root recomputed here from the chain.
- ``proofs``: the same chain with the tree enabled, served by ``chronicle serve``; the
  generator (scripts/loadgen.py) asks ``/chronicle/tlog/proof/inclusion/{index}`` of
  random leaves and checks every answer: the server's signature, the proven index, and the
  audit path against the root of the served checkpoint.
- ``publish``: ``--runs`` interleaved pairs of fresh ledgers, tree off then on (``tlog
  enable`` on the empty chain), each loaded with ``-n`` publishes at each level; reports
  every run's req/s and server CPU per publish, and the medians.
- ``append``: the sequencer alone, in this process (no HTTP, no generator): ``--runs``
  interleaved pairs of fresh ledgers, tree off then on, each appending ``-n`` pre-signed
  entries in concurrent groups of ``max-batch``; reports CPU and wall time per append.

``--base DIR`` keeps (and reuses) the filled chain of ``backfill``/``proofs`` there.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchutil
import loadgen
import uvloop
from loadgen import Checker, LoadResult, Request

from chronicle.core.encoding import b64u_decode
from chronicle.core.merkle import verify_inclusion
from chronicle.core.sapient import SigningKey

ORIGIN = "bench.example/chronicle/tlog"


def _chain(base: Path, entries: int) -> tuple[Path, str]:
    """A data dir holding a chain of ``entries`` (built once per ``base``, then copied)."""
    pristine = base / f"chain-{entries}"
    marker = pristine / "server-key"
    if not marker.exists():
        shutil.rmtree(pristine, ignore_errors=True)
        key = benchutil.init_data_dir(pristine / "data", {"publish-new-clients": "false"})
        client = SigningKey.generate()
        benchutil.add_client(pristine / "data", client.public_b64)
        info = benchutil.fill_chain(pristine / "data", client.secret, entries, batch=20_000,
                          progress=False)
        print(f"filled {info.count} entries in {info.seconds} s", flush=True)
        marker.write_text(key)
    work = base / "work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine / "data", work)
    return work, marker.read_text()


def _enable(data_dir: Path) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    out = benchutil.chronicle_cli("tlog", "enable", "--data-dir", str(data_dir), "--origin",
                                  ORIGIN, "--json", timeout=600)
    return json.loads(out), time.perf_counter() - t0


def bench_backfill(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    data_dir, _ = _chain(base, args.entries)
    report, wall = _enable(data_dir)
    status = json.loads(benchutil.chronicle_cli("tlog", "status", "--data-dir", str(data_dir),
                                                "--json"))
    check = subprocess.run(
        [sys.executable, "-c", _RECOMPUTE, str(data_dir)], capture_output=True, text=True,
        check=True, cwd=benchutil.CHRONICLE_ROOT, timeout=900)
    recomputed = check.stdout.strip()
    row = {"entries": args.entries, "backfill_s": report["seconds"],
           "command_wall_s": round(wall, 2), "tree_size": status["size"],
           "root_matches": recomputed == status["root"]}
    print(f"backfill of {args.entries} entries: {report['seconds']} s inside `tlog enable` "
          f"({wall:.1f} s for the whole command); tree size {status['size']}; root "
          f"recomputed from the chain {'matches' if row['root_matches'] else 'DIFFERS'}",
          flush=True)
    return row


_RECOMPUTE = """
import sqlite3, sys
from chronicle.core.leaf import LeafRecord
from chronicle.core.merkle import TreeState
from chronicle.core.encoding import b64u_encode
db = sqlite3.connect(sys.argv[1] + "/chronicle.db")
state = TreeState.empty()
rows = db.execute("SELECT created, publickey, signature, contents, currhash FROM entries "
                  "WHERE instance = (SELECT id FROM instances WHERE name = '') ORDER BY idx")
while batch := rows.fetchmany(20000):
    state = state.extend([LeafRecord.build(*r).leaf_hash() for r in batch])[0]
print(b64u_encode(state.root()))
"""


def proof_checker(server_pk: bytes) -> Checker:
    """Signed, OK, the index asked for, and an audit path that reaches the answer's root."""
    def check(req: Request, status: int, headers: Any, body: bytes) -> str | None:
        doc, err = loadgen._signed_ok_json(server_pk, status, headers, body)
        return err if doc is None else _proof_problem(doc.get("results"), req.expect)
    return check


def _proof_problem(results: Any, index: int) -> str | None:
    if not isinstance(results, dict) or results.get("index") != index:
        return "wrong-entry"
    try:
        verify_inclusion(index, results["tree-size"], b64u_decode(results["leaf-hash"], 32),
                         [b64u_decode(h, 32) for h in results["proof"]],
                         b64u_decode(results["root"], 32))
    except Exception:
        return "bad-proof"
    return None


def bench_proofs(args: argparse.Namespace, base: Path) -> list[dict[str, Any]]:
    data_dir, server_key = _chain(base, args.entries)
    report, _ = _enable(data_dir)
    size = report["size"]
    server_pk = b64u_decode(server_key, 32)
    server = benchutil.chronicle_server(data_dir)
    server.start()
    rows = []
    try:
        rng = random.Random(args.seed)

        def prepare() -> list[Request]:
            return [Request("GET", f"/chronicle/tlog/proof/inclusion/{i}", expect=i)
                    for i in (rng.randrange(size) for _ in range(args.requests + args.warmup))]

        for level in args.levels:
            def run(reqs: list[Request], level: int = level) -> LoadResult:
                return uvloop.run(loadgen.run_load(server.url, reqs[args.warmup:], level,
                                           proof_checker(server_pk), label="inclusion proof",
                                           time_cap=args.time_cap,
                                           warmup=reqs[:args.warmup]))

            row, _ = benchutil.measured(prepare, run, server.pid, quiet_wait=args.quiet_wait,
                              retries=args.retries, max_other=args.max_other)
            row["tree_size"] = size
            rows.append(row)
    finally:
        server.stop()
    return rows


def _publish_run(args: argparse.Namespace, base: Path, tree: bool, level: int,
                 run_no: int) -> dict[str, Any]:
    data_dir = base / f"publish-{run_no}-{'on' if tree else 'off'}-c{level}"
    server_key = benchutil.init_data_dir(data_dir, {"publish-new-clients": "false"})
    client = SigningKey.generate()
    client_id = benchutil.add_client(data_dir, client.public_b64)
    if tree:
        _enable(data_dir)
    server = benchutil.chronicle_server(data_dir)
    server.start()
    try:
        checker = loadgen.publish_checker(b64u_decode(server_key, 32))

        def prepare() -> list[Request]:
            return loadgen.prepare_publishes(client, client_id, args.requests + args.warmup)

        def run(reqs: list[Request]) -> LoadResult:
            return uvloop.run(loadgen.run_load(server.url, reqs[args.warmup:], level, checker,
                                       label=f"tree {'on' if tree else 'off'}",
                                       time_cap=args.time_cap, warmup=reqs[:args.warmup]))

        row, _ = benchutil.measured(prepare, run, server.pid, quiet_wait=args.quiet_wait,
                          retries=args.retries, max_other=args.max_other)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    # The server's CPU is measured over the warm-up requests too.
    served = row["requests"] + args.warmup
    row.update(tree=tree, run=run_no,
               cpu_ms_per_publish=round(1000 * row["server_cpu_s"] / served, 3))
    return row


def bench_publish(args: argparse.Namespace, base: Path) -> list[dict[str, Any]]:
    rows = []
    for level in args.levels:
        for run_no in range(args.runs):
            # Interleaved, and the order flipped every run, so drift hits both alike.
            for tree in ((False, True) if run_no % 2 == 0 else (True, False)):
                print(f"c={level} run {run_no + 1}/{args.runs}, tree "
                      f"{'on' if tree else 'off'}:", flush=True)
                rows.append(_publish_run(args, base, tree, level, run_no))
    return rows


def _publish_summary(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| concurrency | tree | runs | req/s (each run) | median req/s | server CPU ms per "
           "publish (each run) | median CPU ms |", "|---:|---|---:|---|---:|---|---:|"]
    medians: dict[tuple[int, bool], tuple[float, float]] = {}
    for level in sorted({r["concurrency"] for r in rows}):
        for tree in (False, True):
            mine = [r for r in rows if r["concurrency"] == level and r["tree"] is tree]
            rps = statistics.median(r["rps"] for r in mine)
            cpu = statistics.median(r["cpu_ms_per_publish"] for r in mine)
            medians[(level, tree)] = (rps, cpu)
            each_rps = ", ".join(f"{r['rps']:.0f}" for r in mine)
            each_cpu = ", ".join(f"{r['cpu_ms_per_publish']:.3f}" for r in mine)
            out.append(f"| {level} | {'on' if tree else 'off'} | {len(mine)} | {each_rps} | "
                       f"{rps:.0f} | {each_cpu} | {cpu:.3f} |")
    for level in sorted({r["concurrency"] for r in rows}):
        (off_rps, off_cpu), (on_rps, on_cpu) = medians[(level, False)], medians[(level, True)]
        out.append(f"\nc={level}: throughput with the tree {100 * (on_rps / off_rps - 1):+.1f}% "
                   f"(median {on_rps:.0f} vs {off_rps:.0f} req/s); server CPU per publish "
                   f"{100 * (on_cpu / off_cpu - 1):+.1f}% ({on_cpu:.3f} vs {off_cpu:.3f} ms)")
    return out


def _append_run(base: Path, tree: bool, count: int, run_no: int) -> dict[str, Any]:
    """Append ``count`` pre-signed entries through a Ledger in this process; CPU and wall
    seconds of the appending only (signing happens before)."""
    import asyncio

    from chronicle.config import DataDir
    from chronicle.core.encoding import utcnow
    from chronicle.ledger import Ledger
    from chronicle.store import open_store
    from chronicle.treelog import enable

    data_dir = base / f"append-{run_no}-{'on' if tree else 'off'}"
    benchutil.init_data_dir(data_dir, {"publish-new-clients": "false"})
    key = SigningKey.generate()
    bodies = [f"append {run_no} {i} ".encode().ljust(256, b".") for i in range(count)]
    signed = [(b, key.sign(b)) for b in bodies]

    async def go() -> tuple[float, float]:
        dd = DataDir(data_dir)
        settings = dd.settings()
        store = open_store(settings.database, dd.path)
        await store.open()
        ledger = Ledger(store, "", max_batch=settings.max_batch)
        try:
            if tree:
                await enable(store, ledger, dd.signing_key(settings),
                             dd.tlog_key_path(settings), ORIGIN, clock=utcnow)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for start in range(0, count, 4 * settings.max_batch):
                await asyncio.gather(*(ledger.append(b, key.public, s) for b, s in
                                       signed[start:start + 4 * settings.max_batch]))
            return time.process_time() - cpu0, time.perf_counter() - wall0
        finally:
            await ledger.stop()
            await store.close()

    cpu, wall = uvloop.run(go())
    shutil.rmtree(data_dir, ignore_errors=True)
    return {"tree": tree, "run": run_no, "appends": count,
            "cpu_us_per_append": round(1e6 * cpu / count, 2),
            "wall_us_per_append": round(1e6 * wall / count, 2)}


def bench_append(args: argparse.Namespace, base: Path) -> list[dict[str, Any]]:
    rows = []
    for run_no in range(args.runs):
        for tree in ((False, True) if run_no % 2 == 0 else (True, False)):
            row = _append_run(base, tree, args.requests, run_no)
            print(f"run {run_no + 1}/{args.runs}, tree {'on ' if tree else 'off'}: "
                  f"{row['cpu_us_per_append']} us CPU, {row['wall_us_per_append']} us wall "
                  "per append", flush=True)
            rows.append(row)
    for what in ("cpu_us_per_append", "wall_us_per_append"):
        off = statistics.median(r[what] for r in rows if not r["tree"])
        on = statistics.median(r[what] for r in rows if r["tree"])
        print(f"median {what.replace('_', ' ')}: off {off:.2f}, on {on:.2f} "
              f"({100 * (on / off - 1):+.1f}%)")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["backfill", "proofs", "publish", "append"])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("-n", "--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--levels", type=int, nargs="+", default=[16])
    parser.add_argument("--runs", type=int, default=5, help="publish: pairs of runs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-cap", type=float, default=180.0)
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--max-other", type=float, default=0.10)
    parser.add_argument("--base", type=Path, help="keep the filled chains here (reused)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    base = args.base or Path(tempfile.mkdtemp(prefix="chronicle-bench-tlog-", dir="/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    print(f"# bench_tlog {args.what} {started:%Y-%m-%d %H:%M} UTC; "
          f"{benchutil.machine_summary()}; chronicle {' '.join(benchutil.CHRONICLE)} from "
          f"{benchutil.CHRONICLE_ROOT}", flush=True)
    failed = False
    try:
        result: Any
        if args.what == "backfill":
            result = bench_backfill(args, base)
            failed = not result["root_matches"]
        elif args.what == "proofs":
            result = bench_proofs(args, base)
            for r in result:
                print(f"inclusion proofs, {r['tree_size']}-leaf tree, c={r['concurrency']}: "
                      f"{r['rps']:.0f} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
                      f"{r['errors']} errors, server CPU {r['server_cpu_s']} s")
            failed = any(r["errors"] for r in result)
        elif args.what == "append":
            result = bench_append(args, base)
        else:
            result = bench_publish(args, base)
            print("\n".join(_publish_summary(result)))
            failed = any(r["errors"] for r in result)
    finally:
        if args.base is None:
            shutil.rmtree(base, ignore_errors=True)
    if args.json_out:
        args.json_out.write_text(json.dumps({"started": started.isoformat(),
                                             "machine": benchutil.machine_summary(),
                                             "what": args.what,
                                             "result": result}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
