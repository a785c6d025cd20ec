"""Closed-loop HTTP load generator for Chronicle servers, importable and a CLI.

All requests are prepared (and publish bodies signed) before timing starts; then
``concurrency`` workers share one keep-alive ``aiohttp.ClientSession`` and send them one
after another, each worker waiting for its answer before sending the next. Every answer is
checked: status, exactly one ``Body-Signature-Ed25519`` valid for the pinned server key,
JSON ``status: OK`` and the endpoint's result shape. Latency is measured from send to
the last body byte (verification is not part of it, but it does use the client's CPU).

Bounded: a fixed number of requests and a wall-clock cap (workers stop taking new
requests at the cap; a single request may take at most ``request_timeout`` seconds).

    python scripts/loadgen.py publish --url http://127.0.0.1:PORT --client-id ID \\
        --secret-key-file client.key --server-key PK -n 5000 -c 16
    python scripts/loadgen.py lasthash --url http://127.0.0.1:PORT --server-key PK -n 20000 -c 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import string
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, SigningKey, verify

PRINTABLE = string.ascii_letters + string.digits + " .,:;-_!?()[]<>@#$%^&*+=~|/"


@dataclass(frozen=True, slots=True)
class Request:
    """One prepared request; ``expect`` is whatever its checker needs (e.g. a hash)."""

    method: str
    path: str
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    expect: Any = None


# A checker returns None when the answer is right, else a short reason (an error bucket).
Checker = Callable[[Request, int, Any, bytes], str | None]


@dataclass
class LoadResult:
    """What one load run measured. Latencies in milliseconds."""

    label: str
    concurrency: int
    requests: int
    ok: int
    errors: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    error_kinds: dict[str, int] = field(default_factory=dict)
    timed_out: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        kinds = f" {self.error_kinds}" if self.error_kinds else ""
        capped = " (time cap hit)" if self.timed_out else ""
        return (f"{self.label:<10} c={self.concurrency:<3} n={self.requests:<6} "
                f"errors={self.errors}{kinds} {self.duration_s:7.2f}s {self.rps:9.1f} req/s  "
                f"p50={self.p50_ms:.2f} p90={self.p90_ms:.2f} p99={self.p99_ms:.2f} "
                f"max={self.max_ms:.2f} ms{capped}")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


# --- request preparation --------------------------------------------------------------------

def random_bodies(count: int, size: int = 256, seed: int | None = None) -> list[bytes]:
    """``count`` distinct printable-ASCII bodies of exactly ``size`` bytes.

    Each starts with a per-run random tag and its index, so bodies are unique within a run
    and across runs (a server must never see the same signed body twice by accident).
    """
    rng = random.Random(seed)
    tag = os.urandom(6).hex()
    out = []
    for i in range(count):
        prefix = f"{tag}-{i:08d} "
        if len(prefix) > size:
            raise ValueError(f"body size {size} is too small for a unique prefix")
        out.append((prefix + "".join(rng.choices(PRINTABLE, k=size - len(prefix)))).encode())
    return out


def prepare_publishes(key: SigningKey, client_id: str, count: int, *, size: int = 256,
                      path: str = "/chronicle/publish") -> list[Request]:
    """Sign ``count`` unique bodies now, so signing costs nothing during the run."""
    return [Request("POST", path, body, {CLIENT_HEADER: client_id,
                                         SIGNATURE_HEADER: key.sign_b64(body),
                                         "Content-Type": "text/plain"})
            for body in random_bodies(count, size)]


def prepare_gets(path: str, count: int) -> list[Request]:
    return [Request("GET", path) for _ in range(count)]


def prepare_lookups(hashes: Sequence[str], count: int, seed: int | None = None) -> list[Request]:
    """``count`` lookups of hashes drawn at random from ``hashes`` (expect: that hash)."""
    rng = random.Random(seed)
    return [Request("GET", f"/chronicle/lookup/{h}", expect=h)
            for h in (rng.choice(hashes) for _ in range(count))]


# --- answer checks ---------------------------------------------------------------------------

def _signed_ok_json(server_pk: bytes, status: int, headers: Any, body: bytes
                    ) -> tuple[dict[str, Any] | None, str | None]:
    if status != 200:
        return None, f"http-{status}"
    sigs = headers.getall(SIGNATURE_HEADER, [])
    if len(sigs) != 1:
        return None, "signature-header-count"
    try:
        sig = b64u_decode(sigs[0], 64, what="signature")
    except Exception:
        return None, "signature-encoding"
    if not verify(server_pk, body, sig):
        return None, "bad-signature"
    try:
        doc = json.loads(body)
    except ValueError:
        return None, "not-json"
    if not isinstance(doc, dict) or doc.get("status") != "OK":
        return None, "status-not-ok"
    return doc, None


def publish_checker(server_pk: bytes, receipts: dict[str, str] | None = None) -> Checker:
    """200, valid signature, status OK, results with currhash/summaryhash/created.

    ``receipts``, when given, collects every acknowledged publish (warm-up ones too):
    the request's signature (base64url, as sent) -> the receipt's currhash, so the caller
    can check afterwards that the database holds exactly these entries.
    """
    def check(req: Request, status: int, headers: Any, body: bytes) -> str | None:
        doc, err = _signed_ok_json(server_pk, status, headers, body)
        if doc is None:
            return err
        res = doc.get("results")
        if not isinstance(res, dict) or not all(
                isinstance(res.get(k), str) and res[k]
                for k in ("currhash", "summaryhash", "created")):
            return "bad-receipt"
        if receipts is not None:
            receipts[req.headers[SIGNATURE_HEADER]] = res["currhash"]
        return None
    return check


def lasthash_checker(server_pk: bytes, head_currhash: str | None = None) -> Checker:
    """200, valid signature, one row (whose currhash is ``head_currhash`` when given)."""
    def check(req: Request, status: int, headers: Any, body: bytes) -> str | None:
        doc, err = _signed_ok_json(server_pk, status, headers, body)
        if doc is None:
            return err
        rows = doc.get("results")
        if not isinstance(rows, list) or len(rows) != 1:
            return "bad-results"
        if head_currhash is not None and rows[0].get("currhash") != head_currhash:
            return "wrong-head"
        return None
    return check


def lookup_checker(server_pk: bytes) -> Checker:
    """200, valid signature, a row whose currhash or summaryhash is the hash looked up."""
    def check(req: Request, status: int, headers: Any, body: bytes) -> str | None:
        doc, err = _signed_ok_json(server_pk, status, headers, body)
        if doc is None:
            return err
        rows = doc.get("results")
        if not isinstance(rows, list) or not any(
                req.expect in (r.get("currhash"), r.get("summaryhash")) for r in rows):
            return "wrong-row"
        return None
    return check


# --- the run ---------------------------------------------------------------------------------

async def run_load(base_url: str, requests: Sequence[Request], concurrency: int,
                   checker: Checker, *, label: str = "", time_cap: float = 120.0,
                   warmup: Sequence[Request] = (), request_timeout: float = 30.0
                   ) -> LoadResult:
    """Send ``requests`` with ``concurrency`` workers; ``warmup`` ones first, untimed."""
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    connector = aiohttp.TCPConnector(limit=concurrency + 4, limit_per_host=0,
                                     keepalive_timeout=120, ttl_dns_cache=None)
    latencies: list[float] = []
    kinds: Counter[str] = Counter()
    loop = asyncio.get_running_loop()

    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout,
                                     auto_decompress=False) as session:

        async def one(req: Request, record: bool) -> None:
            t0 = time.perf_counter()
            try:
                async with session.request(req.method, req.path, data=req.body,
                                           headers=req.headers) as resp:
                    body = await resp.read()
                    status, headers = resp.status, resp.headers
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if record:
                    kinds[f"transport:{type(exc).__name__}"] += 1
                return
            elapsed = time.perf_counter() - t0
            reason = checker(req, status, headers, body)
            if not record:
                if reason is not None:
                    kinds[f"warmup:{reason}"] += 1
                return
            latencies.append(elapsed)
            if reason is not None:
                kinds[reason] += 1

        async def worker(source: Any, record: bool, deadline: float) -> None:
            for req in source:
                if loop.time() > deadline:
                    return
                await one(req, record)

        if warmup:
            wsrc = iter(warmup)
            await asyncio.gather(*(worker(wsrc, False, loop.time() + time_cap)
                                   for _ in range(concurrency)))
        src = iter(requests)
        start = time.perf_counter()
        deadline = loop.time() + time_cap
        await asyncio.gather(*(worker(src, True, deadline) for _ in range(concurrency)))
        duration = time.perf_counter() - start
        timed_out = loop.time() > deadline

    done = len(latencies) + sum(v for k, v in kinds.items() if k.startswith("transport:"))
    errors = sum(v for k, v in kinds.items() if not k.startswith("warmup:"))
    lat = sorted(x * 1000 for x in latencies)
    return LoadResult(
        label=label, concurrency=concurrency, requests=done, ok=done - errors, errors=errors,
        duration_s=round(duration, 3), rps=round(done / duration, 1) if duration else 0.0,
        p50_ms=round(percentile(lat, 50), 2), p90_ms=round(percentile(lat, 90), 2),
        p99_ms=round(percentile(lat, 99), 2), max_ms=round(lat[-1], 2) if lat else 0.0,
        error_kinds=dict(kinds), timed_out=timed_out)


# --- CLI ---------------------------------------------------------------------------------------

def _run(coro: Any) -> Any:
    """Run on uvloop, as the servers do, when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chronicle load generator (loopback only).")
    parser.add_argument("mode", choices=["publish", "lasthash", "lookup"])
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--server-key", required=True, help="pinned server public key")
    parser.add_argument("--client-id", help="publish: Chronicle-Client-Key-ID")
    parser.add_argument("--secret-key-file", type=Path,
                        help="publish: client secret key file (chronicle keygen --out)")
    parser.add_argument("--hash", action="append", default=[],
                        help="lookup: a hash to look up (repeatable)")
    parser.add_argument("-n", "--requests", type=int, default=5000)
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--body-size", type=int, default=256)
    parser.add_argument("--time-cap", type=float, default=120.0, help="seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    host = args.url.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        parser.error("targets must be on loopback")
    server_pk = b64u_decode(args.server_key, 32, what="server key")
    total = args.requests + args.warmup
    if args.mode == "publish":
        if not (args.client_id and args.secret_key_file):
            parser.error("publish needs --client-id and --secret-key-file")
        key = SigningKey.from_text(args.secret_key_file.read_text())
        reqs = prepare_publishes(key, args.client_id, total, size=args.body_size)
        checker = publish_checker(server_pk)
    elif args.mode == "lasthash":
        reqs = prepare_gets("/chronicle/lasthash", total)
        checker = lasthash_checker(server_pk)
    else:
        if not args.hash:
            parser.error("lookup needs at least one --hash")
        reqs = prepare_lookups(args.hash, total)
        checker = lookup_checker(server_pk)

    async def go() -> LoadResult:
        return await run_load(args.url, reqs[args.warmup:], args.concurrency, checker,
                              label=args.mode, time_cap=args.time_cap,
                              warmup=reqs[:args.warmup])

    result = _run(go())
    print(json.dumps(result.as_dict()) if args.json else result.line())
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(_main())

