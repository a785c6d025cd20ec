"""Soak run: mixed publish/read load on a loopback server that is SIGKILLed and restarted
periodically; at the end, proof that nothing acknowledged was lost.

Bounded (``--minutes``, default 10; every request has a timeout; the final checks have
deadlines) and loopback only (the server binds 127.0.0.1 on a free port, in a throwaway
data directory; ``--backend postgres`` uses a throwaway database, dropped afterwards).

- ``--publishers`` workers publish unique signed bodies (several clients), each answer's
  signature and receipt checked. An answer lost to a kill leaves the publish *in doubt*:
  it is retried later with the same signed bytes (a retry of a stored publish answers its
  stored receipt), as a careful client does.
- ``--readers`` workers read: ``lasthash``, ``lookup`` of an acknowledged hash (it must be
  there) and ``since`` one of the last 20 acknowledged (what a poller asks); every
  answer's signature checked.
- Every ``--kill-every`` seconds the server gets SIGKILL and is started again on the same
  data; after each restart ``chronicle audit --state`` proves the chain still extends the
  head the previous audit verified (no acknowledged entry rolled back).
- At the end: every publish still in doubt is retried until acknowledged; a full
  ``chronicle audit`` from genesis; the export must hold each acknowledged body exactly
  once, at its receipt's hash, and nothing that was not sent; and every acknowledged
  currhash is looked up over HTTP. Exit 0 only if all of that holds.

    python scripts/soak.py                          # 10 minutes, SIGKILL every 60 s
    python scripts/soak.py --minutes 1 --kill-every 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from benchutil import (
    CHRONICLE,
    CHRONICLE_ROOT,
    PG_ADMIN_URL,
    PostgresDatabase,
    ServerProcess,
    add_client,
    chronicle_server,
    init_data_dir,
    machine_summary,
)

from chronicle.core.encoding import b64u_decode, b64u_encode
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, SigningKey, verify

TIMEOUT = aiohttp.ClientTimeout(total=20)


@dataclass
class Publisher:
    key: SigningKey
    client_id: str


@dataclass
class Soak:
    """Shared state of one run."""

    server_pk: bytes
    clients: list[Publisher]
    url: str = ""
    up: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    acked: dict[str, str] = field(default_factory=dict)  # body -> currhash
    hashes: list[str] = field(default_factory=list)  # acked currhashes, for the readers
    sent: set[str] = field(default_factory=set)
    sent_now: set[str] = field(default_factory=set)  # first attempts in flight
    in_doubt: dict[str, Publisher] = field(default_factory=dict)  # body -> its signer
    served: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    restart_s: list[float] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)


def signed_json(server_pk: bytes, status: int, headers: Any, body: bytes) -> Any:
    """The answer's JSON if its one signature verifies; raise otherwise."""
    sigs = headers.getall(SIGNATURE_HEADER, [])
    if len(sigs) != 1 or not verify(server_pk, body, b64u_decode(sigs[0], 64)):
        raise ValueError(f"HTTP {status}: answer not signed by the server key")
    return json.loads(body)


async def call(soak: Soak, session: aiohttp.ClientSession, method: str, path: str,
               body: bytes | None = None, headers: dict[str, str] | None = None
               ) -> tuple[int, Any]:
    async with session.request(method, soak.url + path, data=body, headers=headers) as res:
        raw = await res.read()
        return res.status, signed_json(soak.server_pk, res.status, res.headers, raw)


def transport_kind(exc: BaseException, soak: Soak) -> str:
    when = "while the server was down" if not soak.up.is_set() else "while up"
    return f"connection failed {when} ({type(exc).__name__})"


async def publish(soak: Soak, session: aiohttp.ClientSession, who: Publisher,
                  text: str) -> bool:
    """One publish attempt; True when acknowledged. Anything else leaves it in doubt."""
    data = text.encode()
    headers = {CLIENT_HEADER: who.client_id, SIGNATURE_HEADER: who.key.sign_b64(data)}
    ok = await _publish(soak, session, text, data, headers)
    if not ok:
        soak.in_doubt[text] = who
    return ok


async def _publish(soak: Soak, session: aiohttp.ClientSession, text: str, data: bytes,
                   headers: dict[str, str]) -> bool:
    try:
        status, doc = await call(soak, session, "POST", "/chronicle/publish", data, headers)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        soak.errors[f"publish: {transport_kind(exc, soak)}"] += 1
        return False
    except ValueError as exc:
        soak.errors[f"publish: {exc}"] += 1
        return False
    if status != 200:
        soak.errors[f"publish: {status} {doc.get('message')}"] += 1
        return False
    currhash = doc["results"]["currhash"]
    if soak.acked.get(text, currhash) != currhash:
        soak.errors["publish: a retry answered another receipt"] += 1
        return False
    soak.served["publish 200"] += 1
    soak.acked[text] = currhash
    soak.hashes.append(currhash)
    return True


