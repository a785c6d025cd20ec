"""Unpaginated GET /chronicle/export of a large chain: latency, size, server peak RSS, caching.

Builds a chain of ``--entries`` (default 1,000,000) straight through the store (no HTTP:
bodies signed by a registered client key in a process pool, hashed with ChainBuilder,
inserted in big transactions), starts ``chronicle serve`` and downloads the export twice,
streaming the body to a file (never held in memory). Each download is checked while it
streams: the Ed25519 ``Body-Signature-Ed25519`` over the whole body (a streaming verifier:
``k = SHA-512(R || A || body)`` fed chunk by chunk, then ``[S]B == R + [k]A``), the JSON
framing (envelope head with ``"total": N``, N rows, closing tail) and that the last row is
the chain head. Reported per download: time to response headers, time to first body
byte, total time, bytes, server CPU seconds and the server's peak RSS (VmHWM). The
second download must come from the server's cache (same bytes, same signature, far less
server CPU, cache file untouched).

    python scripts/bench_export.py --entries 100000
    python scripts/bench_export.py                      # 1,000,000 entries
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from benchutil import (
    Profiler,
    add_client,
    chronicle_server,
    fill_chain,
    init_data_dir,
    machine_summary,
    proc_cpu_seconds,
    proc_status,
)
from nacl import bindings as sodium

from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import SIGNATURE_HEADER, SigningKey, verify

CHUNK = 1 << 20
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493
ROW_MARK = b'\n            "hash": "'


class StreamingVerifier:
    """Ed25519 verification of a message fed in chunks (cofactorless, as libsodium).

    Rejects a non-canonical S and R or A that are not valid main-subgroup points; then
    checks ``[S]B == R + [k]A`` with ``k = SHA-512(R || A || M) mod L``.
    """

    def __init__(self, public: bytes, signature: bytes) -> None:
        if len(public) != 32 or len(signature) != 64:
            raise ValueError("bad key or signature length")
        self._a, self._r, self._s = public, signature[:32], signature[32:]
        self._h = hashlib.sha512(self._r + self._a)

    def update(self, chunk: bytes) -> None:
        self._h.update(chunk)

    def verify(self) -> bool:
        if int.from_bytes(self._s, "little") >= GROUP_ORDER:
            return False
        if not (sodium.crypto_core_ed25519_is_valid_point(self._r)
                and sodium.crypto_core_ed25519_is_valid_point(self._a)):
            return False
        k = sodium.crypto_core_ed25519_scalar_reduce(self._h.digest())
        try:
            s_b = sodium.crypto_scalarmult_ed25519_base_noclamp(self._s)
            k_a = sodium.crypto_scalarmult_ed25519_noclamp(k, self._a)
        except Exception:
            return False
        return bool(sodium.crypto_core_ed25519_add(self._r, k_a) == s_b)


def self_test() -> None:
    """The streaming verifier agrees with libsodium on good and tampered signatures."""
    key = SigningKey.generate()
    for size in (0, 1, 1000, 300_000):
        msg = os.urandom(size)
        sig = key.sign(msg)
        for m, s in ((msg, sig), (msg + b"x", sig), (msg, sig[:40] + bytes([sig[40] ^ 1])
                                                     + sig[41:])):
            v = StreamingVerifier(key.public, s)
            for i in range(0, len(m), 4096):
                v.update(m[i:i + 4096])
            assert v.verify() == verify(key.public, m, s), "streaming verifier disagrees"


class FramingCheck:
    """Checks a streamed export document: its head, row count, tail and last row."""

    def __init__(self) -> None:
        self.head = b""
        self.rows = 0
        self._carry = b""
        self.tail = b""

    def update(self, chunk: bytes) -> None:
        if len(self.head) < 4096:
            self.head += chunk[:4096 - len(self.head)]
        data = self._carry + chunk
        self.rows += data.count(ROW_MARK)
        self._carry = data[-(len(ROW_MARK) - 1):]
        self.tail = (self.tail + chunk)[-4096:]

    def problems(self, expected_rows: int, head_hash: str) -> list[str]:
        out = []
        text = self.head.decode("ascii", "replace")
        if not text.startswith('{\n    "version": "'):
            out.append("document does not start with the envelope")
        if '"status": "OK"' not in text:
            out.append("status is not OK")
        m = re.search(r'"total": (\d+),\n    "results": \[\n', text)
        if not m or int(m.group(1)) != expected_rows:
            out.append(f"total is {m.group(1) if m else 'missing'}, expected {expected_rows}")
        if self.rows != expected_rows:
            out.append(f"{self.rows} rows, expected {expected_rows}")
        if not self.tail.endswith(b"\n        }\n    ]\n}"):
            out.append("document does not end with the closing of results and envelope")
        last = self.tail.rsplit(ROW_MARK, 1)[-1].split(b'"', 1)[0].decode("ascii", "replace")
        if last != head_hash:
            out.append(f"last row hash {last} is not the head {head_hash}")
        return out


async def download(url: str, dest: Path, server_pk: bytes, pid: int, expected_rows: int,
                   head_hash: str, limit_s: float) -> dict[str, Any]:
    """GET the export into ``dest``, checking it as it streams; time and measure it."""
    cpu0 = proc_cpu_seconds(pid)
    sha = hashlib.sha256()
    framing = FramingCheck()
    size = 0
    t0 = time.perf_counter()
    first_byte = None
    client_timeout = aiohttp.ClientTimeout(total=limit_s)
    async with aiohttp.ClientSession(timeout=client_timeout, auto_decompress=False) as session, \
            session.get(url + "/chronicle/export") as resp:
        t_headers = time.perf_counter() - t0
        sigs = resp.headers.getall(SIGNATURE_HEADER, [])
        if resp.status != 200 or len(sigs) != 1:
            raise RuntimeError(f"export answered {resp.status} with {len(sigs)} signatures")
        signature = sigs[0]
        verifier = StreamingVerifier(server_pk, b64u_decode(signature, 64))
        declared = resp.content_length
        with dest.open("wb") as out:
            async for chunk in resp.content.iter_chunked(CHUNK):
                if first_byte is None:
                    first_byte = time.perf_counter() - t0
                out.write(chunk)
                verifier.update(chunk)
                sha.update(chunk)
                framing.update(chunk)
                size += len(chunk)
    total = time.perf_counter() - t0
    status = proc_status(pid)
    problems = framing.problems(expected_rows, head_hash)
    if declared is not None and declared != size:
        problems.append(f"Content-Length {declared} but {size} bytes received")
    signature_ok = verifier.verify()
    if not signature_ok:
        problems.append("Body-Signature-Ed25519 does not verify over the body")
    return {
        "headers_s": round(t_headers, 3),
        "first_byte_s": round(first_byte if first_byte is not None else total, 3),
        "total_s": round(total, 3),
        "bytes": size,
        "mb_per_s": round(size / total / 1e6, 1),
        "server_cpu_s": round(proc_cpu_seconds(pid) - cpu0, 2),
        "server_peak_rss_mb": round(status["VmHWM"] / 1024, 1),
        "server_rss_mb": round(status["VmRSS"] / 1024, 1),
        "signature": signature,
        "signature_ok": signature_ok,
        "sha256": sha.hexdigest(),
        "rows": framing.rows,
        "problems": problems,
    }


def cache_files(data_dir: Path) -> dict[str, tuple[int, int, int]]:
    """name -> (inode, size, mtime_ns) of the server's spooled documents."""
    cache = data_dir / "cache"
    if not cache.exists():
        return {}
    return {p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in cache.iterdir()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--body-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=20_000, help="entries per transaction")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per download")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record a py-spy profile of the server during the first export")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the data dir and downloads")
    args = parser.parse_args(argv)

    self_test()
    started = datetime.now(UTC)
    base = Path(tempfile.mkdtemp(prefix="chronicle-bench-export-", dir="/tmp"))
    data_dir = base / "data"
    print(f"# bench_export {started:%Y-%m-%d %H:%M} UTC; {machine_summary()}; "
          f"{args.entries} entries of {args.body_size} bytes; data under {base}", flush=True)
    result: dict[str, Any] = {"started": started.isoformat(), "machine": machine_summary(),
                              "entries": args.entries}
    try:
        server_key = init_data_dir(data_dir, {"publish-new-clients": "false"})
        client = SigningKey.generate()
        add_client(data_dir, client.public_b64)
        info = fill_chain(data_dir, client.secret, args.entries, body_size=args.body_size,
                          batch=args.batch)
        db_mb = sum(p.stat().st_size for p in data_dir.glob("chronicle.db*")) / 1e6
        result["fill_s"] = info.seconds
        result["db_mb"] = round(db_mb, 1)
        print(f"filled {info.count} entries in {info.seconds}s "
              f"({info.count / info.seconds:,.0f}/s); database {db_mb:,.0f} MB", flush=True)

        server = chronicle_server(data_dir)
        server.start()
        server_pk = b64u_decode(server_key, 32, what="server key")
        try:
            result["server_rss_at_start_mb"] = round(proc_status(server.pid)["VmHWM"] / 1024, 1)
            runs = []
            before: dict[str, tuple[int, int, int]] = {}
            for n in (1, 2):
                dest = base / f"export-{n}.json"
                profiler = None
                if args.profile and n == 1:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    profiler = Profiler(server.pid, args.profile /
                                        f"chronicle-export-{args.entries}.txt")
                try:
                    run = uvloop.run(download(server.url, dest, server_pk, server.pid,
                                              info.count, info.head_currhash, args.timeout))
                finally:
                    if profiler is not None:
                        print(f"profile: {profiler.stop()}", flush=True)
                files = cache_files(data_dir)
                if n == 1:
                    before = files
                else:
                    run["cache_untouched"] = bool(before) and files == before
                    if not run["cache_untouched"]:
                        run["problems"].append(f"cache changed: {before} -> {files}")
                    if run["sha256"] != runs[0]["sha256"]:
                        run["problems"].append("second export differs from the first")
                runs.append(run)
                print(f"export #{n}: headers {run['headers_s']}s, first byte "
                      f"{run['first_byte_s']}s, total {run['total_s']}s, "
                      f"{run['bytes']:,} bytes ({run['mb_per_s']} MB/s), server cpu "
                      f"{run['server_cpu_s']}s, server peak RSS {run['server_peak_rss_mb']} MB, "
                      f"signature {'OK' if run['signature_ok'] else 'BAD'}, rows {run['rows']}"
                      + (f", PROBLEMS: {run['problems']}" if run["problems"] else ""),
                      flush=True)
                if not args.keep:
                    dest.unlink()
            result["downloads"] = runs
        finally:
            result["server_exit"] = server.stop()
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print(f"\nserver peak RSS at start: {result['server_rss_at_start_mb']} MB\n")
    print("| export | headers (TTFB) s | first body byte s | total s | bytes | server CPU s "
          "| server peak RSS MB | signature | rows | same bytes as #1, cache untouched |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---|")
    for n, r in enumerate(result["downloads"], 1):
        cached = ("" if n == 1 else
                  "yes" if r.get("cache_untouched") and not r["problems"] else "**NO**")
        print(f"| #{n}{' (cached)' if n == 2 else ''} | {r['headers_s']} | {r['first_byte_s']} "
              f"| {r['total_s']} | {r['bytes']:,} | {r['server_cpu_s']} "
              f"| {r['server_peak_rss_mb']} | {'valid' if r['signature_ok'] else 'INVALID'} "
              f"| {r['rows']:,} | {cached} |")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 1 if any(r["problems"] for r in result["downloads"]) else 0


if __name__ == "__main__":
    sys.exit(main())
