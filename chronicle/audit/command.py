"""``chronicle audit``: replay a whole chain and prove it (docs/audit.md).

Registered on the main command group by two lines at the end of ``chronicle/cli.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from chronicle.audit.engine import (
    EXIT_IO,
    EXIT_REFUSED,
    EXIT_USAGE,
    FAULT_EXIT_CODES,
    AuditReport,
)
from chronicle.audit.progress import Progress
from chronicle.audit.runner import (
    AuditOptions,
    PeerSpec,
    UsageProblem,
    audit_export,
    audit_server,
    read_signature,
    save_state,
)
from chronicle.client.errors import ServerRefused
from chronicle.client.http import api_base
from chronicle.core.encoding import b64u_encode, decode_b64_field
from chronicle.core.errors import ChronicleError, TransportError
from chronicle.core.verify import (
    ChainFault,
)

log = logging.getLogger(__name__)

_EPILOG = """\b
Exit codes:
   0  everything verified
   1  the server refused a request (signed error answer)
   2  usage error (bad option, unusable state file)
   3  transport or I/O error (server unreachable, file missing)
  10  bad document/response signature (not signed by the pinned key)
  11  bad entry signature
  12  broken link (prev is not the previous currhash)
  13  hash mismatch (currhash or summaryhash)
  14  truncated: the chain does not reach the anchor / signed head, or total is wrong
  15  malformed document or answer (not JSON, missing field, stale, off-request)
  16  history rewritten (the head remembered in --state is no longer on the chain)
  17  split view (a peer disagrees, or fewer than --quorum peers confirm)

\b
Examples:
  chronicle audit http://127.0.0.1:8080 --server-key PK --state audit.state
  chronicle audit --export export.json --server-key PK --signature SIG --anchor HASH
  chronicle audit http://a:8080 --server-key PK --peer http://b:8080/chronicle/replica/ID#BPK