async def publisher(soak: Soak, number: int) -> None:
    nonce = random.getrandbits(32)
    seq = 0
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        while not soak.stop.is_set():
            await soak.up.wait()
            who = soak.clients[number % len(soak.clients)]
            if soak.in_doubt and random.random() < 0.5:
                text = next(iter(soak.in_doubt))
                who = soak.in_doubt.pop(text)
            else:
                text = f"soak publisher={number} seq={seq} nonce={nonce:08x}"
                seq += 1
                soak.sent.add(text)
                soak.sent_now.add(text)
            if await publish(soak, session, who, text) and text not in soak.sent_now:
                soak.served["publish 200 (a retry of one in doubt)"] += 1
            soak.sent_now.discard(text)


async def reader(soak: Soak) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        while not soak.stop.is_set():
            await soak.up.wait()
            kind = random.choice(("lasthash", "lookup", "since")) if soak.hashes \
                else "lasthash"
            try:
                if kind == "lasthash":
                    status, doc = await call(soak, session, "GET", "/chronicle/lasthash")
                    ok = status == 200
                else:
                    # since: a recent hash (a poller's next page), not half the chain
                    wanted = random.choice(soak.hashes if kind == "lookup"
                                           else soak.hashes[-20:])
                    path = f"/chronicle/{kind}/{wanted}"
                    status, doc = await call(soak, session, "GET", path)
                    if kind == "lookup":
                        ok = status == 200 and [r["currhash"] for r in doc["results"]] == \
                            [wanted]
                    else:
                        ok = status == 200 and all(r["prevhash"] for r in doc["results"])
                    if status == 404:
                        soak.errors[f"{kind}: an acknowledged hash is not found"] += 1
                        continue
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                soak.errors[f"{kind}: {transport_kind(exc, soak)}"] += 1
                continue
            except ValueError as exc:
                soak.errors[f"{kind}: {exc}"] += 1
                continue
            if ok:
                soak.served[f"{kind} 200"] += 1
            else:
                soak.errors[f"{kind}: {status} {doc.get('message')}"] += 1


def run_audit(soak: Soak, state: Path | None) -> dict[str, Any]:
    """``chronicle audit`` of the running server (``state``: the incremental mode that
    also proves the chain extends the head verified last time)."""
    argv = [*CHRONICLE, "audit", soak.url, "--server-key", b64u_encode(soak.server_pk),
            "--json"]
    if state is not None:
        argv += ["--state", str(state)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False,
                          cwd=CHRONICLE_ROOT)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = {"output": proc.stdout[-500:], "stderr": proc.stderr[-500:]}
    return {"exit": proc.returncode, "report": report}


async def supervise(soak: Soak, data: Path, args: argparse.Namespace, state: Path,
                    end: float) -> ServerProcess:
    """Start the server; SIGKILL and restart it every ``--kill-every`` seconds until
    ``end``; after each restart an incremental audit. Returns the running server."""
    server = await asyncio.to_thread(start, data, args.workers)
    soak.url = server.url
    soak.up.set()
    loop = asyncio.get_running_loop()
    while loop.time() + args.kill_every < end:
        await asyncio.sleep(args.kill_every * random.uniform(0.8, 1.2))
        soak.up.clear()
        assert server.proc is not None
        server.proc.kill()
        await asyncio.to_thread(server.proc.wait, 30)
        soak.kills += 1
        began = time.monotonic()
        server = await asyncio.to_thread(start, data, args.workers)
        soak.restart_s.append(round(time.monotonic() - began, 2))
        soak.url = server.url
        soak.up.set()
        audit = await asyncio.to_thread(run_audit, soak, state)
        soak.audits.append({"after_kill": soak.kills, "exit": audit["exit"],
                            "entries": audit["report"].get("entries")
                            if isinstance(audit["report"], dict) else None})
        print(f"  kill {soak.kills}: restarted in {soak.restart_s[-1]} s, "
              f"audit --state exit {audit['exit']}, acked {len(soak.acked)}, "
              f"in doubt {len(soak.in_doubt)}", file=sys.stderr)
    return server


def start(data: Path, workers: int) -> ServerProcess:
    server = chronicle_server(data, workers)
    url = server.start(timeout=60)
    if not url.startswith("http://127.0.0.1:"):
        server.stop()
        raise SystemExit(f"refusing to soak a non-loopback server: {url}")
    return server


