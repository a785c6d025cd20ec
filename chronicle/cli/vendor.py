"""``chronicle vendor …``: a vendor's side of the release ledger (docs/vendor.md).

``init`` writes a profile, ``keygen`` a sealed signing key. Each action (``key add``, ``key
revoke``, ``release``, ``revoke-release``, ``attest``) signs a release message with the
profile's key, records it, publishes it with the profile's client credential and verifies
the ledger's signed receipt, the stored entry and the mirrors. ``sign ACTION … --out FILE``
signs the same messages offline, ``submit FILE`` publishes one later. ``monitor`` follows
the ledger and alerts on any action under the vendor's name this profile did not make.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import click

from chronicle.cli.common import (
    EXIT_IO,
    EXIT_USAGE,
    exit_with_error,
    fail,
    format_options,
    handle_errors,
    instance_option,
    out,
    public_key,
    run,
)
from chronicle.cli.release_profile import (
    Mirror,
    Profile,
    describe,
    parse_signed,
    passphrase,
    profile_option,
    record,
    recorded_sigs,
    submit,
)
from chronicle.client import ChronicleClient
from chronicle.client.errors import RecordNotFound
from chronicle.client.http import VerifiedEntry
from chronicle.config import write_secret_file
from chronicle.core.errors import ChronicleError
from chronicle.core.sapient import SigningKey
from chronicle.release.keystore import DEFAULT_STRENGTH, STRENGTHS, seal, sealed_public_key
from chronicle.release.messages import (
    ATTESTATIONS,
    AddKey,
    AttestUpdate,
    Body,
    MalformedMessage,
    Metadata,
    ReleaseMessage,
    RevokeKey,
    RevokeUpdate,
    Update,
    canonical_body,
    classify,
    key_name,
    parse_body,
    sign_message,
    valid_vendor,
)
from chronicle.release.sources import SourceReadError, read_archive, read_git, resolve_commit
from chronicle.release.treedigest import TreeDigestError, tree_digest

MIRROR_WAIT: Final = 30.0


def mirror_wait_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--mirror-wait", type=click.FloatRange(0, 3600), default=MIRROR_WAIT,
                        show_default=True,
                        help="Seconds to wait for each mirror to hold the new entry.")(fn)


def checked(body: Body) -> Body:
    """``body`` as the rules will parse it: a malformed one is a usage error, here."""
    try:
        parse_body(body.op, canonical_body(body))
    except MalformedMessage as exc:
        fail(exc.message, EXIT_USAGE)
    return body


def split_package(text: str, vendor: str | None) -> tuple[str, str]:
    """``VENDOR/NAME`` (or ``NAME`` when ``vendor`` is the default) as (vendor, name)."""
    if "/" in text:
        owner, _, name = text.partition("/")
    elif vendor is not None:
        owner, name = vendor, text
    else:
        raise click.BadParameter(f"{text!r} must be VENDOR/NAME", param_hint="PACKAGE")
    return owner, name


# --- the actions -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    """One signed action: its command name, help, click parameters and body builder.

    ``build(profile, **params)`` returns the body and extra output fields.
    """

    name: str
    help: str
    params: tuple[Callable[[Callable[..., Any]], Callable[..., Any]], ...]
    build: Callable[..., tuple[Body, dict[str, Any]]]


def _key_add(profile: Profile, pk: str, label: str | None, limited: bool
             ) -> tuple[Body, dict[str, Any]]:
    public_key(pk)
    return checked(AddKey(vendor=profile.vendor, publickey=pk.strip(),
                          name=key_name(pk, label), limited=limited)), {}


def _key_revoke(profile: Profile, pk: str) -> tuple[Body, dict[str, Any]]:
    public_key(pk)
    if pk.strip() == sealed_public_key(profile.sealed_key_path().read_bytes()):
        raise click.BadParameter("that is this profile's own signing key: a key cannot "
                                 "revoke itself (use another full key of the vendor)",
                                 param_hint="--public-key")
    return checked(RevokeKey(vendor=profile.vendor, publickey=pk.strip())), {}


def _own_package(profile: Profile, package: str) -> str:
    owner, name = split_package(package, profile.vendor)
    if owner != profile.vendor:
        raise click.BadParameter(f"{package!r} is not a package of vendor {profile.vendor!r} "
                                 "(this profile's vendor)", param_hint="PACKAGE")
    return name


def _release(profile: Profile, package: str, version: str, git_dir: Path | None,
             ref: str | None, archive: Path | None, repo: str, commit: str | None
             ) -> tuple[Body, dict[str, Any]]:
    name = _own_package(profile, package)
    if (git_dir is None) == (archive is None):
        raise click.UsageError("give exactly one of --git DIR (with --ref) and --archive FILE")
    dist: str | None = None
    try:
        if git_dir is not None:
            if ref is None:
                raise click.UsageError("--git needs --ref TAG")
            resolved = resolve_commit(git_dir, ref)
            if commit is not None and commit != resolved:
                fail(f"--commit {commit} is not what {ref} names in {git_dir}: {resolved}")
            commit = resolved
            tree = tree_digest(read_git(git_dir, resolved))
        else:
            assert archive is not None
            if ref is not None:
                raise click.UsageError("--ref applies to --git, not to --archive")
            if commit is None:
                raise click.UsageError("--archive needs --commit (the commit it was made from)")
            tree = tree_digest(read_archive(archive))
            with archive.open("rb") as fh:
                dist = hashlib.file_digest(fh, "sha256").hexdigest()
    except TreeDigestError as exc:
        fail(f"{git_dir or archive}: {exc.message}", _digest_code(exc))
    body = checked(Update(vendor=profile.vendor, name=name, version=version,
                          metadata=Metadata(repo=repo, commit=commit, tree=tree,
                                            dist_sha256=dist)))
    return body, {"tree": tree, "commit": commit}


def _revoke_release(profile: Profile, package: str, version: str, reason: str
                    ) -> tuple[Body, dict[str, Any]]:
    name = _own_package(profile, package)
    return checked(RevokeUpdate(vendor=profile.vendor, name=name, version=version,
                                reason=reason)), {}


def _attest(profile: Profile, package: str, version: str, kind: str, details: str | None
            ) -> tuple[Body, dict[str, Any]]:
    owner, name = split_package(package, None)
    return checked(AttestUpdate(vendor=owner, name=name, version=version,
                                attestor=profile.vendor, attestation=kind,
                                details=details)), {}


_PACKAGE = click.argument("package")
_VERSION = click.argument("version")

ACTIONS: Final = (
    Action("key-add", "Add a key to this profile's vendor (--limited: it may only sign "
           "releases, e.g. for CI).", (
               click.option("--public-key", "pk", required=True,
                            help="The key to add (base64url, 32 bytes)."),
               click.option("--name", "label", help="A label for the key."),
               click.option("--limited", is_flag=True,
                            help="The key may sign releases only (update), nothing else.")),
           _key_add),
    Action("key-revoke", "Revoke a key of this profile's vendor (not the signing key itself, "
           "not the last full key).", (
               click.option("--public-key", "pk", required=True,
                            help="The key to revoke (base64url, 32 bytes)."),),
           _key_revoke),
    Action("release", "Release PACKAGE VERSION: the source tree digest of a git tag or an "
           "archive, signed.", (
               _PACKAGE, _VERSION,
               click.option("--git", "git_dir", type=click.Path(file_okay=False,
                                                                path_type=Path),
                            help="The git repository to release from (with --ref)."),
               click.option("--ref", help="The tag (or commit) to release, with --git."),
               click.option("--archive", type=click.Path(dir_okay=False, path_type=Path),
                            help="A zip / tar / tar.gz of the source (its SHA-256 is "
                                 "recorded as dist-sha256)."),
               click.option("--repo", required=True,
                            help="The repository URL recorded in the release."),
               click.option("--commit", help="The commit the archive was made from "
                                             "(required with --archive).")),
           _release),
    Action("revoke-release", "Revoke release PACKAGE VERSION (it stays visible, as revoked).", (
               _PACKAGE, _VERSION,
               click.option("--reason", required=True, help="Why it is revoked.")),
           _revoke_release),
    Action("attest", "Attest another vendor's release VENDOR/NAME VERSION as this profile's "
           "vendor.", (
               _PACKAGE, _VERSION,
               click.option("--kind", required=True, type=click.Choice(ATTESTATIONS),
                            help="What the attestation says."),
               click.option("--details", help="Free text: how it was checked.")),
           _attest),
)


def _digest_code(exc: TreeDigestError) -> int:
    return EXIT_IO if isinstance(exc, SourceReadError) else 1


def _payload(message: ReleaseMessage, extra: dict[str, Any]) -> dict[str, Any]:
    return {"op": message.op, "message": describe(message.body), "op-sig": message.op_sig,
            "signer": message.op_public_key, **extra}


def publish_signed(profile: Profile, contents: bytes, extra: dict[str, Any], *, how: str,
                   as_json: bool, mirror_wait: float, where: str = "message") -> None:
    """Record, submit and verify one signed message; print the outcome."""
    message = parse_signed(contents, where)
    record(profile, message, how)
    done = submit(profile, contents, mirror_wait=mirror_wait)
    payload = {**_payload(message, extra), "receipt": done.receipt.as_dict(),
               "mirrors": done.mirrors}
    lines = [f"{payload['message']}: on the ledger",
             *(f"{k}: {v}" for k, v in extra.items()),
             *(f"{k}: {v}" for k, v in done.receipt.as_dict().items()),
             *(f"mirror {m['url']}: {m['status']}" for m in done.mirrors)]
    out(as_json, payload, "\n".join(lines))


def sign_with_profile(profile: Profile, body: Body) -> bytes:
    return sign_message(body, profile.signing_key())


def _online(action: Action, *, group: str = "vendor") -> click.Command:
    def command(profile_path: Path, fmt: str, as_json: bool, mirror_wait: float,
                **params: Any) -> None:
        profile = Profile.load(profile_path)
        body, extra = action.build(profile, **params)
        contents = sign_with_profile(profile, body)
        publish_signed(profile, contents, extra, how="submitted", mirror_wait=mirror_wait,
                       as_json=as_json or fmt == "json")

    name = action.name.split("-", 1)[1] if action.name.startswith("key-") else action.name
    return _command(name, action, command, online=True)


def _offline(action: Action) -> click.Command:
    def command(profile_path: Path, fmt: str, as_json: bool, out_file: Path,
                **params: Any) -> None:
        profile = Profile.load(profile_path)
        body, extra = action.build(profile, **params)
        contents = sign_with_profile(profile, body)
        message = parse_signed(contents, "message")
        record(profile, message, f"signed offline to {out_file}")
        try:
            write_secret_file(out_file, contents.decode("ascii"))
        except FileExistsError:
            fail(f"{out_file} already exists", EXIT_IO)
        payload = {**_payload(message, extra), "file": str(out_file)}
        out(as_json or fmt == "json", payload,
            f"{payload['message']}: signed to {out_file} (submit it with "
            "`chronicle vendor submit`)")

    cmd = _command(action.name, action, command, online=False)
    return click.option("--out", "out_file", required=True,
                        type=click.Path(dir_okay=False, path_type=Path),
                        help="Write the signed message here (mode 0600).")(cmd)


def _command(name: str, action: Action, fn: Callable[..., None], *, online: bool
             ) -> click.Command:
    fn.__doc__ = action.help
    wrapped: Callable[..., Any] = handle_errors(fn)
    for param in reversed(action.params):
        wrapped = param(wrapped)
    if online:
        wrapped = mirror_wait_option(wrapped)
    wrapped = format_options(wrapped)
    wrapped = profile_option(wrapped)
    return click.command(name, help=action.help)(wrapped)


# --- the group ---------------------------------------------------------------------------------

@click.group()
def vendor() -> None:
    """A vendor's side of the release ledger: keys, releases, attestations, monitoring."""


