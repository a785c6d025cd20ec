"""Read throughput of ``chronicle serve``: GET /chronicle/lasthash and /chronicle/lookup/{hash}.

Builds a chain of ``--entries`` (default 10,000) straight through the store, starts
``chronicle serve`` on it, and loads each endpoint at each concurrency with the shared
generator (scripts/loadgen.py), which verifies every answer's signature and contents:
lasthash must name the known head, lookup must return the row of the hash asked for
(a random currhash or summaryhash of the chain).

    python scripts/bench_reads.py
    python scripts/bench_reads.py --entries 10000 -n 20000 --levels 16 64
    python scripts/bench_reads.py --workers 2          # chronicle serve --workers 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from benchutil import (
    add_client,
    chronicle_server,
    fill_chain,
    init_data_dir,
    machine_summary,
    measured,
    tree_peak_rss_mb,
)
from loadgen import (
    Checker,
    LoadResult,
    Request,
    lasthash_checker,
    lookup_checker,
    prepare_gets,
    prepare_lookups,
    run_load,
)

from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import SigningKey


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("-n", "--requests", type=int, default=20_000,
                        help="timed requests per endpoint and level")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--levels", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes (chronicle serve --workers N)")
    parser.add_argument("--time-cap", type=float, default=120.0, help="seconds per run")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="wait up to this many seconds for an idle machine before each "
                             "run (0: don't)")
    parser.add_argument("--retries", type=int, default=2,
                        help="measure again (at most this often) when other processes used "
                             "more than --max-other of the machine during a run")
    parser.add_argument("--max-other", type=float, default=0.10)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the data dir")
    args = parser.parse_args(argv)

    started = datetime.now(UTC)
    base = Path(tempfile.mkdtemp(prefix="chronicle-bench-reads-", dir="/tmp"))
    data_dir = base / "data"
    print(f"# bench_reads {started:%Y-%m-%d %H:%M} UTC; {machine_summary()}; "
          f"{args.entries} entries, {args.requests} timed + {args.warmup} warm-up requests "
          f"per run, {args.workers} server process(es); data under {base}", flush=True)
    rows: list[dict[str, Any]] = []
    try:
        server_key = init_data_dir(data_dir, {"publish-new-clients": "false"})
        client = SigningKey.generate()
        add_client(data_dir, client.public_b64)
        info = fill_chain(data_dir, client.secret, args.entries, batch=5000,
                          sample=2 * args.entries, progress=False)
        print(f"filled {info.count} entries in {info.seconds}s", flush=True)
        server = chronicle_server(data_dir, args.workers)
        server.start()
        server_pk = b64u_decode(server_key, 32, what="server key")
        total = args.requests + args.warmup
        try:
            for level in args.levels:
                for endpoint in ("lasthash", "lookup"):
                    if endpoint == "lasthash":
                        def prepare() -> list[Request]:
                            return prepare_gets("/chronicle/lasthash", total)
                        checker = lasthash_checker(server_pk, info.head_currhash)
                    else:
                        def prepare() -> list[Request]:
                            return prepare_lookups(info.sample_hashes, total)
                        checker = lookup_checker(server_pk)

                    def run(reqs: list[Request], checker: Checker = checker, level: int = level,
                            endpoint: str = endpoint) -> LoadResult:
                        return uvloop.run(run_load(server.url, reqs[args.warmup:], level,
                                                   checker, label=endpoint,
                                                   time_cap=args.time_cap,
                                                   warmup=reqs[:args.warmup]))

                    row, _ = measured(prepare, run, server.pid, quiet_wait=args.quiet_wait,
                                      retries=args.retries, max_other=args.max_other)
                    rows.append(row)
            rss, _ = tree_peak_rss_mb(server.pid)
        finally:
            server.stop()
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print(f"\nserver peak RSS {rss:.1f} MB (largest process)\n")
    print("| endpoint | concurrency | requests | req/s | p50 ms | p90 ms | p99 ms | max ms "
          "| errors | server CPU s | generator CPU s | others' share | attempts |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['concurrency']} | {r['requests']} | {r['rps']:.0f} "
              f"| {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} "
              f"| {r['errors']} | {r['server_cpu_s']} | {r['client_cpu_s']} "
              f"| {r['other_share']:.0%} | {r['attempts']} |")
    if args.json_out:
        args.json_out.write_text(json.dumps({"started": started.isoformat(),
                                             "machine": machine_summary(),
                                             "entries": args.entries, "workers": args.workers,
                                             "server_peak_rss_mb": rss, "rows": rows},
                                            indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