async def finish(soak: Soak) -> dict[str, Any]:
    """Retry what is in doubt, then prove nothing acknowledged was lost."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        deadline = time.monotonic() + 300
        while soak.in_doubt and time.monotonic() < deadline:
            for text in list(soak.in_doubt):
                await publish(soak, session, soak.in_doubt.pop(text), text)
        audit = await asyncio.to_thread(run_audit, soak, None)
        status, export = await call(soak, session, "GET", "/chronicle/export")
        rows = export["results"] if status == 200 else []
        by_hash = {r["hash"]: r["contents"] for r in rows}
        contents = [r["contents"] for r in rows]
        missing = [b for b, h in soak.acked.items() if by_hash.get(h) != b]
        duplicates = len(contents) - len(set(contents))
        foreign = [c for c in contents if c.startswith("soak ") and c not in soak.sent]

        lost_lookups: list[str] = []
        queue = list(soak.acked.items())

        async def look() -> None:
            while queue:
                text, currhash = queue.pop()
                for _ in range(3):
                    try:
                        code, doc = await call(soak, session, "GET",
                                               f"/chronicle/lookup/{currhash}")
                        break
                    except (aiohttp.ClientError, TimeoutError, OSError):
                        await asyncio.sleep(1)
                else:
                    code, doc = 0, {}
                found = [r["contents"] for r in doc.get("results", [])] if code == 200 else []
                if found != [text]:
                    lost_lookups.append(currhash)
        await asyncio.gather(*(look() for _ in range(16)))
    return {"in_doubt_left": len(soak.in_doubt), "full_audit_exit": audit["exit"],
            "full_audit": audit["report"], "chain_entries": len(rows),
            "acknowledged": len(soak.acked), "acknowledged_missing_from_export": len(missing),
            "duplicate_contents": duplicates, "entries_never_sent": len(foreign),
            "lookups": len(soak.acked), "lookups_failed": len(lost_lookups)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="chronicle-soak-"))
    pg = PostgresDatabase(args.pg_admin) if args.backend == "postgres" else None
    try:
        data = tmp / "data"
        database = pg.create() if pg is not None else None
        server_key = init_data_dir(data, {"replicate-interval": "", "cross-sign-interval": "",
                                          "scheduled-attestation": "",
                                          "publish-new-clients": "false"},
                                   database=database)
        clients = []
        for _ in range(4):
            key = SigningKey.generate()
            clients.append(Publisher(key, add_client(data, key.public_b64)))
        soak = Soak(server_pk=b64u_decode(server_key, 32), clients=clients)
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        end = loop.time() + args.minutes * 60
        tasks = [asyncio.create_task(publisher(soak, i)) for i in range(args.publishers)]
        tasks += [asyncio.create_task(reader(soak)) for _ in range(args.readers)]
        server = await supervise(soak, data, args, tmp / "audit.state", end)
        try:
            await asyncio.sleep(max(0.0, end - loop.time()))
            soak.stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
            load_s = time.monotonic() - began
            proof = await finish(soak)
            exit_code = server.stop()
        finally:
            server.stop()
        proof["server_exit_on_sigterm"] = exit_code
        return {
            "command": "python scripts/soak.py " + " ".join(sys.argv[1:]),
            "machine": machine_summary(), "backend": args.backend, "workers": args.workers,
            "load_seconds": round(load_s, 1), "publishers": args.publishers,
            "readers": args.readers, "kills": soak.kills, "restart_seconds": soak.restart_s,
            "requests_served": dict(soak.served),
            "served_total": sum(v for k, v in soak.served.items() if "retry" not in k),
            "errors": dict(soak.errors), "error_total": sum(soak.errors.values()),
            "audits_after_restarts": soak.audits, "proof": proof,
            "nothing_lost": (proof["acknowledged_missing_from_export"] == 0
                             and proof["lookups_failed"] == 0 and proof["in_doubt_left"] == 0
                             and proof["full_audit_exit"] == 0
                             and proof["duplicate_contents"] == 0
                             and proof["entries_never_sent"] == 0
                             and all(a["exit"] == 0 for a in soak.audits)),
        }
    finally:
        if pg is not None:
            pg.drop()
        shutil.rmtree(tmp, ignore_errors=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load")
    parser.add_argument("--kill-every", type=float, default=60.0,
                        help="seconds between SIGKILLs (±20%%)")
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="serve --workers N")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-admin", default=PG_ADMIN_URL,
                        help="PostgreSQL URL allowed to create the throwaway database")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.minutes > 24 * 60 or args.kill_every < 5:
        parser.error("--minutes must be in (0, 1440] and --kill-every at least 5")
    return args


if __name__ == "__main__":
    arguments = parse()
    result = asyncio.run(main(arguments))
    text = json.dumps(result, indent=2)
    print(text)
    if arguments.json is not None:
        arguments.json.write_text(text)
    sys.exit(0 if result["nothing_lost"] else 1)
