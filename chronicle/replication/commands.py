"""``chronicle replica …`` and ``chronicle cross-sign …`` (docs/replication.md).

Registered on the main command group by ``add_command`` lines at the end of
``chronicle/cli.py``. Conventions (cli.md): every command takes ``--data-dir``; ``--json``
prints exactly one JSON object; errors are one ``error: …`` line on stderr; exit codes 0
success, 1 refused or verification failed (a source forked or failed), 2 usage error,
3 transport or I/O error. They work while ``serve`` runs on the same directory.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, TypeVar

import click

from chronicle.client.http import api_base
from chronicle.cliutil import (
    EXIT_IO,
    EXIT_REFUSED,
    F,
)
from chronicle.cliutil import data_dir_option as _data_dir
from chronicle.cliutil import fail as _fail
from chronicle.cliutil import handle_errors as _command
from chronicle.cliutil import instance_option as _instance
from chronicle.cliutil import out as _out
from chronicle.cliutil import public_key as _key
from chronicle.cliutil import run as _run
from chronicle.config import DataDir, Settings
from chronicle.core.encoding import atom, b64u_encode, decode_b64_field, utcnow
from chronicle.core.errors import ChronicleError
from chronicle.core.replica import STATUS_ACTIVE, STATUS_FAILED, CrossSignPolicy
from chronicle.ledger import Ledger
from chronicle.replication import crosssign
from chronicle.replication.attest import attest
from chronicle.replication.evidence import describe
from chronicle.replication.follower import SyncStatus, sync_sources
from chronicle.replication.upstream import SyncOptions
from chronicle.store import ReplicaPeer, ReplicaSource, Store, XsignTarget, open_store

log = logging.getLogger(__name__)

T = TypeVar("T")


def _json(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object.")(fn)




def _url(text: str, hint: str = "--url") -> str:
    try:
        return api_base(text.strip())
    except ChronicleError as exc:
        raise click.BadParameter(exc.message, param_hint=hint) from None


def _peer(text: str, kind: str, hint: str) -> ReplicaPeer:
    """``URL[#PUBLICKEY]``."""
    url, _, key_text = text.partition("#")
    key = None
    if key_text:
        key = decode_b64_field(key_text.strip(), 32)
        if key is None:
            raise click.BadParameter(f"{text!r}: the part after '#' is not a public key",
                                     param_hint=hint)
    return ReplicaPeer(_url(url, hint), key, kind)


async def _open(data_dir: Path) -> tuple[Store, Settings, DataDir]:
    dd = DataDir(data_dir)
    settings = dd.settings()
    store = open_store(settings.database, dd.path)
    await store.open()
    return store, settings, dd


async def _source(store: Store, name: str) -> ReplicaSource:
    source = await store.replication.source(name)
    if source is None:
        _fail(f"no replication source {name!r}")
    return source


def _new_source_id() -> str:
    """A public source id as PHP makes them: base64url of 33 random bytes (44 chars)."""
    return b64u_encode(os.urandom(33))


# --- chronicle replica ----------------------------------------------------------------------

@click.group("replica")
def replica() -> None:
    """Copy other Chronicles, verified (served under /chronicle/replica/{id})."""


@replica.command("add")
@_data_dir
@click.option("--url", required=True, help="The upstream's base URL (…/chronicle optional).")
@click.option("--server-key", required=True, help="The upstream's server public key (pinned).")
@click.option("--name", required=True, help="A name for this source (unique).")
@click.option("--id", "uniqueid", default=None,
              help="Keep this public id (e.g. when moving a PHP replica); default: random.")
@click.option("--peer", "peers", multiple=True, metavar="URL[#KEY]",
              help="Another copy of this upstream's chain (another replica's "
                   "…/chronicle/replica/{id}) to compare heads with. Repeatable.")
@click.option("--xsign-peer", "xsign_peers", multiple=True, metavar="URL[#KEY]",
              help="A Chronicle the upstream cross-signs onto, to check its claims. "
                   "Repeatable.")
@_instance
@_json
@_command
def replica_add(data_dir: Path, url: str, server_key: str, name: str, uniqueid: str | None,
                peers: tuple[str, ...], xsign_peers: tuple[str, ...], instance: str,
                as_json: bool) -> None:
    """Add a replication source (the first `replica sync` copies it)."""
    key = _key(server_key, "--server-key")
    base = _url(url)
    if not name.strip():
        raise click.BadParameter("must not be empty", param_hint="--name")
    if uniqueid is not None and (not uniqueid or len(uniqueid) > 100 or not all(
            c.isalnum() or c in "-_=" for c in uniqueid)):
        raise click.BadParameter("only base64url characters", param_hint="--id")
    specs = [_peer(p, "replica", "--peer") for p in peers] + \
        [_peer(p, "xsign", "--xsign-peer") for p in xsign_peers]

    async def go() -> ReplicaSource:
        store, settings, _ = await _open(data_dir)
        try:
            if instance not in settings.instances:
                _fail(f"unknown instance {instance!r}")
            await store.ensure_instance(instance)
            return await store.replication.add_source(ReplicaSource(
                uniqueid=uniqueid or _new_source_id(), name=name.strip(), url=base,
                publickey=key, instance=instance, created=atom(utcnow())), specs)
        finally:
            await store.close()

    source = _run(go())
    _out(as_json, {"id": source.uniqueid, "name": source.name, "url": source.url,
                   "server-key": b64u_encode(source.publickey)}, source.uniqueid)


def _source_dict(source: ReplicaSource, entries: int, head: str | None,
                 peers: list[ReplicaPeer]) -> dict[str, Any]:
    return {
        "id": source.uniqueid, "name": source.name, "url": source.url,
        "server-key": b64u_encode(source.publickey), "instance": source.instance,
        "status": source.status, "fault": source.fault, "reason": source.reason,
        "since": source.status_since, "entries": entries, "head": head,
        "last-sync": source.last_sync, "last-attempt": source.last_attempt,
        "last-error": source.last_error, "failures": source.failures,
        "peers": [{"url": p.url, "kind": p.kind,
                   "public-key": None if p.publickey is None else b64u_encode(p.publickey)}
                  for p in peers],
    }


@replica.command("list")
@_data_dir
@_json
@_command
def replica_list(data_dir: Path, as_json: bool) -> None:
    """Sources with their status (active, forked, failed), size and last sync."""

    async def go() -> list[dict[str, Any]]:
        store, _, _ = await _open(data_dir)
        try:
            out = []
            for source in await store.replication.sources(None):
                head = await store.replication.chain(source.id).head()
                out.append(_source_dict(
                    source, 0 if head is None else head.index + 1,
                    None if head is None else b64u_encode(head.summaryhash),
                    await store.replication.peers(source.id)))
            return out
        finally:
            await store.close()

    rows = _run(go())
    lines = []
    for r in rows:
        line = f"{r['name']}  {r['id']}  {r['status']}  {r['entries']} entries  {r['url']}"
        if r["status"] != STATUS_ACTIVE:
            line += f"  ({r['fault']}: {r['reason']})"
        elif r["last-error"]:
            line += f"  (last attempt failed: {r['last-error']})"
        lines.append(line)
    _out(as_json, {"sources": rows}, "\n".join(lines) or "(no replication sources)")


@replica.command("remove")
@_data_dir
@click.argument("name")
@_json
@_command
def replica_remove(data_dir: Path, name: str, as_json: bool) -> None:
    """Remove a source with its copy and its evidence."""

    async def go() -> str:
        store, _, _ = await _open(data_dir)
        try:
            source = await _source(store, name)
            await store.replication.remove_source(source.id)
            return source.uniqueid
        finally:
            await store.close()

    uniqueid = _run(go())
    _out(as_json, {"id": uniqueid, "removed": True}, f"removed {name} ({uniqueid})")


def _sync_text(result: dict[str, Any]) -> str:
    text = (f"{result['name']}: {result['status']}, +{result['added']} entries "
            f"({result['entries']} total)")
    if result["error"]:
        text += f" - {result['error']}"
    return text


@replica.command("sync")
@_data_dir
@click.argument("name", required=False)
@click.option("--attest", "attest_due", is_flag=True,
              help="Then append the attestation of replicated heads if it is due.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds per request.")
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="Signature-checking workers (default: the CPUs available).")
@_json
@_command
def replica_sync(data_dir: Path, name: str | None, attest_due: bool, timeout: float,
                 workers: int | None, as_json: bool) -> None:
    """Pull every source (or NAME) once. Exit 0 only if every one synced cleanly; 1 if
    one forked, failed or is stopped; 3 if one could not be reached."""

    async def go() -> tuple[list[dict[str, Any]], str | None]:
        store, settings, dd = await _open(data_dir)
        try:
            if name is not None:
                sources = [await _source(store, name)]
            else:
                sources = [s for s in await store.replication.sources(None)
                           if s.instance in settings.instances]
            options = SyncOptions(spool_dir=dd.cache_dir / "replication",
                                  evidence_dir=dd.path / "evidence", timeout=timeout,
                                  workers=workers)
            results = await sync_sources(store, sources, options)
            attested = None
            if attest_due:
                key = dd.signing_key(settings)
                for instance in sorted({s.instance for s in sources}):
                    ledger = Ledger(store, instance)
                    try:
                        entry = await attest(store, ledger, key,
                                             every=settings.scheduled_attestation)
                    finally:
                        await ledger.stop()
                    if entry is not None:
                        attested = b64u_encode(entry.currhash)
            return [r.as_dict() for r in results], attested
        finally:
            await store.close()

    results, attested = _run(go())
    clean = all(r["status"] == SyncStatus.OK for r in results)
    payload: dict[str, Any] = {"ok": clean, "sources": results}
    if attest_due:
        payload["attestation"] = attested
    text = "\n".join(_sync_text(r) for r in results) or "(no replication sources)"
    if attested:
        text += f"\nattestation appended: {attested}"
    _out(as_json, payload, text)
    if not clean:
        bad = [r for r in results if r["status"] != SyncStatus.OK]
        code = EXIT_IO if all(r["status"] == SyncStatus.ERROR for r in bad) else EXIT_REFUSED
        click.echo(f"error: {len(bad)} of {len(results)} source(s) did not sync cleanly: "
                   + "; ".join(f"{r['name']} {r['status']}: {r['error']}" for r in bad),
                   err=True)
        sys.exit(code)


