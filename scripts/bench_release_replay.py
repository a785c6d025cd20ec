"""Benchmark a verifier's replay of a release ledger (chronicle.release.state.replay).

    python -m scripts.bench_release_replay                   # 100,000 releases
    python -m scripts.bench_release_replay --releases 20000 --vendors 50 --json

Builds (untimed) a synthetic chain: the enable entry, one vouched key per vendor, then
``--releases`` signed ``update`` messages spread over the vendors' packages, every tenth
entry other traffic that is skipped. Then times replaying it into a fresh state (every
op-sig verified, every rule applied) and serialising the state, and reports entries/s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from datetime import UTC, datetime

from chronicle.core.encoding import b64u_encode
from chronicle.core.sapient import SigningKey
from chronicle.release.messages import AddKey, Metadata, Update, enable_contents, sign_message
from chronicle.release.state import ChainEntry, replay

START_NOW = "2026-01-01T00:00:00+00:00"


def _key(name: str) -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(f"bench-{name}".encode()).digest())


def build(releases: int, vendors: int) -> tuple[str, list[ChainEntry]]:
    server, core = _key("server"), _key("core")
    contents = [enable_contents(datetime(2026, 1, 1, tzinfo=UTC), "registry", core.public_b64)]
    keys = [_key(f"vendor{v}") for v in range(vendors)]
    contents += [sign_message(AddKey(f"vendor{v}", k.public_b64), core)
                 for v, k in enumerate(keys)]
    for n in range(releases):
        if n % 10 == 9:
            contents.append(json.dumps({"note": n}).encode())
        v = n % vendors
        meta = Metadata(repo=f"https://github.com/vendor{v}/pkg",
                        commit=hashlib.sha1(str(n).encode(), usedforsecurity=False).hexdigest(),
                        tree="b3t1:" + b64u_encode(hashlib.sha256(str(n).encode()).digest()))
        version = f"{n // (vendors * 10)}.{n % 10}.0"
        contents.append(sign_message(Update(f"vendor{v}", f"pkg{(n // vendors) % 10}", version,
                                            meta), keys[v]))
    entries = [ChainEntry(index=i, currhash=b64u_encode(hashlib.blake2b(
        i.to_bytes(8, "big"), digest_size=32).digest()), created=START_NOW,
        publickey=server.public_b64 if i == 0 else core.public_b64, contents=c)
        for i, c in enumerate(contents)]
    return server.public_b64, entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=100_000)
    parser.add_argument("--vendors", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    server_key, entries = build(args.releases, args.vendors)
    start = time.perf_counter()
    state = replay(entries, server_key=server_key)
    replayed = time.perf_counter() - start
    start = time.perf_counter()
    document = state.to_json()
    serialised = time.perf_counter() - start
    accepted = len(state.updates())
    assert accepted == args.releases, (accepted, state.rejected()[:3])
    assert not state.rejected()
    result = {"entries": len(entries), "releases": accepted, "replay_s": round(replayed, 3),
              "entries_per_s": round(len(entries) / replayed),
              "to_json_s": round(serialised, 3), "state_bytes": len(document)}
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>14}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
