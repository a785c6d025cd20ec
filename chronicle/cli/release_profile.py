"""What ``chronicle vendor`` and ``chronicle registry`` share: the profile, the sealed key,
the local record of what a profile signed, and submitting a signed release message.

A profile is a TOML file (docs/vendor.md "The profile"): the ledger (``url``,
``server-key``, ``instance``), our client credential on it (``client-id``,
``client-key-file``), the vendor we act as (``vendor``), our sealed signing key
(``key-file``) and optional ``mirrors`` (``URL#PUBLIC-KEY``). Relative file names are
relative to the profile's folder. Beside the profile, ``NAME.signed.jsonl`` records every
message this profile signed (``vendor monitor`` alerts on any action under the vendor's
name that is not in it) and ``NAME.monitor.json`` where ``monitor`` stopped reading.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import click
import tomli_w

from chronicle.cli.common import EXIT_IO, EXIT_USAGE, fail, run
from chronicle.client import ChronicleClient
from chronicle.client.http import Receipt
from chronicle.client.peers import ask_peer
from chronicle.config import write_secret_file
from chronicle.core.agreement import Head, PeerStatus
from chronicle.core.encoding import atom, utcnow
from chronicle.core.errors import ChronicleError, IntegrityError
from chronicle.core.sapient import SigningKey, parse_public_key
from chronicle.core.verify import DocumentSignatureError
from chronicle.release.keystore import unseal
from chronicle.release.messages import (
    AddKey,
    AttestUpdate,
    Body,
    MalformedMessage,
    ReleaseMessage,
    RevokeKey,
    RevokeUpdate,
    Update,
    classify,
    valid_vendor,
)

F = TypeVar("F", bound=Callable[..., Any])

PASSPHRASE_ENV: Final = "CHRONICLE_KEY_PASSPHRASE"  # noqa: S105 (a variable name)
PROFILE_ENV: Final = "CHRONICLE_VENDOR_PROFILE"
_KEYS: Final = ("url", "server-key", "instance", "client-id", "client-key-file", "vendor",
                "key-file", "mirrors")
_REQUIRED: Final = ("url", "server-key", "client-id", "client-key-file", "vendor")


@dataclass(frozen=True)
class Mirror:
    """A mirror of the ledger (a replica's API URL) and the key it signs with."""

    url: str
    public_key: bytes

    @classmethod
    def parse(cls, text: str, hint: str) -> Mirror:
        url, sep, key = text.rpartition("#")
        if not sep or not url:
            raise click.BadParameter(f"mirror {text!r} is not URL#PUBLIC-KEY", param_hint=hint)
        try:
            return cls(url, parse_public_key(key))
        except ChronicleError as exc:
            raise click.BadParameter(f"mirror {url}: {exc.message}", param_hint=hint) from None


@dataclass
class Profile:
    """A parsed profile file (see the module docstring)."""

    path: Path
    url: str
    server_key: str
    client_id: str
    client_key_file: str
    vendor: str
    instance: str = ""
    key_file: str | None = None
    mirrors: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def resolve(self, name: str) -> Path:
        return (self.folder / name) if not os.path.isabs(name) else Path(name)

    @property
    def record_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".signed.jsonl")

    @property
    def monitor_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".monitor.json")

    def to_toml(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"url": self.url, "server-key": self.server_key,
                               "instance": self.instance, "client-id": self.client_id,
                               "client-key-file": self.client_key_file, "vendor": self.vendor}
        if self.key_file is not None:
            raw["key-file"] = self.key_file
        raw["mirrors"] = list(self.mirrors)
        return raw

    def write(self, *, new: bool) -> None:
        """Write the profile (mode 0600); ``new``: refuse to replace an existing file."""
        text = tomli_w.dumps(self.to_toml()).rstrip("\n")
        if new:
            try:
                write_secret_file(self.path, text)
            except FileExistsError:
                fail(f"{self.path} already exists", EXIT_IO)
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        write_secret_file(tmp, text)
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> Profile:
        try:
            raw = tomllib.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            fail(f"profile {path} does not exist (create it with `chronicle vendor init`)",
                 EXIT_IO)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            fail(f"profile {path} is not valid TOML: {exc}", EXIT_USAGE)
        for key in raw:
            if key not in _KEYS:
                fail(f"profile {path}: unknown setting {key!r}", EXIT_USAGE)
        for key in _REQUIRED:
            if not isinstance(raw.get(key), str) or not raw[key]:
                fail(f"profile {path}: setting {key!r} is missing", EXIT_USAGE)
        mirrors = raw.get("mirrors", [])
        if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
            fail(f"profile {path}: setting 'mirrors' must be a list of URL#PUBLIC-KEY",
                 EXIT_USAGE)
        profile = cls(path=path, url=raw["url"], server_key=raw["server-key"],
                      client_id=raw["client-id"], client_key_file=raw["client-key-file"],
                      vendor=raw["vendor"], instance=str(raw.get("instance", "")),
                      key_file=raw.get("key-file"), mirrors=mirrors)
        if not valid_vendor(profile.vendor):
            fail(f"profile {path}: vendor {profile.vendor!r} is not a Composer vendor name",
                 EXIT_USAGE)
        try:
            parse_public_key(profile.server_key)
        except ChronicleError as exc:
            fail(f"profile {path}: server-key: {exc.message}", EXIT_USAGE)
        for text in mirrors:
            try:
                Mirror.parse(text, "mirrors")
            except click.BadParameter as exc:
                fail(f"profile {path}: {exc.message}", EXIT_USAGE)
        return profile

    def mirror_list(self) -> list[Mirror]:
        return [Mirror.parse(text, "mirrors") for text in self.mirrors]

    def client_key(self) -> SigningKey:
        path = self.resolve(self.client_key_file)
        try:
            return SigningKey.from_text(path.read_text())
        except ChronicleError as exc:
            fail(f"{path}: {exc.message}", EXIT_USAGE)

    def sealed_key_path(self) -> Path:
        if self.key_file is None:
            fail(f"profile {self.path} has no signing key yet: run `chronicle vendor keygen`",
                 EXIT_USAGE)
        return self.resolve(self.key_file)

    def signing_key(self) -> SigningKey:
        """The profile's signing key, unsealed with the passphrase (env or prompt)."""
        path = self.sealed_key_path()
        data = path.read_bytes()
        return unseal_file(path, data)


