"""Diagnose publish latency: the real server in this process, the load from another.

Runs ``chronicle.server`` exactly as ``chronicle serve`` does (uvloop, same app), but wraps
``Ledger._commit`` to record every group commit (wall time, batch size), and reports the
server's CPU time and context switches per publish. ``--switch-interval`` changes
``sys.setswitchinterval`` (GIL hand-off). The wrapper lives in this process only.

The load comes from scripts/loadgen.py run as a subprocess (publish, pre-signed).

    python scripts/probe_publish.py -c 16 -n 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web
from benchutil import SCRIPTS, add_client, init_data_dir

from chronicle.config import DataDir
from chronicle.core.sapient import SigningKey
from chronicle.ledger import AppendRequest, Ledger
from chronicle.server.app import build_app
from chronicle.server.runner import open_context

COMMITS: list[tuple[float, int]] = []  # (seconds, batch size)


def install() -> None:
    """Wrap Ledger._commit to record each group commit's wall time and batch size."""
    original = Ledger._commit

    async def timed(self: Ledger, batch: list[AppendRequest]) -> list[Any]:
        t0 = time.perf_counter()
        try:
            return await original(self, batch)
        finally:
            COMMITS.append((time.perf_counter() - t0, len(batch)))

    Ledger._commit = timed  # type: ignore[method-assign]


async def serve_and_load(data_dir: Path, client_id: str, key_file: Path, server_key: str,
                         args: argparse.Namespace) -> dict[str, Any]:
    ctx = await open_context(DataDir(data_dir))
    runner = web.AppRunner(build_app(ctx), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        argv = [sys.executable, str(SCRIPTS / "loadgen.py"), "publish", "--url", url,
                "--server-key", server_key, "--client-id", client_id,
                "--secret-key-file", str(key_file), "-n", str(args.requests),
                "-c", str(args.concurrency), "--warmup", str(args.warmup), "--json"]
        proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
        # The generator pre-signs before it connects; only its timed part overlaps COMMITS.
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        result = dict(json.loads(out))
        n = args.requests + args.warmup
        result["server_user_ms_per_req"] = round((ru1.ru_utime - ru0.ru_utime) * 1000 / n, 3)
        result["server_sys_ms_per_req"] = round((ru1.ru_stime - ru0.ru_stime) * 1000 / n, 3)
        result["ctx_switches_per_req"] = round(
            (ru1.ru_nvcsw - ru0.ru_nvcsw + ru1.ru_nivcsw - ru0.ru_nivcsw) / n, 1)
        return result
    finally:
        await runner.cleanup()
        await ctx.store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-n", "--requests", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval seconds (default: leave 0.005)")
    args = parser.parse_args(argv)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    install()
    base = Path(tempfile.mkdtemp(prefix="chronicle-probe-", dir="/tmp"))
    try:
        data_dir = base / "data"
        server_key = init_data_dir(data_dir, {"publish-new-clients": "false"})
        key = SigningKey.generate()
        key_file = base / "client.key"
        key_file.write_text(key.to_text())
        client_id = add_client(data_dir, key.public_b64)
        result = uvloop.run(serve_and_load(data_dir, client_id, key_file, server_key, args))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    times = sorted(t * 1000 for t, _ in COMMITS)
    sizes = [n for _, n in COMMITS]
    print(f"switch={sys.getswitchinterval()} c={args.concurrency}: "
          f"{result['rps']} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
          f"errors {result['errors']}; server cpu/req user "
          f"{result['server_user_ms_per_req']} ms + sys {result['server_sys_ms_per_req']} ms, "
          f"{result['ctx_switches_per_req']} context switches/req")
    print(f"  {len(COMMITS)} group commits: batch mean {statistics.fmean(sizes):.1f} "
          f"max {max(sizes)}; commit wall p50 {times[len(times) // 2]:.2f} ms, "
          f"p90 {times[int(len(times) * 0.9)]:.2f} ms, max {times[-1]:.2f} ms")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
