"""``chronicle audit``: replay a whole chain and prove it (docs/audit.md).

The checking is :mod:`chronicle.audit`'s; this module reads the options, prints the
report, and declares the fault classes' exit codes (10-17) to the common error handler,
which also prints the error object of ``--json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import click

from chronicle.audit.engine import AuditReport
from chronicle.audit.progress import Progress
from chronicle.audit.runner import (
    AuditOptions,
    PeerSpec,
    UsageProblem,
    audit_export,
    audit_server,
    check_peers,
    read_signature,
    save_state,
)
from chronicle.cli.common import (
    EXIT_IO,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    FAULT_CLASSES,
    FAULT_EXIT_CODES,
    base_url,
    format_options,
    handle_errors,
    instance_option,
    report_errors_as_json,
)
from chronicle.client.http import Head
from chronicle.core.encoding import b64u_encode, decode_b64_field
from chronicle.core.errors import ChronicleError
from chronicle.core.note import Ed25519Verifier

log = logging.getLogger(__name__)

_EXIT_CODES = (
    (EXIT_OK, "everything verified"),
    (EXIT_REFUSED, "the server refused a request (signed error answer)"),
    (EXIT_USAGE, "usage error (bad option, unusable state file)"),
    (EXIT_IO, "transport or I/O error (server unreachable, file missing)"),
    *((fault.code, fault.meaning) for fault in FAULT_CLASSES),
)

_EPILOG = "\b\nExit codes:\n" + "".join(f"  {code:>2}  {meaning}\n"
                                         for code, meaning in _EXIT_CODES) + """
\b
Examples:
  chronicle audit http://127.0.0.1:8080 --server-key PK --state audit.state
  chronicle audit --export export.json --server-key PK --signature SIG --anchor HASH
  chronicle audit http://a:8080 --server-key PK --peer http://b:8080/chronicle/replica/ID#BPK
  chronicle audit http://a:8080 --server-key PK --tlog VKEY
  chronicle audit --export export.json --server-key PK --signature SIG --tlog VKEY \\
      --checkpoint checkpoint.txt
"""


def _b64_value(text: str, what: str, length: int = 32) -> bytes:
    raw = decode_b64_field(text.strip(), length)
    if raw is None:
        raise click.BadParameter(f"not a base64url {length}-byte value", param_hint=what)
    return raw


def _checkpoint_key(text: str | None) -> Ed25519Verifier | None:
    if text is None:
        return None
    try:
        return Ed25519Verifier.from_vkey(text.strip())
    except ChronicleError as exc:
        raise click.BadParameter(exc.message, param_hint="--tlog") from None


def _text(report: AuditReport) -> str:
    lines = [f"OK: {report.entries} entries verified"
             + (f" ({report.verified} new since entry {report.resumed_from})"
                if report.resumed_from is not None else "")
             + f" in {report.seconds:.1f} s"]
    if report.first_currhash:
        lines.append(f"first: {report.first_currhash} (entry 0)")
    if report.last:
        last = report.last
        lines.append(f"last:  {last['currhash']} (entry {last['index']}, {last['created']})")
        lines.append(f"summaryhash: {last['summaryhash']}")
    for anchor in report.anchors:
        lines.append(f"anchor {anchor['summaryhash']}: {anchor['status']} "
                     f"(entry {anchor['index']})")
    for peer in report.peers:
        lines.append(f"peer {peer['url']}: {peer['status']}"
                     + ("" if peer.get("pinned") else " (key not pinned)")
                     + (f" - {peer['error']}" if peer.get("error") else ""))
    if report.tlog:
        lines.append(f"tlog: the tree of {report.tlog['origin']} at size "
                     f"{report.tlog['tree-size']} matches the signed checkpoint (root "
                     f"{report.tlog['root']})")
    if report.state_file:
        lines.append(f"state saved to {report.state_file}")
    return "\n".join(lines)


def _target(url: str | None, url_option: str | None, export_file: Path | None) -> str | None:
    """The server URL to audit (given as argument or ``--url``), or None for ``--export``."""
    target = url or url_option
    if url and url_option and url != url_option:
        raise click.UsageError("give the URL once")
    if (target is None) == (export_file is None):
        raise click.UsageError("give a server URL or --export FILE (exactly one)")
    if target is not None:
        base_url(target, "URL")
    return target


def _export_signature(signature: str | None, signature_file: Path | None) -> bytes | None:
    """The export document's detached signature, from ``--signature`` or its file."""
    if signature and signature_file:
        raise UsageProblem("give --signature or --signature-file, not both")
    if signature_file is not None:
        return read_signature(str(signature_file))
    if signature is not None:
        return read_signature(signature)
    return None


def _audit_export(export_file: Path, sig: bytes | None, options: AuditOptions) -> AuditReport:
    """Audit an export document, then ask the peers (if any) about its last entry."""
    if sig is None and options.anchor is None:
        raise UsageProblem("an export needs --signature/--signature-file (the "
                           "document's signature) or --anchor to be trusted")
    if not export_file.is_file():
        raise FileNotFoundError(2, "No such file", str(export_file))
    report = audit_export(export_file, sig, options)
    if options.peers and report.last:
        report.peers = asyncio.run(check_peers(
            Head(report.last["currhash"], report.last["summaryhash"]), options))
    return report