@vendor.command("init")
@profile_option
@click.option("--url", required=True, help="The ledger's base URL, without /chronicle.")
@click.option("--server-key", required=True, help="The ledger's public key (pinned).")
@instance_option
@click.option("--client-id", required=True, help="Our client id on the ledger.")
@click.option("--client-key-file", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Our client secret key file (as `chronicle keygen --out` writes it).")
@click.option("--vendor", "vendor_name", required=True,
              help="The Composer vendor name this profile acts as.")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="An existing sealed signing key (else run `vendor keygen`).")
@click.option("--mirror", "mirrors", multiple=True,
              help="A mirror that must agree on each new entry: URL#PUBLIC-KEY "
                   "(repeatable).")
@format_options
@handle_errors
def init(profile_path: Path, url: str, server_key: str, instance: str, client_id: str,
         client_key_file: Path, vendor_name: str, key_file: Path | None,
         mirrors: tuple[str, ...], fmt: str, as_json: bool) -> None:
    """Write a new profile file (mode 0600); refuses to replace one."""
    public_key(server_key, "--server-key")
    for text in mirrors:
        Mirror.parse(text, "--mirror")
    if not valid_vendor(vendor_name):
        raise click.BadParameter(f"{vendor_name!r} is not a Composer vendor name",
                                 param_hint="--vendor")
    try:
        SigningKey.from_text(client_key_file.read_text())
    except ChronicleError as exc:
        raise click.BadParameter(f"{client_key_file}: {exc.message}",
                                 param_hint="--client-key-file") from None
    signer: str | None = None
    if key_file is not None:
        try:
            signer = sealed_public_key(key_file.read_bytes())
        except ChronicleError as exc:
            raise click.BadParameter(f"{key_file}: {exc.message}",
                                     param_hint="--key-file") from None
    profile = Profile(path=profile_path, url=url, server_key=server_key.strip(),
                      client_id=client_id, client_key_file=str(client_key_file.resolve()),
                      vendor=vendor_name, instance=instance,
                      key_file=None if key_file is None else str(key_file.resolve()),
                      mirrors=list(mirrors))
    profile.write(new=True)
    payload = {"profile": str(profile_path), "vendor": vendor_name, "public-key": signer}
    out(as_json or fmt == "json", payload, f"profile {profile_path} for vendor {vendor_name}"
        + (f" (signing key {signer})" if signer else " (no signing key yet: vendor keygen)"))