@replica.command("evidence")
@_data_dir
@click.argument("name")
@_json
@_command
def replica_evidence(data_dir: Path, name: str, as_json: bool) -> None:
    """Print why a source stopped: each fault with the signed answers that show it."""

    async def go() -> tuple[ReplicaSource, list[dict[str, Any]]]:
        store, _, _ = await _open(data_dir)
        try:
            source = await _source(store, name)
            faults = await store.replication.faults(source.id)
            keys = await store.replication.keys(source.id)
        finally:
            await store.close()
        rows = [{"recorded": f.recorded, "status": f.status, "fault": f.kind,
                 "message": f.message, "details": f.details,
                 "documents": [describe(d) for d in f.documents]} for f in faults]
        history = [{"public-key": b64u_encode(k.publickey), "since": k.since,
                    "retired": k.retired, "reason": k.reason} for k in keys]
        return source, [{"faults": rows, "keys": history}]

    source, (data,) = _run(go())
    if as_json:
        click.echo(json.dumps({"id": source.uniqueid, "name": source.name,
                               "status": source.status, **data}))
        return
    lines = [f"{source.name} ({source.uniqueid}): {source.status}"]
    for k in data["keys"]:
        lines.append(f"key {k['public-key']} since {k['since']}"
                     + (f" retired {k['retired']}" if k["retired"] else "")
                     + (f" ({k['reason']})" if k["reason"] else ""))
    if not data["faults"]:
        lines.append("(no evidence recorded)")
    for n, fault in enumerate(data["faults"], 1):
        lines.append(f"--- fault {n}: {fault['status']} ({fault['fault']}) at "
                     f"{fault['recorded']}")
        lines.append(fault["message"])
        for doc in fault["documents"]:
            lines.append(f"  [{doc['role']}] {doc['request']} -> HTTP {doc['status']}")
            lines.append(f"  Body-Signature-Ed25519: {doc['signature']} "
                         f"(checked against {doc['signed-by']})")
            lines.append(f"  sha256 {doc['sha256']}, {doc['size']} bytes"
                         + (f", kept in {doc['file']}" if doc["file"] else ""))
            if "body" in doc:
                lines.extend("    " + line for line in doc["body"].splitlines())
    click.echo("\n".join(lines))


