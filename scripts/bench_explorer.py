"""The web explorer's pages on a large chain: server time per page (issue 15: overview and
entry pages under 100 ms on 1,000,000 entries).

Builds a chain of ``--entries`` (default 1,000,000) straight through the store (as
bench_export.py), starts ``chronicle serve`` and requests each page ``--requests`` times,
one at a time over one keep-alive connection, after a warm-up. Reported per page: the
server's own time from its ``chronicle_request_seconds`` histogram (sum / count of the
requests of this run: the handler and middlewares, signing included, no network), and
the client's median, 95th percentile and maximum (loopback HTTP included). Every answer is
checked: status 200, one signature header that verifies with the server key.

    python scripts/bench_explorer.py --entries 100000
    python scripts/bench_explorer.py                      # 1,000,000 entries
    python scripts/bench_explorer.py --backend postgres   # a fresh database, dropped after
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import uvloop
from benchutil import (
    PostgresDatabase,
    add_client,
    chronicle_server,
    fill_chain,
    init_data_dir,
    machine_summary,
)

from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import SIGNATURE_HEADER, SigningKey, verify

_METRIC = re.compile(r'^chronicle_request_seconds_(sum|count)\{method="GET",'
                     r'route="([^"]*)",status="200"\} (\S+)$', re.M)
_ROW = re.compile(r'<a class="hash" href="/explorer/entry/([^"?]+)')


def server_times(metrics: str) -> dict[str, tuple[float, float]]:
    """route pattern -> (seconds, requests) of the GETs answered 200 so far."""
    out: dict[str, list[float]] = {}
    for kind, route, value in _METRIC.findall(metrics):
        slot = out.setdefault(route, [0.0, 0.0])
        slot[0 if kind == "sum" else 1] += float(value)
    return {k: (v[0], v[1]) for k, v in out.items()}


async def run(url: str, server_pk: bytes, pages: list[tuple[str, str, str]], requests: int
              ) -> list[dict[str, Any]]:
    results = []
    async with aiohttp.ClientSession() as session:

        async def get(path: str) -> bytes:
            async with session.get(url + path) as resp:
                body = await resp.read()
                sigs = resp.headers.getall(SIGNATURE_HEADER, [])
                if resp.status != 200 or len(sigs) != 1 or \
                        not verify(server_pk, body, b64u_decode(sigs[0], 64)):
                    raise RuntimeError(f"{path}: {resp.status}, signatures {sigs}")
                return body

        async def metrics() -> dict[str, tuple[float, float]]:
            return server_times((await get("/metrics")).decode())

        for name, route, path in pages:
            for _ in range(3):
                await get(path)
            before = await metrics()
            times = []
            size = 0
            for _ in range(requests):
                t0 = time.perf_counter()
                size = len(await get(path))
                times.append(time.perf_counter() - t0)
            after = await metrics()
            spent = after[route][0] - before.get(route, (0.0, 0.0))[0]
            count = after[route][1] - before.get(route, (0.0, 0.0))[1]
            times.sort()
            row = {"page": name, "path": path, "requests": requests, "bytes": size,
                   "server_mean_ms": round(spent / count * 1000, 2),
                   "client_median_ms": round(statistics.median(times) * 1000, 2),
                   "client_p95_ms": round(times[int(0.95 * (len(times) - 1))] * 1000, 2),
                   "client_max_ms": round(times[-1] * 1000, 2)}
            print(json.dumps(row), flush=True)
            results.append(row)
    return results


async def entry_hash_at(url: str, index: int) -> str:
    """The (URL-escaped) currhash of entry ``index``, from the entry list."""
    async with aiohttp.ClientSession() as session, \
            session.get(f"{url}/explorer/entries?before={index + 1}") as resp:
        found = _ROW.search(await resp.text())
    if found is None:
        raise RuntimeError(f"no entry {index} in the list")
    return found.group(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--body-size", type=int, default=256)
    parser.add_argument("--requests", type=int, default=100, help="requests per page")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--keep", action="store_true", help="keep the data dir")
    args = parser.parse_args(argv)

    started = datetime.now(UTC)
    base = Path(tempfile.mkdtemp(prefix="chronicle-bench-explorer-", dir="/tmp"))
    data_dir = base / "data"
    print(f"# bench_explorer {started:%Y-%m-%d %H:%M} UTC; {machine_summary()}; "
          f"{args.entries} entries of {args.body_size} bytes; {args.backend}; "
          f"data under {base}", flush=True)
    result: dict[str, Any] = {"started": started.isoformat(), "machine": machine_summary(),
                              "entries": args.entries, "backend": args.backend}
    pg = PostgresDatabase() if args.backend == "postgres" else None
    try:
        server_key = init_data_dir(data_dir, {"publish-new-clients": "false"},
                                   database=pg.create() if pg else None)
        client = SigningKey.generate()
        add_client(data_dir, client.public_b64)
        info = fill_chain(data_dir, client.secret, args.entries, body_size=args.body_size)
        result["fill_s"] = info.seconds
        print(f"filled {info.count} entries in {info.seconds}s", flush=True)
        server = chronicle_server(data_dir)
        server.start()
        try:
            head = quote(info.head_currhash, safe="")
            middle = uvloop.run(entry_hash_at(server.url, args.entries // 2))
            first = uvloop.run(entry_hash_at(server.url, 0))
            publisher = quote(client.public_b64, safe="")
            pages = [
                ("overview", "/", "/"),
                ("entry (newest)", "/explorer/entry/{hash}", f"/explorer/entry/{head}"),
                ("entry (middle)", "/explorer/entry/{hash}", f"/explorer/entry/{middle}"),
                ("entry (first)", "/explorer/entry/{hash}", f"/explorer/entry/{first}"),
                ("entry list (newest page)", "/explorer/entries", "/explorer/entries"),
                ("entry list (middle page)", "/explorer/entries",
                 f"/explorer/entries?before={args.entries // 2}"),
                ("search by currhash", "/explorer/entries", f"/explorer/entries?q={head}"),
                ("search by publisher key (50 matches)", "/explorer/entries",
                 f"/explorer/entries?q={publisher}"),
                ("text search, no match (one 20,000-entry window)", "/explorer/entries",
                 "/explorer/entries?q=no+such+text"),
            ]
            result["pages"] = uvloop.run(run(server.url, b64u_decode(server_key, 32), pages,
                                             args.requests))
        finally:
            server.stop()
    finally:
        if pg is not None and not args.keep:
            pg.drop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
