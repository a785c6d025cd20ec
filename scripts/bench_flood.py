"""How much a flood of forged publishes slows valid publishers (a benchmark, not a test).

One ``chronicle serve`` (SQLite, one process) on 127.0.0.1 with one registered client.
Each round runs the valid publishers (``--concurrency`` workers, closed loop, every answer's
signature and receipt checked) for ``--seconds``, alone and then with a concurrent flood:
``--flood`` workers on 127.0.0.2 sending publishes for the same client id whose signatures
are made with another key (each costs the server a verification until the per-address
limit ``auth-failures-per-ip`` answers 429 unchecked). Rounds alternate quiet and flooded
runs; the report gives the median valid-publish rate of each and the slowdown factor
(quiet / flooded). ``--unprotected`` repeats it on a server with
``auth-failures-per-ip = 0`` to show what the per-address cut-off buys.

    python scripts/bench_flood.py                       # 5 rounds of 5 s, flood of 64
    python scripts/bench_flood.py --rounds 7 --seconds 8 --flood 128 --unprotected
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from benchutil import add_client, chronicle_server, init_data_dir, machine_summary
from loadgen import prepare_publishes, publish_checker, run_load

from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, SigningKey

FLOOD_FROM = "127.0.0.2"


async def flood(url: str, client_id: str, workers: int, seconds: float) -> Counter[str]:
    """Forged publishes from FLOOD_FROM for ``seconds``: the answers' statuses counted.
    (Run in a process of its own: see :func:`start_flood`.)"""
    forger = SigningKey.generate()
    seen: Counter[str] = Counter()
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    connector = aiohttp.TCPConnector(local_addr=(FLOOD_FROM, 0), limit=workers + 4)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def one(worker: int) -> None:
            body = f"forged by worker {worker}".encode()
            headers = {CLIENT_HEADER: client_id, SIGNATURE_HEADER: forger.sign_b64(body)}
            while not stop.is_set():
                try:
                    async with session.post(f"{url}/chronicle/publish", data=body,
                                            headers=headers) as res:
                        await res.read()
                        seen[str(res.status)] += 1
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    seen[f"transport:{type(exc).__name__}"] += 1
        await asyncio.gather(*(one(i) for i in range(workers)))
    return seen


async def one_run(url: str, server_pk: bytes, key: SigningKey, client_id: str,
                  args: argparse.Namespace, flooded: bool) -> dict[str, Any]:
    requests = prepare_publishes(key, client_id, args.max_requests, size=args.size)
    receipts: dict[str, str] = {}
    flooding = None
    if flooded:
        # Its own process: the flood must not slow this process's event loop, only
        # compete for the server (and for the machine's cores, as a real one would).
        flooding = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--flood-only", url, client_id, str(args.flood),
            str(args.seconds + 1.0), stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(0.5)  # the flood is under way before the clock starts
    result = await run_load(url, requests, args.concurrency, publish_checker(server_pk,
                                                                               receipts),
                            time_cap=args.seconds)
    flood_seen: dict[str, int] = {}
    if flooding is not None:
        out, _ = await asyncio.wait_for(flooding.communicate(), args.seconds + 60)
        flood_seen = json.loads(out)
    return {"flooded": flooded, "rate": result.ok / result.duration_s,
            "ok": result.ok, "errors": result.error_kinds, "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms, "flood": dict(flood_seen)}


async def bench(args: argparse.Namespace, protected: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="chronicle-flood-") as tmp:
        data = Path(tmp) / "data"
        settings = {"publish-new-clients": "false", "replicate-interval": "",
                    "cross-sign-interval": "", "scheduled-attestation": ""}
        if not protected:
            settings["auth-failures-per-ip"] = "0"
        server_key = init_data_dir(data, settings)
        key = SigningKey.generate()
        client_id = add_client(data, key.public_b64)
        server = chronicle_server(data)
        url = server.start()
        assert url.startswith("http://127.0.0.1:"), url
        runs = []
        try:
            for round_no in range(args.rounds):
                for flooded in (False, True):
                    run = await one_run(url, b64u_decode(server_key, 32), key, client_id,
                                        args, flooded)
                    runs.append(run)
                    print(f"  {'protected' if protected else 'unprotected'} round "
                          f"{round_no + 1} {'flood' if flooded else 'quiet'}: "
                          f"{run['rate']:.0f}/s ok={run['ok']} errors={run['errors']} "
                          f"flood={run['flood']}", file=sys.stderr)
                    await asyncio.sleep(1.0)  # the per-address failure window drains
        finally:
            server.stop()
    quiet = statistics.median(r["rate"] for r in runs if not r["flooded"])
    loud = statistics.median(r["rate"] for r in runs if r["flooded"])
    flood_total: Counter[str] = Counter()
    for r in runs:
        flood_total.update(r["flood"])
    return {"auth-failures-per-ip": "default (50/s)" if protected else "0 (unlimited)",
            "quiet_median_per_s": round(quiet, 1), "flooded_median_per_s": round(loud, 1),
            "slowdown": round(quiet / loud, 2) if loud else None,
            "valid_errors": sum(sum(r["errors"].values()) for r in runs),
            "flood_answers": dict(flood_total), "runs": runs}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "command": "python scripts/bench_flood.py " + " ".join(sys.argv[1:]),
        "machine": machine_summary(), "rounds": args.rounds, "seconds": args.seconds,
        "concurrency": args.concurrency, "flood_workers": args.flood,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report["protected"] = await bench(args, True)
    if args.unprotected:
        report["unprotected"] = await bench(args, False)
    return report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="quiet+flooded pairs (>= 5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--concurrency", type=int, default=8, help="valid publishers")
    parser.add_argument("--flood", type=int, default=64, help="forging workers")
    parser.add_argument("--size", type=int, default=256, help="publish body bytes")
    parser.add_argument("--max-requests", type=int, default=20_000,
                        help="valid publishes prepared per run (the run stops at --seconds)")
    parser.add_argument("--unprotected", action="store_true",
                        help="also measure with auth-failures-per-ip = 0")
    parser.add_argument("--json", type=Path, help="write the full report here too")
    parser.add_argument("--flood-only", nargs=4, metavar=("URL", "CLIENT_ID", "WORKERS",
                                                          "SECONDS"),
                        help=argparse.SUPPRESS)  # the flood's own process
    args = parser.parse_args(argv)
    if args.flood_only:
        return args
    if args.rounds < 5:
        parser.error("--rounds must be at least 5 (medians of interleaved runs)")
    return args


if __name__ == "__main__":
    arguments = parse()
    if arguments.flood_only:
        target, cid, count, length = arguments.flood_only
        print(json.dumps(asyncio.run(flood(target, cid, int(count), float(length)))))
        sys.exit(0)
    result = asyncio.run(main(arguments))
    summary = {k: v for k, v in result.items() if k not in ("protected", "unprotected")}
    for name in ("protected", "unprotected"):
        if name in result:
            summary[name] = {k: v for k, v in result[name].items() if k != "runs"}
    print(json.dumps(summary, indent=2))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(result, indent=2))