@replica.command("set-key")
@_data_dir
@click.argument("name")
@click.option("--server-key", required=True, help="The upstream's new server public key.")
@click.option("--reason", default=None, help="Why (recorded in the key history).")
@_json
@_command
def replica_set_key(data_dir: Path, name: str, server_key: str, reason: str | None,
                    as_json: bool) -> None:
    """Pin a new server key for a source (legitimate key rotation); a source stopped by
    the key change follows again."""
    key = _key(server_key, "--server-key")

    async def go() -> ReplicaSource:
        store, _, _ = await _open(data_dir)
        try:
            source = await _source(store, name)
            when = atom(utcnow())
            if key != source.publickey:
                await store.replication.set_key(source.id, key, when=when,
                                            reason=reason or "rotated by the operator")
            if source.status == STATUS_FAILED and source.fault == "key-changed":
                await store.replication.set_status(source.id, STATUS_ACTIVE, fault=None,
                                               reason=None, when=when)
            found = await store.replication.source(source.uniqueid)
            assert found is not None
            return found
        finally:
            await store.close()

    source = _run(go())
    _out(as_json, {"id": source.uniqueid, "server-key": b64u_encode(source.publickey),
                   "status": source.status},
         f"{source.name}: server key {b64u_encode(source.publickey)} ({source.status})")