@vendor.command("keygen")
@profile_option
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the sealed key (default: VENDOR.key beside the profile).")
@click.option("--kdf-strength", type=click.Choice(list(STRENGTHS)), default=DEFAULT_STRENGTH,
              show_default=True, help="Argon2id cost (libsodium's presets).")
@format_options
@handle_errors
def keygen(profile_path: Path, out_file: Path | None, kdf_strength: str, fmt: str,
           as_json: bool) -> None:
    """Create a signing key sealed with a passphrase ($CHRONICLE_KEY_PASSPHRASE, or asked).

    The first key becomes the profile's signing key; a key made while the profile already
    has one (e.g. for CI: add it with `vendor key add --limited`) is only written.
    """
    profile = Profile.load(profile_path)
    path = out_file or profile.folder / f"{profile.vendor}.key"
    if path.exists():
        fail(f"{path} already exists", EXIT_IO)
    key = SigningKey.generate()
    sealed = seal(key, passphrase(confirm=True), strength=kdf_strength)
    try:
        write_secret_file(path, sealed.decode("ascii").rstrip("\n"))
    except FileExistsError:
        fail(f"{path} already exists", EXIT_IO)
    adopted = profile.key_file is None
    if adopted:
        profile.key_file = str(path.resolve())
        profile.write(new=False)
    payload = {"public-key": key.public_b64, "key-file": str(path), "profile-key": adopted}
    out(as_json or fmt == "json", payload,
        f"public-key: {key.public_b64}\nkey-file: {path}"
        + ("\n(the profile's signing key now)" if adopted else ""))


