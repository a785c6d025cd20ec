"""Replication throughput: `chronicle replica sync` of a large upstream, both on this machine.

Builds an upstream chain of ``--entries`` (default 1,000,000) straight through the store
(as ``bench_export.py``: bodies signed by a registered client in a process pool, hashed
with ChainBuilder, big transactions), serves it with ``chronicle serve`` (unpaginated by
default, so the replica receives one ~750 MB signed export that it must spool, verify and
commit in chunks), then times ``chronicle replica sync`` from a second data dir with every
check on: the export's signature, every entry's link, currhash, summaryhash and Ed25519
signature. Afterwards the replica's head must equal the upstream's signed head.

Reported: wall time and entries/s of the sync, CPU seconds of the upstream server and of
the replica (its signature-checking worker processes included), peak RSS (VmHWM) of the
upstream server and of the sync process (and the largest worker). With ``--more N`` the
upstream then grows by N entries and a second, incremental sync (``since``) is timed.

    python scripts/bench_replication.py --entries 100000
    python scripts/bench_replication.py                      # 1,000,000 entries
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from benchutil import (
    CHRONICLE,
    add_client,
    chronicle_cli,
    chronicle_server,
    fill_chain,
    init_data_dir,
    machine_summary,
    proc_cpu_seconds,
    proc_status,
)

from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import SIGNATURE_HEADER, SigningKey, verify


class TreeSampler:
    """Samples a process and all its descendants (/proc): peak RSS per process, CPU."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        self.pid = pid
        self.period = period
        self.peak_kb: dict[int, int] = {}
        self.cpu_s: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def sample(self) -> None:
        for pid in self._tree():
            try:
                status = proc_status(pid)
                self.cpu_s[pid] = proc_cpu_seconds(pid)
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    self.names.setdefault(pid, fh.read().replace(b"\0", b" ")[:120].decode())
            except (OSError, KeyError):
                continue
            self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), status.get("VmHWM", 0))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


async def signed_head(url: str, server_pk: bytes) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, \
            session.get(url + "/chronicle/lasthash") as resp:
        body = await resp.read()
        sig = resp.headers[SIGNATURE_HEADER]
    if not verify(server_pk, body, b64u_decode(sig, 64)):
        raise RuntimeError("the upstream's lasthash is not signed by its key")
    rows = json.loads(body)["results"]
    return dict(rows[0]) if rows else {}