@replica.command("resume")
@_data_dir
@click.argument("name")
@_json
@_command
def replica_resume(data_dir: Path, name: str, as_json: bool) -> None:
    """Follow a stopped (forked or failed) source again; its evidence is kept."""

    async def go() -> str:
        store, _, _ = await _open(data_dir)
        try:
            source = await _source(store, name)
            await store.replication.set_status(source.id, STATUS_ACTIVE, fault=None, reason=None,
                                           when=atom(utcnow()))
            return source.uniqueid
        finally:
            await store.close()

    uniqueid = _run(go())
    _out(as_json, {"id": uniqueid, "status": STATUS_ACTIVE}, f"{name}: active")


@replica.command("set-url")
@_data_dir
@click.argument("name")
@click.option("--url", required=True, help="The upstream's new base URL.")
@_command
def replica_set_url(data_dir: Path, name: str, url: str) -> None:
    """The upstream moved: follow it at a new address (same key, same chain)."""
    base = _url(url)

    async def go() -> None:
        store, _, _ = await _open(data_dir)
        try:
            await store.replication.set_url((await _source(store, name)).id, base)
        finally:
            await store.close()

    _run(go())
    click.echo(f"{name}: {base}")


@replica.command("set-peers")
@_data_dir
@click.argument("name")
@click.option("--peer", "peers", multiple=True, metavar="URL[#KEY]")
@click.option("--xsign-peer", "xsign_peers", multiple=True, metavar="URL[#KEY]")
@_command
def replica_set_peers(data_dir: Path, name: str, peers: tuple[str, ...],
                      xsign_peers: tuple[str, ...]) -> None:
    """Replace the peers a source's head is compared with (none: no split-view check)."""
    specs = [_peer(p, "replica", "--peer") for p in peers] + \
        [_peer(p, "xsign", "--xsign-peer") for p in xsign_peers]

    async def go() -> None:
        store, _, _ = await _open(data_dir)
        try:
            await store.replication.set_peers((await _source(store, name)).id, specs)
        finally:
            await store.close()

    _run(go())
    click.echo(f"{name}: {len(specs)} peer(s)")


# --- chronicle cross-sign -------------------------------------------------------------------

@click.group("cross-sign")
def cross_sign() -> None:
    """Publish our chain head on peer Chronicles, by policy (run by `serve`)."""


@cross_sign.command("add")
@_data_dir
@click.option("--url", required=True, help="The peer's base URL.")
@click.option("--server-key", required=True, help="The peer's server public key (pinned).")
@click.option("--client-id", required=True, help="Our server key's client id on the peer.")
@click.option("--push-after", type=click.IntRange(min=1), default=None,
              help="Cross-sign after this many new entries.")