@vendor.group("key")
def key_group() -> None:
    """Add or revoke keys of this profile's vendor."""


@vendor.group("sign")
def sign_group() -> None:
    """Sign an action offline into a file (publish it later with `vendor submit`)."""


for _action in ACTIONS:
    (key_group if _action.name.startswith("key-") else vendor).add_command(_online(_action))
    sign_group.add_command(_offline(_action))


@vendor.command("submit")
@profile_option
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@mirror_wait_option
@format_options
@handle_errors
def submit_cmd(profile_path: Path, file: Path, mirror_wait: float, fmt: str,
               as_json: bool) -> None:
    """Publish a message signed earlier (`vendor sign`) exactly as it is, and verify it."""
    profile = Profile.load(profile_path)
    contents = file.read_bytes().rstrip(b"\n")
    publish_signed(profile, contents, {}, how=f"submitted from {file}", where=str(file),
                   mirror_wait=mirror_wait, as_json=as_json or fmt == "json")


# --- monitor ------------------------------------------------------------------------------------

def _concerns(message: ReleaseMessage, vendor_name: str) -> bool:
    """An action under ``vendor_name``: its keys and releases, or its attestations."""
    if isinstance(message.body, AttestUpdate):
        return message.body.attestor == vendor_name
    return message.body.vendor == vendor_name


def _finding(entry: VerifiedEntry, index: int, message: ReleaseMessage) -> dict[str, Any]:
    line = (f"entry {index}: {describe(message.body)} signed by {message.op_public_key} "
            "was not made by this profile")
    return {"index": index, "currhash": entry.currhash, "op": message.op,
            "signer": message.op_public_key, "op-sig": message.op_sig, "finding": line}