def unseal_file(path: Path, data: bytes) -> SigningKey:
    try:
        return unseal(data, passphrase(confirm=False))
    except ChronicleError as exc:
        fail(f"{path}: {exc.message}")


def interactive() -> bool:
    """Whether a passphrase can be asked for: stdin is a terminal."""
    return sys.stdin.isatty()


def passphrase(*, confirm: bool) -> bytes:
    """``$CHRONICLE_KEY_PASSPHRASE``, or asked for on the terminal (twice when ``confirm``)."""
    text = os.environ.get(PASSPHRASE_ENV)
    if text is None:
        if not interactive():
            fail(f"no passphrase given (set ${PASSPHRASE_ENV}, or run in a terminal)",
                 EXIT_USAGE)
        text = click.prompt("passphrase", hide_input=True, confirmation_prompt=confirm,
                            err=True)
    if not text:
        fail("the passphrase is empty", EXIT_USAGE)
    return text.encode("utf-8")


def profile_option(fn: F) -> F:
    """``--profile FILE`` (default ``$CHRONICLE_VENDOR_PROFILE``)."""
    return click.option("--profile", "profile_path", envvar=PROFILE_ENV, required=True,
                        type=click.Path(dir_okay=False, path_type=Path),
                        help="The profile file (default: $CHRONICLE_VENDOR_PROFILE).")(fn)


# --- the record of what this profile signed ----------------------------------------------------

def describe(body: Body) -> str:
    """One short human line for a message body."""
    if isinstance(body, AddKey):
        return (f"add-key {body.publickey} to {body.vendor}"
                + (" (limited)" if body.limited else ""))
    if isinstance(body, RevokeKey):
        return f"revoke-key {body.publickey} of {body.vendor}"
    what = f"{body.vendor}/{body.name} {body.version}"
    if isinstance(body, Update):
        return f"update {what}"
    if isinstance(body, RevokeUpdate):
        return f"revoke-update {what}"
    assert isinstance(body, AttestUpdate)
    return f"attest-update {what} ({body.attestation} by {body.attestor})"