"""


def _key(text: str, what: str, length: int = 32) -> bytes:
    raw = decode_b64_field(text.strip(), length)
    if raw is None:
        raise click.BadParameter(f"not a base64url {length}-byte value", param_hint=what)
    return raw


def _fail(exc: BaseException, code: int, as_json: bool, payload: dict[str, Any]) -> NoReturn:
    line = exc.diagnostics() if isinstance(exc, ChronicleError) else str(exc)
    if isinstance(exc, ChainFault):
        where = f" at entry {exc.index}" if exc.index is not None else ""
        field = f" (field {exc.field})" if exc.field else ""
        detail = ""
        if exc.expected is not None or exc.found is not None:
            detail = f": expected {exc.expected!r}, found {exc.found!r}"
        line = f"{exc.kind}{where}{field}{detail} - {exc.message}"
    if as_json:
        click.echo(json.dumps({"ok": False, "exit-code": code, **payload}))
    click.echo(f"error: {line}", err=True)
    sys.exit(code)


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
    if report.state_file:
        lines.append(f"state saved to {report.state_file}")
    return "\n".join(lines)


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
@click.option("--instance", default="", help="Chain name (default chain if omitted).")
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Remember the verified head here; later runs verify only new entries "
              "and detect a rewritten history.")
@click.option("--peer", "peers", multiple=True, metavar="URL[#PUBLICKEY]",
              help="A peer or replica (…/chronicle/replica/ID) to ask for the audited head; "
              "repeatable. Without #PUBLICKEY the key its signed index announces is used.")
@click.option("--quorum", type=click.IntRange(min=1), default=None,
              help="Fail unless at least this many peers confirm the audited head.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Signature worker processes (default: one per CPU; 0 or 1: none).")
@click.option("--max-age", type=click.FloatRange(min=0), default=600.0, show_default=True,
              help="Seconds a response's signed datetime may be off our clock (0: no check).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Network timeout in seconds.")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="Progress line on stderr (default: only when stderr is a terminal).")
def audit(  # noqa: C901, PLR0912, PLR0915 - split by the CLI package step
    url: str | None, url_option: str | None, export_file: Path | None, server_key: str,
          signature: str | None, signature_file: Path | None, anchor: str | None,
          instance: str, state_file: Path | None, peers: tuple[str, ...], quorum: int | None,
          fmt: str, as_json: bool, workers: int | None, max_age: float, timeout: float,
          show_progress: bool | None) -> None:
    """Replay a whole chain and prove it: from a server URL or an export file.

    Checks every response or document signature against the pinned key, every entry
    signature, every prev link, every currhash and summaryhash, the total, and that the
    chain reaches a signed head (a fresh lasthash, or --anchor). Memory stays flat
    whatever the chain's length. On the first fault prints the entry index, the field and
    expected vs found, and exits with the fault's code.
    """
    as_json = as_json or fmt == "json"
    debug = bool(click.get_current_context().find_root().params.get("debug"))
    target = url or url_option
    if url and url_option and url != url_option:
        raise click.UsageError("give the URL once")
    if (target is None) == (export_file is None):
        raise click.UsageError("give a server URL or --export FILE (exactly one)")
    if target is not None:
        try:
            api_base(target)
        except ChronicleError as exc:
            raise click.BadParameter(exc.message, param_hint="URL") from None
    pinned = _key(server_key, "--server-key")
    anchor_raw = _key(anchor, "--anchor") if anchor else None
    if quorum is not None and quorum > len(peers):
        raise click.BadParameter(f"{quorum} > {len(peers)} peers given", param_hint="--quorum")
    progress = Progress(enabled=show_progress)
    payload: dict[str, Any] = {"source": str(export_file) if export_file else target}
    try:
        options = AuditOptions(
            server_key=pinned, anchor=anchor_raw, state_file=state_file, instance=instance,
            workers=None if workers is None else max(workers, 1),
            mode="auto" if workers is None else ("inline" if workers <= 1 else "process"),
            freshness=max_age or None, timeout=timeout,
            peers=[PeerSpec.parse(p) for p in peers], quorum=quorum, progress=progress)
        if export_file is not None:
            if signature and signature_file:
                raise UsageProblem("give --signature or --signature-file, not both")
            sig = None
            if signature_file is not None:
                sig = read_signature(str(signature_file))
            elif signature is not None:
                sig = read_signature(signature)
            if sig is None and anchor_raw is None:
                raise UsageProblem("an export needs --signature/--signature-file (the "
                                   "document's signature) or --anchor to be trusted")
            if not export_file.is_file():
                raise FileNotFoundError(2, "No such file", str(export_file))
            report = audit_export(export_file, sig, options)
            if options.peers and report.last:
                from chronicle.audit.runner import check_peers
                from chronicle.client.http import Head

                report.peers = asyncio.run(check_peers(
                    Head(report.last["currhash"], report.last["summaryhash"]), options))
        else:
            assert target is not None
            report = asyncio.run(audit_server(target, options))
        progress.close()
        if state_file is not None and report.state is not None:
            save_state(state_file, report.state, pinned, instance,
                       str(export_file) if export_file else str(target))
            report.state_file = str(state_file)
    except ChainFault as exc:
        progress.close()
        if debug:
            raise
        _fail(exc, FAULT_EXIT_CODES.get(exc.kind, EXIT_REFUSED), as_json,
              {**payload, **exc.as_dict()})
    except UsageProblem as exc:
        progress.close()
        if debug:
            raise
        _fail(exc, EXIT_USAGE, as_json, {**payload, "fault": "usage", "message": exc.message})
    except ServerRefused as exc:
        progress.close()
        if debug:
            raise
        _fail(exc, EXIT_REFUSED, as_json, {**payload, "fault": "refused", "status": exc.status,
                                           "message": exc.message})
    except (TransportError, OSError) as exc:
        progress.close()
        if debug:
            raise
        message = exc.diagnostics() if isinstance(exc, ChronicleError) else \
            f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
        _fail(TransportError(message), EXIT_IO, as_json,
              {**payload, "fault": "transport", "message": message})
    except ChronicleError as exc:
        progress.close()
        if debug:
            raise
        _fail(exc, EXIT_REFUSED, as_json, {**payload, "fault": "refused",
                                           "message": exc.message})
    except KeyboardInterrupt:
        progress.close()
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    if as_json:
        out = report.as_dict()
        if report.state is not None and state_file is not None:
            out["state"] = {k: v for k, v in report.state.as_dict().items() if k != "hashstate"}
        click.echo(json.dumps(out))
    else:
        click.echo(_text(report))
    log.debug("audit of %s: %d entries, server key %s", payload["source"], report.entries,
              b64u_encode(pinned))