@dataclass
class MonitorState:
    """Where monitor stopped (``index``, ``currhash``) and the findings not acknowledged."""

    index: int | None
    currhash: str | None
    findings: list[dict[str, Any]]

    @classmethod
    def load(cls, profile: Profile) -> MonitorState:
        try:
            doc = json.loads(profile.monitor_path.read_text("utf-8"))
        except FileNotFoundError:
            return cls(None, None, [])
        except (ValueError, UnicodeDecodeError):
            fail(f"{profile.monitor_path} is not JSON", EXIT_USAGE)
        same = (doc.get("url"), doc.get("instance"), doc.get("server-key")) == \
            (profile.url, profile.instance, profile.server_key)
        if not same or not isinstance(doc.get("findings"), list):
            fail(f"{profile.monitor_path} belongs to another ledger than the profile's "
                 "(remove it to start over)", EXIT_USAGE)
        return cls(doc.get("index"), doc.get("currhash"), doc["findings"])

    def save(self, profile: Profile) -> None:
        tmp = profile.monitor_path.with_name(profile.monitor_path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        write_secret_file(tmp, json.dumps({
            "url": profile.url, "instance": profile.instance,
            "server-key": profile.server_key, "index": self.index,
            "currhash": self.currhash, "findings": self.findings}))
        os.replace(tmp, profile.monitor_path)


@vendor.command("monitor")
@profile_option
@click.option("--record", "records", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Also trust what another profile's record lists (e.g. your CI profile's "
                   "NAME.signed.jsonl); repeatable.")
@click.option("--acknowledge", is_flag=True,
              help="Print the open findings, then clear them (exit 0).")
@format_options
@handle_errors
def monitor(profile_path: Path, records: tuple[Path, ...], acknowledge: bool, fmt: str,
            as_json: bool) -> None:
    """Follow the ledger (verified as the client does) and alert, exit 1 with one line per
    finding, on any action under this vendor's name that this profile did not make.

    Findings stay open (reported by every run) until --acknowledge.
    """
    as_json = as_json or fmt == "json"
    profile = Profile.load(profile_path)
    known = recorded_sigs(profile.record_path)
    for extra in records:
        if not extra.exists():
            fail(f"{extra} does not exist", EXIT_IO)
        known |= recorded_sigs(extra)
    own = None if profile.key_file is None else sealed_public_key(
        profile.sealed_key_path().read_bytes())
    state = MonitorState.load(profile)
    if acknowledge:
        cleared = state.findings
        state.findings = []
        state.save(profile)
        out(as_json, {"acknowledged": cleared},
            "\n".join(f["finding"] for f in cleared) or "no open findings")
        return
    checked_count = 0

    async def follow() -> None:
        nonlocal checked_count
        async with ChronicleClient(profile.url, public_key(profile.server_key, "server-key"),
                                   instance=profile.instance) as api:
            if state.currhash is None:
                walk = api.export()
                base = 0
            else:
                walk = api.since(state.currhash)
                base = (state.index or 0) + 1
            async for entry in walk:
                index = entry.index if entry.index is not None else base + checked_count
                checked_count += 1
                state.index, state.currhash = index, entry.currhash
                try:
                    message = classify(entry.contents)
                except MalformedMessage:
                    continue
                if not isinstance(message, ReleaseMessage) \
                        or not _concerns(message, profile.vendor):
                    continue
                if message.op_sig in known:
                    continue
                if isinstance(message.body, AddKey) and message.body.publickey == own:
                    continue   # the registry vouching for (or restoring) our own key
                state.findings.append(_finding(entry, index, message))

    try:
        run(follow())
    except RecordNotFound:
        fail(f"the entry monitor stopped at (index {state.index}, currhash {state.currhash}) "
             "is not on the ledger any more: its history was rewritten (or the profile names "
             f"another ledger); {profile.monitor_path} was kept")
    state.save(profile)
    findings = state.findings
    payload = {"ok": not findings, "vendor": profile.vendor, "checked": checked_count,
               "index": state.index, "currhash": state.currhash, "findings": findings}
    if as_json:
        out(True, payload, "")
    elif findings:
        click.echo("\n".join(f["finding"] for f in findings))
    else:
        click.echo(f"ok: {checked_count} new entries checked (up to entry {state.index}); "
                   f"every action under {profile.vendor} was made by this profile")
    if findings:
        exit_with_error(f"{len(findings)} action(s) under vendor {profile.vendor} were not "
                        "made by this profile", 1)