@click.option("--push-days", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Cross-sign at least every this many days.")
@click.option("--name", default=None, help="A name for this target (default: the URL).")
@_instance
@_json
@_command
def xsign_add(data_dir: Path, url: str, server_key: str, client_id: str,
              push_after: int | None, push_days: float | None, name: str | None,
              instance: str, as_json: bool) -> None:
    """Add a cross-sign target. Register our server key as a client of the peer first."""
    key = _key(server_key, "--server-key")
    base = _url(url)
    if push_after is None and push_days is None:
        raise click.UsageError("give --push-after and/or --push-days")
    if not client_id.strip():
        raise click.BadParameter("must not be empty", param_hint="--client-id")
    policy = CrossSignPolicy(push_after, push_days)

    async def go() -> XsignTarget:
        store, settings, dd = await _open(data_dir)
        try:
            if instance not in settings.instances:
                _fail(f"unknown instance {instance!r}")
            if key == dd.signing_key(settings).public:
                _fail("a cross-sign target must be another server (this is our own key)")
            await store.ensure_instance(instance)
            return await store.xsign.add_target(XsignTarget(
                name=name or base, url=base, publickey=key, clientid=client_id.strip(),
                policy=policy.as_json(), instance=instance, created=atom(utcnow())))
        finally:
            await store.close()

    target = _run(go())
    _out(as_json, {"name": target.name, "url": target.url, "policy": json.loads(target.policy)},
         f"cross-sign target {target.name} added ({target.policy})")


@cross_sign.command("list")
@_data_dir
@_json
@_command
def xsign_list(data_dir: Path, as_json: bool) -> None:
    """Targets, their policy, and the last receipt each gave."""

    async def go() -> list[dict[str, Any]]:
        store, _, _ = await _open(data_dir)
        try:
            out = []
            for t in await store.xsign.targets(None):
                receipts = await store.xsign.receipts(t.id, limit=1)
                last = receipts[0] if receipts else None
                out.append({
                    "name": t.name, "url": t.url, "server-key": b64u_encode(t.publickey),
                    "client-id": t.clientid, "instance": t.instance,
                    "policy": json.loads(t.policy), "last-index": t.last_index,
                    "last-run": t.last_run, "last-attempt": t.last_attempt,
                    "last-error": t.last_error, "failures": t.failures,
                    "last-receipt": None if last is None else {
                        "status": last.status, "index": last.index,
                        "recorded": last.recorded, "currhash": last.peer_currhash,
                        "summaryhash": last.peer_summaryhash, "created": last.peer_created,
                        "error": last.error}})
            return out
        finally:
            await store.close()

    rows = _run(go())
    text = "\n".join(
        f"{r['name']}  {json.dumps(r['policy'])}  last cross-signed entry "
        f"{r['last-index'] if r['last-index'] is not None else '-'}"
        + (f" at {r['last-run']}" if r["last-run"] else "")
        + (f"  ({r['failures']} failure(s): {r['last-error']})" if r["failures"] else "")
        for r in rows)
    _out(as_json, {"targets": rows}, text or "(no cross-sign targets)")


@cross_sign.command("remove")
@_data_dir
@click.argument("name")
@_instance
@_command
def xsign_remove(data_dir: Path, name: str, instance: str) -> None:
    async def go() -> bool:
        store, _, _ = await _open(data_dir)
        try:
            return await store.xsign.remove_target(instance, name)
        finally:
            await store.close()

    if not _run(go()):
        _fail(f"no cross-sign target {name!r}")
    click.echo(f"cross-sign target {name} removed")


@cross_sign.command("run")
@_data_dir
@click.argument("name", required=False)
@click.option("--force", is_flag=True, help="Push now, whatever the policy says.")
@_json
@_command
def xsign_run(data_dir: Path, name: str | None, force: bool, as_json: bool) -> None:
    """Cross-sign now onto every target whose policy says so (or NAME). Exit 1 if a peer
    refused or answered something unverifiable, 3 if one could not be reached."""

    async def go() -> list[dict[str, Any]]:
        store, settings, dd = await _open(data_dir)
        try:
            key = dd.signing_key(settings)
            targets = [t for t in await store.xsign.targets(None)
                       if name is None or t.name == name]
            if name is not None and not targets:
                _fail(f"no cross-sign target {name!r}")
            return [(await crosssign.push(store, key, t, force=force)).as_dict()
                    for t in targets]
        finally:
            await store.close()

    results = _run(go())
    _out(as_json, {"targets": results},
         "\n".join(f"{r['name']}: {r['status']}" + (f" - {r['error']}" if r["error"] else "")
                   + (f" (peer entry {r['peer-currhash']})" if r["peer-currhash"] else "")
                   for r in results) or "(no cross-sign targets)")
    bad = [r for r in results if r["status"] in (crosssign.PushStatus.ERROR,
                                                  crosssign.PushStatus.REFUSED,
                                                  crosssign.PushStatus.FAILED)]
    if bad:
        transient = all(r["status"] == crosssign.PushStatus.ERROR for r in bad)
        code = EXIT_IO if transient else EXIT_REFUSED
        click.echo("error: " + "; ".join(f"{r['name']}: {r['error']}" for r in bad), err=True)
        sys.exit(code)
