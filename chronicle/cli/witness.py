"""``chronicle witness …``: run our own witness (c2sp.org/tlog-witness, docs/witness.md).

- ``init``: a witness directory (``witness.toml``, the cosigning key, its own database);
- ``add-log``, ``list-log``, ``remove-log``: the logs it witnesses (origin + key(s));
- ``evidence``: refused requests that contradict what it cosigned (possible forks);
- ``serve``: ``POST /add-checkpoint`` for them until SIGTERM.

A witness directory is not a ledger's (``--data-dir`` names the witness's own, default
``$CHRONICLE_WITNESS_DIR``), though both may share one directory.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from chronicle.cli.common import (
    closing,
    fail,
    handle_errors,
    init_directory,
    json_option,
    listen_options,
    open_witness,
    out,
    run,
)
from chronicle.config import WITNESS_DEFAULT_DB, WitnessDir, WitnessSettings
from chronicle.core.checkpoint import CheckpointFormatError, Cosigner, check_origin
from chronicle.core.encoding import atom, utcnow
from chronicle.core.errors import ChronicleError
from chronicle.core.note import Ed25519Verifier, b64encode, is_valid_key_name
from chronicle.server.runner import announce_on_stderr
from chronicle.server.witness import run as run_witness
from chronicle.store.witness import Evidence, WitnessedLog, open_witness_store

F = TypeVar("F", bound=Callable[..., Any])


def _to_witness_dir(ctx: click.Context, param: click.Parameter, value: Path) -> WitnessDir:
    return WitnessDir(value)


def witness_dir_option(fn: F) -> F:
    """``--data-dir DIR`` (default ``$CHRONICLE_WITNESS_DIR``), as a :class:`WitnessDir`."""
    return click.option("--data-dir", "witness_dir", envvar="CHRONICLE_WITNESS_DIR",
                        required=True, type=click.Path(file_okay=False, path_type=Path),
                        callback=_to_witness_dir,
                        help="Witness directory (default: $CHRONICLE_WITNESS_DIR).")(fn)


def _default_name() -> str:
    return f"{socket.gethostname()}/witness"


def _origin(text: str) -> str:
    try:
        check_origin(text)
    except CheckpointFormatError as exc:
        raise click.BadParameter(exc.message, param_hint="--origin") from None
    return text


def _log_keys(origin: str, vkeys: tuple[str, ...], any_name: bool) -> list[str]:
    """The vkeys, each an Ed25519 note key named as the origin (unless ``any_name``)."""
    parsed = []
    for text in vkeys:
        try:
            verifier = Ed25519Verifier.from_vkey(text.strip())
        except ChronicleError as exc:
            raise click.BadParameter(exc.message, param_hint="--vkey") from None
        if verifier.name != origin and not any_name:
            raise click.BadParameter(
                f"key name {verifier.name!r} is not the origin {origin!r} (a log names its "
                "key after its origin; --any-key-name accepts another)", param_hint="--vkey")
        parsed.append(verifier.vkey())
    return parsed


def _log_json(log: WitnessedLog) -> dict[str, Any]:
    return {"origin": log.origin, "vkeys": list(log.vkeys), "active": log.active,
            "size": log.state.size if log.state else None,
            "root": b64encode(log.state.root) if log.state else None,
            "cosigned": log.cosigned, "created": log.created, "evidence": log.evidence}


def _log_line(log: WitnessedLog) -> str:
    size = f"size {log.state.size}" if log.state else "nothing cosigned yet"
    keys = f"{len(log.vkeys)} key(s)" if log.active else "removed"
    evidence = f", {log.evidence} refused request(s) kept as evidence" if log.evidence else ""
    return f"{log.origin}  {size}  ({keys}{evidence})"


@click.group()
def witness() -> None:
    """Run a C2SP tlog-witness: cosign the checkpoints of the logs it is given."""


@witness.command("init")
@witness_dir_option
@click.option("--name", default=None,
              help="The witness's key name, on every cosignature (default: HOSTNAME/witness).")
@click.option("--signing-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Use this existing key file (base64url libsodium secret key).")
@click.option("--database", default=WITNESS_DEFAULT_DB, show_default=True,
              help="Database URL.")
@json_option
@handle_errors
def witness_init(witness_dir: WitnessDir, name: str | None, signing_key: Path | None,
                 database: str, as_json: bool) -> None:
    """Create a witness directory: settings, cosigning key and an empty database."""
    name = name if name is not None else _default_name()
    if not is_valid_key_name(name):
        raise click.BadParameter(f"{name!r} is not a key name (no spaces or '+')",
                                 param_hint="--name")
    raw = WitnessSettings.with_defaults({"name": name, "database": database})

    async def create() -> None:
        async with closing(open_witness_store(database, witness_dir.path)) as store:
            await store.create_schema()

    key = init_directory(witness_dir, "witness", signing_key, raw, create)
    cosigner = Cosigner(name, key)
    out(as_json, {"name": name, "vkey": cosigner.vkey(), "public-key": key.public_b64},
        cosigner.vkey())


@witness.command("add-log")
@witness_dir_option
@click.option("--origin", required=True, help="The log's origin (its checkpoints' first line).")
@click.option("--vkey", "vkeys", required=True, multiple=True,
              help="The log's checkpoint key (a note vkey); repeat for several.")
@click.option("--any-key-name", is_flag=True,
              help="Accept keys not named after the origin (e.g. Go's checksum database).")
@json_option
@handle_errors
def witness_add_log(witness_dir: WitnessDir, origin: str, vkeys: tuple[str, ...],
                    any_key_name: bool, as_json: bool) -> None:
    """Witness a log (or add keys to one). A log removed before keeps the size it had."""
    origin = _origin(origin)
    keys = _log_keys(origin, vkeys, any_key_name)

    async def go() -> tuple[list[str], WitnessedLog]:
        async with open_witness(witness_dir) as store:
            added = await store.add_log(origin, keys, atom(utcnow()))
            log = await store.log(origin)
            assert log is not None
            return added, log

    added, log = run(go())
    out(as_json, {**_log_json(log), "added": added},
        f"witnessing {_log_line(log)}" + ("" if added else " (no new key)"))


@witness.command("list-log")
@witness_dir_option
@click.option("--all", "everything", is_flag=True, help="Removed logs too (their state stays).")
@json_option
@handle_errors
def witness_list_log(witness_dir: WitnessDir, everything: bool, as_json: bool) -> None:
    """The logs witnessed, and the size each was last cosigned at."""

    async def go() -> list[WitnessedLog]:
        async with open_witness(witness_dir) as store:
            return await store.logs(include_removed=everything)

    logs = run(go())
    out(as_json, {"logs": [_log_json(log) for log in logs]},
        "\n".join(map(_log_line, logs)) or "(no logs)")


@witness.command("remove-log")
@witness_dir_option
@click.option("--origin", required=True, help="The log's origin.")
@click.option("--vkey", "vkeys", multiple=True,
              help="Remove only this key (repeat for several); default: all of the log's.")
@json_option
@handle_errors
def witness_remove_log(witness_dir: WitnessDir, origin: str, vkeys: tuple[str, ...],
                       as_json: bool) -> None:
    """Stop witnessing a log (or stop trusting some of its keys). Its state is kept: added
    again, it continues from the size it had."""

    async def go() -> tuple[int, WitnessedLog | None]:
        async with open_witness(witness_dir) as store:
            removed = await store.remove_log(origin, [v.strip() for v in vkeys])
            return removed, await store.log(origin)

    removed, log = run(go())
    if log is None:
        fail(f"no log {origin!r}")
    if not removed:
        fail(f"{origin!r} has no such key" if vkeys else f"{origin!r} is not witnessed")
    out(as_json, {**_log_json(log), "removed": removed},
        f"{origin}: {removed} key(s) removed" + ("" if log.active else "; no longer witnessed"))


@witness.command("evidence")
@witness_dir_option
@click.option("--origin", required=True, help="The log's origin.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000),
              help="Show at most this many, newest first.")
@json_option
@handle_errors
def witness_evidence(witness_dir: WitnessDir, origin: str, limit: int, as_json: bool) -> None:
    """Requests refused although the log signed them (newest first): an inconsistent
    proof, another root at a size already cosigned. ``request`` is the exact body."""

    async def go() -> tuple[WitnessedLog | None, list[Evidence]]:
        async with open_witness(witness_dir) as store:
            return await store.log(origin), await store.evidence(origin, limit)

    log, kept = run(go())
    if log is None:
        fail(f"no log {origin!r}")
    items = [{"recorded": e.recorded, "status": e.status, "reason": e.reason,
              "known-size": e.known.size if e.known else None,
              "known-root": b64encode(e.known.root) if e.known else None,
              "request": b64encode(e.request)} for e in kept]
    out(as_json, {"origin": origin, "evidence": items},
        "\n".join(f"{e['recorded']}  HTTP {e['status']}: {e['reason']} (the witness held "
                  f"size {e['known-size']})" for e in items) or "(no evidence)")


@witness.command("serve")
@witness_dir_option
@listen_options(8081)
@click.option("--json", "as_json", is_flag=True,
              help="Once listening, print one JSON object: url, name, vkey, public-key.")
@handle_errors
def witness_serve(witness_dir: WitnessDir, host: str, port: int, as_json: bool) -> None:
    """Serve POST /add-checkpoint until SIGTERM (drains, then exits 0).

    Prints `listening on URL` on stderr once connections are accepted.
    """
    settings = witness_dir.settings()
    cosigner = Cosigner(settings.name, witness_dir.signing_key(settings))

    def announce(url: str, workers: int) -> None:
        announce_on_stderr(url, workers)
        if as_json:
            click.echo(json.dumps({"url": url, "name": cosigner.name, "vkey": cosigner.vkey(),
                                   "public-key": cosigner.key.public_b64}))

    run_witness(witness_dir, host, port, announce=announce)
