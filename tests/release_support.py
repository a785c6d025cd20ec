"""Release-layer test helpers: fixed keys, metadata, a chain that judges as it grows."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import Result

from chronicle.core.encoding import b64u_encode
from chronicle.core.sapient import SigningKey
from chronicle.release.messages import Body, Metadata, enable_contents, sign_message
from chronicle.release.state import Accepted, ChainEntry, ReleaseState, Skipped, Verdict

CORE = "registry"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def key(name: str) -> SigningKey:
    """A fixed test key: Ed25519 seed = SHA-256('chronicle-release-test-' + name)."""
    return SigningKey.from_seed(hashlib.sha256(f"chronicle-release-test-{name}".encode())
                                .digest())


def pk(name: str) -> str:
    return key(name).public_b64


SERVER = key("server")
CLIENT = key("client")


def meta(n: int = 0) -> Metadata:
    return Metadata(
        repo="https://github.com/acme/demo",
        commit=hashlib.sha1(f"c{n}".encode(), usedforsecurity=False).hexdigest(),
        tree="b3t1:" + b64u_encode(hashlib.sha256(f"t{n}".encode()).digest()),
    )


class Chain:
    """A ledger in memory, judging like the gate: refused messages are not appended.

    ``entries`` holds what was stored; ``state`` is the state after them.
    """

    def __init__(self, *, enable: bool = True, core_key: str = "core") -> None:
        self.state = ReleaseState(server_key=SERVER.public_b64)
        self.entries: list[ChainEntry] = []
        if enable:
            verdict = self.raw(enable_contents(NOW, CORE, pk(core_key)), by=SERVER)
            assert isinstance(verdict, Accepted)

    def next_entry(self, contents: bytes, *, by: SigningKey = CLIENT) -> ChainEntry:
        index = len(self.entries)
        chash = hashlib.blake2b(index.to_bytes(8, "big") + contents, digest_size=32).digest()
        return ChainEntry(index=index, currhash=b64u_encode(chash),
                          created=f"2026-01-01T00:{index // 60 % 60:02d}:{index % 60:02d}+00:00",
                          publickey=by.public_b64, contents=contents)

    def raw(self, contents: bytes, *, by: SigningKey = CLIENT) -> Verdict:
        entry = self.next_entry(contents, by=by)
        verdict = self.state.judge(entry)
        if isinstance(verdict, Accepted):
            self.state.apply(verdict.effects)
        if isinstance(verdict, Accepted | Skipped):
            self.entries.append(entry)
        return verdict

    def submit(self, body: Body, signer: str) -> Verdict:
        return self.raw(sign_message(body, key(signer)))


# A fixed git identity for the repositories the tests create (no user config read).
GIT_ENV = {"GIT_AUTHOR_NAME": "chronicle", "GIT_AUTHOR_EMAIL": "dev@chronicle.invalid",
           "GIT_COMMITTER_NAME": "chronicle", "GIT_COMMITTER_EMAIL": "dev@chronicle.invalid",
           "GIT_CONFIG_NOSYSTEM": "1"}

#: The vendor CLI's exit codes (cli/common.py): done, refused, usage, I/O.
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_IO = 0, 1, 2, 3


def vendor_env(monkeypatch: pytest.MonkeyPatch, passphrase: str) -> None:
    """What the vendor CLI reads from the environment, fixed for a test: the git
    identity, the key passphrase, and no profile chosen from outside."""
    for name, value in GIT_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CHRONICLE_KEY_PASSPHRASE", passphrase)
    monkeypatch.delenv("CHRONICLE_VENDOR_PROFILE", raising=False)


def error_line(res: Result) -> str:
    """The one ``error:`` line a failed command wrote (no traceback)."""
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout
