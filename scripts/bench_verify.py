"""Benchmark ``chronicle verify``: a sync from scratch of a ledger of N releases, then a
``verify lock`` of 200 packages (issue 13). The ledger is a loopback server on SQLite in a
temporary directory (entries appended through its sequencer, as publishes would be); the
verifier runs as ``python -m chronicle verify …`` subprocesses, timed, with their peak RSS;
then one more release and an incremental sync (one entry fetched).

    python scripts/bench_verify.py [--releases 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chronicle.release.messages import AddKey, Update, enable_contents, sign_message
from tests.helpers import serving
from tests.release_support import CORE, NOW, key, meta, pk


def run(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "chronicle", *args], capture_output=True,
                          text=True, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"chronicle {' '.join(args[:2])} failed: {proc.stderr}")
    return took, proc.stdout


async def bench(releases: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with serving(root / "ledger") as srv:
            ledger = srv.ctx.ledger("")
            server = srv.key

            async def append(contents: bytes, signer=None) -> None:
                k = signer or key("client")
                await ledger.append(contents, k.public, k.sign(contents))

            start = time.perf_counter()
            await append(enable_contents(NOW, CORE, pk("core")), server)
            await append(sign_message(AddKey(vendor="acme", publickey=pk("acme1")),
                                      key("core")))
            acme = key("acme1")
            for lo in range(0, releases, 1000):
                await asyncio.gather(*(append(sign_message(Update(
                    vendor="acme", name=f"pkg{i}", version="1.0.0", metadata=meta(i)), acme))
                    for i in range(lo, min(releases, lo + 1000))))
            print(f"ledger of {releases} releases built in "
                  f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
            state = root / "state"
            lock = root / "composer.lock"
            lock.write_text(json.dumps({"packages": [
                {"name": f"acme/pkg{i}", "version": "1.0.0"} for i in range(200)]}))
            await asyncio.to_thread(run, "verify", "init", "--state", str(state), "--url",
                                    srv.url, "--server-key", server.public_b64)
            sync_s, out = await asyncio.to_thread(run, "verify", "sync", "--state",
                                                  str(state), "--json")
            fetched = json.loads(out)["fetched"]
            await append(sign_message(Update(vendor="acme", name="one-more", version="1.0.0",
                                             metadata=meta(releases)), acme))
            again_s, out = await asyncio.to_thread(run, "verify", "sync", "--state",
                                                   str(state), "--json")
            assert json.loads(out)["fetched"] == 1
            lock_s, out = await asyncio.to_thread(run, "verify", "lock", str(lock),
                                                  "--state", str(state), "--offline",
                                                  "--json")
            assert json.loads(out)["summary"]["ok"] == 200
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            print(json.dumps({"releases": releases, "entries-fetched": fetched,
                              "sync-s": round(sync_s, 2), "lock-200-s": round(lock_s, 2),
                              "incremental-sync-1-s": round(again_s, 2),
                              "total-s": round(sync_s + lock_s, 2),
                              "peak-rss-mb": round(rss, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--releases", type=int, default=10_000)
    asyncio.run(bench(parser.parse_args().releases))


if __name__ == "__main__":
    main()