def record(profile: Profile, message: ReleaseMessage, how: str) -> None:
    """Append ``message`` to the profile's record (mode 0600), before it is submitted."""
    line = json.dumps({"op-sig": message.op_sig, "op": message.op,
                       "what": describe(message.body), "how": how, "at": atom(utcnow())})
    fd = os.open(profile.record_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="ascii") as fh:
        fh.write(line + "\n")


def recorded_sigs(path: Path) -> set[str]:
    """Every op-sig a profile's record (``path``) lists (empty if it never signed)."""
    try:
        text = path.read_text("ascii")
    except FileNotFoundError:
        return set()
    sigs = set()
    for number, line in enumerate(text.splitlines(), 1):
        try:
            sigs.add(str(json.loads(line)["op-sig"]))
        except (ValueError, KeyError, TypeError):
            fail(f"{path}: line {number} is not a record", EXIT_USAGE)
    return sigs


def parse_signed(contents: bytes, where: str) -> ReleaseMessage:
    """A signed release message (entry contents), checked: parses, signature verifies."""
    try:
        message = classify(contents)
    except MalformedMessage as exc:
        fail(f"{where}: malformed release message: {exc.message}")
    if not isinstance(message, ReleaseMessage):
        fail(f"{where}: not a release message")
    if not message.signature_valid():
        fail(f"{where}: op-sig does not verify over op-body with op-public-key "
             f"{message.op_public_key}")
    return message


# --- submitting ---------------------------------------------------------------------------------

@dataclass
class Submitted:
    """A message on the ledger: its verified receipt and what the mirrors said."""

    receipt: Receipt
    mirrors: list[dict[str, str]]


def submit(profile: Profile, contents: bytes, *, mirror_wait: float) -> Submitted:
    """Publish ``contents`` with the profile's client credential, verify the signed receipt
    and the stored entry (lookup), then ask each mirror for it. A refusal (the gate's signed
    4xx) ends the command with the ledger's message; a mirror that disagrees, or still
    lacks the entry after ``mirror_wait`` seconds, too (the entry is on the ledger then)."""
    server_key = parse_public_key(profile.server_key)
    client_key = profile.client_key()

    async def go() -> Submitted:
        async with ChronicleClient(profile.url, server_key, instance=profile.instance,
                                   client_id=profile.client_id, key=client_key) as api:
            receipt = await api.publish(contents)
        return Submitted(receipt, await check_mirrors(profile.mirror_list(), receipt,
                                                      mirror_wait))

    try:
        return run(go())
    except DocumentSignatureError as exc:
        fail("the receipt could not be verified with the profile's server-key (the entry "
             f"may be on the chain; check the key, then look it up): {exc.diagnostics()}")
    except IntegrityError as exc:
        fail(f"verification failed: {exc.diagnostics()}")


async def check_mirrors(mirrors: list[Mirror], receipt: Receipt, wait: float
                        ) -> list[dict[str, str]]:
    """Each mirror must hold the entry (signed lookup by its own key, same currhash)."""
    reports: list[dict[str, str]] = []
    for mirror in mirrors:
        head = Head(receipt.currhash, receipt.summaryhash)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            async with ChronicleClient(mirror.url, mirror.public_key) as peer:
                answer = await ask_peer(peer, head)
            status = answer.report.status
            if status != PeerStatus.MISSING or loop.time() >= deadline:
                break
            await asyncio.sleep(min(1.0, max(0.0, deadline - loop.time())))
        if status not in (PeerStatus.AGREES, PeerStatus.AHEAD):
            detail = answer.report.error or (
                f"it shows currhash {answer.report.found}" if answer.report.found else
                f"it does not hold the entry after {wait:g} s")
            fail(f"mirror {mirror.url} {status.value}: {detail} (the entry {receipt.currhash} "
                 "is on the ledger)")
        reports.append({"url": mirror.url, "status": "agrees"})
    return reports