def _print(report: AuditReport, as_json: bool, state_file: Path | None) -> None:
    if not as_json:
        click.echo(_text(report))
        return
    result: dict[str, Any] = report.as_dict()
    if report.state is not None and state_file is not None:
        result["state"] = {k: v for k, v in report.state.as_dict().items() if k != "hashstate"}
    click.echo(json.dumps(result))


@click.command("audit", epilog=_EPILOG)
@click.argument("url", required=False)
@click.option("--url", "url_option", help="Server base URL (same as the URL argument).")
@click.option("--export", "export_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Audit this export document instead of a live server.")
@click.option("--server-key", required=True, help="Pinned server public key (base64url).")
@click.option("--signature", help="The export's Body-Signature-Ed25519 (base64url), or a "
              "file holding it.")
@click.option("--signature-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Detached signature file for the export (base64url or 64 raw bytes).")
@click.option("--anchor", help="Summaryhash the chain must reach (e.g. from a signed "
              "lasthash): an export must end there, a live chain must contain it.")
@instance_option
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Remember the verified head here; later runs verify only new entries "
              "and detect a rewritten history.")
@click.option("--peer", "peers", multiple=True, metavar="URL[#PUBLICKEY]",
              help="A peer or replica (…/chronicle/replica/ID) to ask for the audited head; "
              "repeatable. Without #PUBLICKEY the key its signed index announces is used.")
@click.option("--quorum", type=click.IntRange(min=1), default=None,
              help="Fail unless at least this many peers confirm the audited head.")
@click.option("--tlog", "tlog_key", metavar="VKEY",
              help="Check the chain against a checkpoint of its Merkle tree signed by this "
                   "checkpoint key: the tree over the audited entries must have its root.")
@click.option("--checkpoint", "checkpoint_file", type=click.Path(dir_okay=False, exists=True,
                                                                 path_type=Path),
              help="With --tlog: this signed checkpoint (a note file) instead of the "
                   "server's current one; needed with --export.")
@format_options
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Signature worker processes (default: one per CPU; 0 or 1: none).")
@click.option("--max-age", type=click.FloatRange(min=0), default=600.0, show_default=True,
              help="Seconds a response's signed datetime may be off our clock (0: no check).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Network timeout in seconds.")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="Progress line on stderr (default: only when stderr is a terminal).")
@handle_errors(fault_codes=FAULT_EXIT_CODES, interrupt=True)
def audit(url: str | None, url_option: str | None, export_file: Path | None, server_key: str,
          signature: str | None, signature_file: Path | None, anchor: str | None,
          instance: str, state_file: Path | None, peers: tuple[str, ...], quorum: int | None,
          tlog_key: str | None, checkpoint_file: Path | None, fmt: str, as_json: bool,
          workers: int | None, max_age: float, timeout: float,
          show_progress: bool | None) -> None:
    """Replay a whole chain and prove it: from a server URL or an export file.

    Checks every response or document signature against the pinned key, every entry
    signature, every prev link, every currhash and summaryhash, the total, and that the
    chain reaches a signed head (a fresh lasthash, or --anchor); with --tlog, that the
    Merkle tree over the entries matches a signed checkpoint. Memory stays flat whatever
    the chain's length. On the first fault prints the entry index, the field and
    expected vs found, and exits with the fault's code.
    """
    as_json = as_json or fmt == "json"
    target = _target(url, url_option, export_file)
    pinned = _b64_value(server_key, "--server-key")
    anchor_raw = _b64_value(anchor, "--anchor") if anchor else None
    if quorum is not None and quorum > len(peers):
        raise click.BadParameter(f"{quorum} > {len(peers)} peers given", param_hint="--quorum")
    tlog = _checkpoint_key(tlog_key)
    if checkpoint_file is not None and tlog is None:
        raise click.UsageError("--checkpoint goes with --tlog VKEY")
    source = str(export_file) if export_file else str(target)
    if as_json:
        report_errors_as_json({"source": source})
    progress = Progress(enabled=show_progress)
    try:
        options = AuditOptions(
            server_key=pinned, anchor=anchor_raw, state_file=state_file, instance=instance,
            workers=None if workers is None else max(workers, 1),
            mode="auto" if workers is None else ("inline" if workers <= 1 else "process"),
            freshness=max_age or None, timeout=timeout,
            peers=[PeerSpec.parse(p) for p in peers], quorum=quorum, progress=progress,
            tlog=tlog, checkpoint=None if checkpoint_file is None
            else checkpoint_file.read_bytes())
        if export_file is not None:
            report = _audit_export(export_file, _export_signature(signature, signature_file),
                                   options)
        else:
            report = asyncio.run(audit_server(source, options))
    finally:
        progress.close()
    if state_file is not None and report.state is not None:
        save_state(state_file, report.state, pinned, instance, source, report.tree)
        report.state_file = str(state_file)
    _print(report, as_json, state_file)
    log.debug("audit of %s: %d entries, server key %s", source, report.entries,
              b64u_encode(pinned))
