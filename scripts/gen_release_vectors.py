"""Write the release message vectors (tests/vectors/release/chains.json).

Chains of entries, valid and invalid release messages mixed with other traffic, each with
the verdict the rules give (``accepted``, ``skipped:<kind>`` or a violation code and its
exact message) and the canonical state after the whole chain. Keys come from fixed seeds
(Ed25519 seed = SHA-256("chronicle-release-vector-" + name)); entries carry a real
BLAKE2b chain (currhash) and a real Chronicle signature by the publishing client, so the
chains can also be fed to a ledger. Running this again must reproduce the committed file:

    python -m scripts.gen_release_vectors [--out tests/vectors/release]

(run from the repository root, so this checkout's package is the one imported).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chronicle.core.blakechain import currhash
from chronicle.core.encoding import b64u_encode
from chronicle.core.sapient import SigningKey
from chronicle.release.messages import (
    AddKey,
    AttestUpdate,
    Body,
    Metadata,
    RevokeKey,
    RevokeUpdate,
    Update,
    canonical_body,
    enable_contents,
    envelope,
    sign_message,
)
from chronicle.release.state import Accepted, ChainEntry, ReleaseState, Skipped, Verdict

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "release"
START = datetime(2026, 1, 1, tzinfo=UTC)
KEY_NAMES = ("server", "client", "core", "core-ci", "acme1", "acme2", "acme-ci", "acme3",
             "beta1", "rebuild1", "mallory")


def key(name: str) -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(f"chronicle-release-vector-{name}".encode())
                                .digest())


K = {name: key(name) for name in KEY_NAMES}


def pk(name: str) -> str:
    return K[name].public_b64


def meta(n: int) -> Metadata:
    digest = hashlib.sha256(f"tree-{n}".encode()).digest()
    return Metadata(repo="https://github.com/acme/demo", commit=hashlib.sha1(
        f"commit-{n}".encode(), usedforsecurity=False).hexdigest(),
        tree="b3t1:" + b64u_encode(hashlib.blake2b(digest, digest_size=32).digest()),
        dist_sha256=hashlib.sha256(f"dist-{n}".encode()).hexdigest())


class Builder:
    """Appends entries with a real chain hash, judging each as a verifier replays it."""

    def __init__(self) -> None:
        self.state = ReleaseState(server_key=pk("server"))
        self.prev: bytes | None = None
        self.rows: list[dict[str, Any]] = []

    def add(self, label: str, contents: bytes, *, by: str = "client") -> Verdict:
        index = len(self.rows)
        created = (START + timedelta(seconds=index)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        signer = K[by]
        signature = signer.sign(contents)
        chash = currhash(self.prev, created, signer.public, signature, contents)
        self.prev = chash
        entry = ChainEntry(index=index, currhash=b64u_encode(chash), created=created,
                           publickey=signer.public_b64, contents=contents)
        verdict = self.state.ingest(entry)
        row: dict[str, Any] = {"label": label, "index": index, "currhash": entry.currhash,
                               "created": created, "publickey": entry.publickey,
                               "signature": b64u_encode(signature),
                               "contents": contents.decode("utf-8")}
        if isinstance(verdict, Accepted):
            row["expect"] = "accepted"
            row["emergency"] = verdict.emergency
        elif isinstance(verdict, Skipped):
            row["expect"] = f"skipped:{verdict.kind}"
        else:
            row["expect"] = verdict.code
            row["status"] = verdict.status
            row["message"] = verdict.message
        self.rows.append(row)
        return verdict

    def msg(self, label: str, body: Body, signer: str) -> bytes:
        contents = sign_message(body, K[signer])
        self.add(label, contents)
        return contents

    def chain(self, name: str, about: str) -> dict[str, Any]:
        return {"name": name, "about": about, "entries": self.rows,
                "state": json.loads(self.state.to_json())}


def main_chain() -> dict[str, Any]:
    b = Builder()
    enable = enable_contents(START, "registry", pk("core"))
    b.add("enable", enable, by="server")
    b.add("enable-again", enable_contents(START, "registry", pk("acme1")), by="server")
    b.add("enable-not-by-server", enable, by="client")
    b.add("plain-text", b"hello, not json")
    b.add("server-action", json.dumps({"server-action": "New Client Registration",
                                       "now": "2026-01-01T00:00:00+00:00", "clientid": "x",
                                       "publickey": pk("client")}).encode())
    b.add("unknown-op", json.dumps({"op": "vote", "op-body": "{}"}).encode())
    b.add("json-array", b"[1, 2, 3]")
    b.add("json-no-op", b'{"hello": "world"}')
    b.msg("core-key-for-ci", AddKey("registry", pk("core-ci"), "registry-ci", limited=True),
          "core")
    b.msg("acme-first-key", AddKey("acme", pk("acme1"), "acme-1"), "core")
    b.msg("mallory-self-vouched", AddKey("mallory", pk("mallory"), "m"), "mallory")
    b.msg("beta-first-key-limited", AddKey("beta", pk("beta1"), limited=True), "core")
    b.msg("beta-first-key-by-limited-core-key", AddKey("beta", pk("beta1")), "core-ci")
    b.msg("acme-second-key", AddKey("acme", pk("acme2"), "acme-2"), "acme1")
    b.msg("acme-ci-key", AddKey("acme", pk("acme-ci"), "acme-ci", limited=True), "acme1")
    release = b.msg("update-by-ci-key", Update("acme", "demo", "1.0.0", meta(1)), "acme-ci")
    b.add("replay", release)
    b.msg("update-other-spelling", Update("acme", "demo", "v1.0", meta(2)), "acme1")
    b.msg("update-unknown-key", Update("acme", "demo", "1.0.1", meta(3)), "mallory")
    b.msg("add-key-by-limited-key", AddKey("acme", pk("acme3")), "acme-ci")
    b.msg("self-revocation", RevokeKey("acme", pk("acme2")), "acme2")
    b.msg("revoke-acme1", RevokeKey("acme", pk("acme1")), "acme2")
    b.msg("update-by-revoked-key", Update("acme", "demo", "1.0.2", meta(4)), "acme1")
    b.msg("revoke-unknown-key", RevokeKey("acme", pk("mallory")), "acme2")
    b.msg("revoke-revoked-key", RevokeKey("acme", pk("acme1")), "core")
    b.msg("add-existing-key", AddKey("acme", pk("acme-ci"), "again"), "acme2")
    b.msg("revoke-last-full-key", RevokeKey("acme", pk("acme2")), "core")
    b.msg("emergency-add-key", AddKey("acme", pk("acme3"), "acme-3"), "core")
    b.msg("update-unknown-vendor", Update("zeta", "lib", "1.0.0", meta(5)), "core")
    b.msg("revoke-unknown-update", RevokeUpdate("acme", "demo", "2.0.0", "never released"),
          "acme2")
    b.msg("revoke-update", RevokeUpdate("acme", "demo", "1.0.0", "built from a bad tag"),
          "acme2")
    b.msg("revoke-update-again", RevokeUpdate("acme", "demo", "1.0.0", "again"), "acme3")
    b.msg("update-after-revoke", Update("acme", "demo", "1.0.0", meta(6)), "acme2")
    b.msg("rebuild-first-key", AddKey("rebuild", pk("rebuild1"), "rebuilder"), "core")
    b.msg("attest-reproduced", AttestUpdate("acme", "demo", "1.0.0", "rebuild", "reproduced",
                                            "rebuilt from the tagged commit"), "rebuild1")
    b.msg("attest-as-other-vendor", AttestUpdate("acme", "demo", "1.0.0", "acme",
                                                 "code-review"), "rebuild1")
    b.msg("attest-unknown-update", AttestUpdate("acme", "demo", "3.0.0", "rebuild",
                                                "vote-against"), "rebuild1")
    b.msg("revoke-limited-key", RevokeKey("acme", pk("acme-ci")), "acme2")
    b.msg("update-by-revoked-limited-key", Update("acme", "demo", "1.0.3", meta(10)),
          "acme-ci")
    b.msg("emergency-update", Update("acme", "demo", "1.1.0-RC1", meta(7)), "core")
    b.msg("core-own-update", Update("registry", "tools", "0.1.0", meta(8)), "core-ci")
    herd_style = canonical_body(Update("acme", "legacy", "0.9.0", Metadata(
        extra=(("url", '"https://example.invalid/legacy-0.9.0.zip"'),))))
    b.add("herd-style-update", envelope("update", herd_style,
                                        K["acme2"].sign_b64(herd_style.encode()), pk("acme2")))
    bad_sig = canonical_body(Update("acme", "demo", "6.6.6", meta(9)))
    b.add("bad-signature", envelope("update", bad_sig, K["acme2"].sign_b64(b"other"),
                                    pk("acme2")))
    bad_vendor = '{"vendor":"Acme","name":"demo","version":"1.0.0","metadata":{}}'
    b.add("malformed-vendor", envelope("update", bad_vendor,
                                       K["acme2"].sign_b64(bad_vendor.encode()), pk("acme2")))
    partial = ('{"vendor":"acme","name":"demo","version":"1.2.0","metadata":'
               '{"repo":"https://github.com/acme/demo","commit":"' + "0" * 40 + '"}}')
    b.add("malformed-metadata", envelope("update", partial,
                                         K["acme2"].sign_b64(partial.encode()), pk("acme2")))
    b.add("malformed-op-sig", envelope("update", bad_sig, "not-a-signature", pk("acme2")))
    return b.chain("main", "Every rule once: enable, vouching, limited keys, revocations, "
                   "updates, attestations, emergency actions, replays, malformed messages "
                   "and other traffic that is skipped.")


def not_enabled_chain() -> dict[str, Any]:
    b = Builder()
    b.msg("before-enable", AddKey("acme", pk("acme1")), "core")
    b.add("enable", enable_contents(START, "registry", pk("core")), by="server")
    b.msg("after-enable", AddKey("acme", pk("acme1")), "core")
    return b.chain("not-enabled", "A release message before the enable entry is refused; "
                   "the same message after it is accepted.")


def render() -> bytes:
    doc = {
        "about": "Release-ledger chains with the verdict of every entry and the final state "
                 "(docs/release-format.md). Ed25519 seed of key NAME = SHA-256("
                 "'chronicle-release-vector-' + NAME). Generated by "
                 "scripts/gen_release_vectors.py.",
        "server-key": pk("server"),
        "keys": {name: pk(name) for name in KEY_NAMES},
        "chains": [main_chain(), not_enabled_chain()],
    }
    return (json.dumps(doc, indent=1, ensure_ascii=True) + "\n").encode("ascii")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chains.json").write_bytes(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