def timed_sync(replica_dir: Path, server_pid: int, timeout: float) -> dict[str, Any]:
    """Run `chronicle replica sync --json` and measure it (and the upstream meanwhile)."""
    server_cpu0 = proc_cpu_seconds(server_pid)
    t0 = time.perf_counter()
    proc = subprocess.Popen([*CHRONICLE, "replica", "sync", "--data-dir", str(replica_dir),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        sampler.stop()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"replica sync failed ({proc.returncode}): {err.decode()[-2000:]}")
    report = json.loads(out)["sources"][0]
    # The follower logs each answer: its size and download time, then verify+store time.
    steps = [m.groups() for m in re.finditer(
        r"GET (\S+): (\d+) bytes in ([\d.]+) s, (\d+) entries verified and stored in "
        r"([\d.]+) s", err.decode())]
    workers = {pid: kb for pid, kb in sampler.peak_kb.items() if pid != proc.pid
               and "chronicle.cli" not in sampler.names.get(pid, "")}
    return {
        "wall_s": round(wall, 2),
        "added": report["added"],
        "entries": report["entries"],
        "entries_per_s": round(report["added"] / wall, 1),
        "sync_reported_s": report["seconds"],
        "head": report["head"],
        "replica_cpu_s": round(sum(sampler.cpu_s.values()), 1),
        "replica_peak_rss_mb": round(sampler.peak_kb.get(proc.pid, 0) / 1024, 1),
        "worker_peak_rss_mb": round(max(workers.values(), default=0) / 1024, 1),
        "workers": len(workers),
        "server_cpu_s": round(proc_cpu_seconds(server_pid) - server_cpu0, 1),
        "server_peak_rss_mb": round(proc_status(server_pid)["VmHWM"] / 1024, 1),
        "answers": [{"path": p, "bytes": int(b), "download_s": float(d), "entries": int(n),
                     "verify_store_s": float(v)} for p, b, d, n, v in steps],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--body-size", type=int, default=256)
    parser.add_argument("--more", type=int, default=0,
                        help="then add this many entries upstream and time an incremental sync")
    parser.add_argument("--paginate", type=int, default=0,
                        help="upstream paginate-export (0: one unpaginated export)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    started = datetime.now(UTC)
    base = Path(tempfile.mkdtemp(prefix="chronicle-bench-replication-", dir="/tmp"))
    upstream, replica = base / "upstream", base / "replica"
    print(f"# bench_replication {started:%Y-%m-%d %H:%M} UTC; {machine_summary()}; "
          f"{args.entries} entries of {args.body_size} bytes; data under {base}", flush=True)
    result: dict[str, Any] = {"started": started.isoformat(), "machine": machine_summary(),
                              "entries": args.entries, "body_size": args.body_size,
                              "paginate": args.paginate}
    try:
        server_key = init_data_dir(upstream, {"publish-new-clients": "false",
                                              "paginate-export": str(args.paginate)})
        client = SigningKey.generate()
        add_client(upstream, client.public_b64)
        info = fill_chain(upstream, client.secret, args.entries, body_size=args.body_size)
        result["fill_s"] = info.seconds
        print(f"upstream filled: {info.count} entries in {info.seconds}s", flush=True)
        init_data_dir(replica, {"replicate-interval": "", "cross-sign-interval": ""})
        server_pk = b64u_decode(server_key, 32)
        runs = []
        for phase in ("initial", "incremental"):
            if phase == "incremental":
                if not args.more:
                    break
                fill_chain(upstream, client.secret, args.more, body_size=args.body_size,
                           progress=False)
            server = chronicle_server(upstream)
            server.start()
            try:
                if phase == "initial":
                    chronicle_cli("replica", "add", "--data-dir", str(replica), "--url",
                                  server.url, "--server-key", server_key, "--name", "upstream")
                else:
                    chronicle_cli("replica", "set-url", "--data-dir", str(replica), "upstream",
                                  "--url", server.url)
                run = timed_sync(replica, server.pid, args.timeout)
                head = uvloop.run(signed_head(server.url, server_pk))
            finally:
                server.stop()
            run["phase"] = phase
            run["head_matches"] = run["head"] == head.get("summaryhash")
            runs.append(run)
            print(f"{phase}: +{run['added']} entries in {run['wall_s']}s = "
                  f"{run['entries_per_s']:,.0f} entries/s; replica CPU {run['replica_cpu_s']}s "
                  f"(peak RSS {run['replica_peak_rss_mb']} MB, {run['workers']} workers up to "
                  f"{run['worker_peak_rss_mb']} MB), upstream CPU {run['server_cpu_s']}s "
                  f"(peak RSS {run['server_peak_rss_mb']} MB); head matches the upstream's "
                  f"signed head: {run['head_matches']}", flush=True)
            for answer in run["answers"]:
                print(f"  GET {answer['path']}: {answer['bytes']:,} bytes downloaded (and "
                      f"signature checked) in {answer['download_s']} s; {answer['entries']:,} "
                      f"entries verified and stored in {answer['verify_store_s']} s",
                      flush=True)
        result["runs"] = runs
        db_mb = sum(p.stat().st_size for p in replica.glob("chronicle.db*")) / 1e6
        result["replica_db_mb"] = round(db_mb, 1)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print("\n| sync | entries added | wall s | entries/s | replica CPU s | replica peak RSS MB "
          "| worker peak RSS MB | upstream CPU s | upstream peak RSS MB | head = signed head |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in result["runs"]:
        print(f"| {r['phase']} | {r['added']:,} | {r['wall_s']} | {r['entries_per_s']:,.0f} "
              f"| {r['replica_cpu_s']} | {r['replica_peak_rss_mb']} | {r['worker_peak_rss_mb']} "
              f"| {r['server_cpu_s']} | {r['server_peak_rss_mb']} | {r['head_matches']} |")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 0 if all(r["head_matches"] for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
