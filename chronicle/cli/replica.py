"""``chronicle replica …``: copy other Chronicles, verified (docs/replication.md).

Every command takes ``--data-dir`` and works while ``serve`` runs on the same directory.
``replica sync`` exits 1 if a source forked, failed or is stopped, 3 if one could not be
reached (cli.md).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from chronicle.cli.common import (
    EXIT_IO,
    EXIT_REFUSED,
    chain_url,
    data_dir_option,
    exit_with_error,
    fail,
    handle_errors,
    instance_option,
    json_option,
    open_store,
    out,
    public_key,
    run,
)
from chronicle.client.http import split_instance
from chronicle.config import DataDir
from chronicle.core.encoding import atom, b64u_encode, decode_b64_field, utcnow
from chronicle.core.errors import ChronicleError
from chronicle.core.note import Ed25519Verifier
from chronicle.core.replica import STATUS_ACTIVE, STATUS_FAILED
from chronicle.replication.attest import attest
from chronicle.replication.evidence import describe
from chronicle.replication.follower import SyncStatus, sync_sources
from chronicle.replication.upstream import SyncOptions
from chronicle.store import ReplicaPeer, ReplicaSource, Store


def _peer(text: str, kind: str, hint: str) -> ReplicaPeer:
    """``URL[#PUBLICKEY]``: a copy to compare heads with (``kind``: replica or xsign)."""
    url, _, key_text = text.partition("#")
    key = None
    if key_text:
        key = decode_b64_field(key_text.strip(), 32)
        if key is None:
            raise click.BadParameter(f"{text!r}: the part after '#' is not a public key",
                                     param_hint=hint)
    return ReplicaPeer(chain_url(url, None, hint), key, kind)


def _peers(peers: tuple[str, ...], xsign_peers: tuple[str, ...]) -> list[ReplicaPeer]:
    return [_peer(p, "replica", "--peer") for p in peers] + \
        [_peer(p, "xsign", "--xsign-peer") for p in xsign_peers]


async def _source(store: Store, name: str) -> ReplicaSource:
    source = await store.replication.source(name)
    if source is None:
        fail(f"no replication source {name!r}")
    return source


def _new_source_id() -> str:
    """A public source id as PHP makes them: base64url of 33 random bytes (44 chars)."""
    return b64u_encode(os.urandom(33))


@click.group("replica")
def replica() -> None:
    """Copy other Chronicles, verified (served under /chronicle/replica/{id})."""


@replica.command("add")
@data_dir_option
@click.option("--url", required=True, help="The upstream's base URL (…/chronicle optional).")
@click.option("--upstream-instance", default=None, metavar="NAME",
              help="Copy this chain of the upstream (its ?instance=NAME), not its default one.")
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
@instance_option
@json_option
@handle_errors
def replica_add(data_dir: DataDir, url: str, upstream_instance: str | None, server_key: str,
                name: str, uniqueid: str | None, peers: tuple[str, ...],
                xsign_peers: tuple[str, ...], instance: str, as_json: bool) -> None:
    """Add a replication source (the first `replica sync` copies it). `--instance` names
    our own chain the copy belongs to; `--upstream-instance` the upstream's chain."""
    key = public_key(server_key, "--server-key")
    base = chain_url(url, upstream_instance)
    if not name.strip():
        raise click.BadParameter("must not be empty", param_hint="--name")
    if uniqueid is not None and (not uniqueid or len(uniqueid) > 100 or not all(
            c.isalnum() or c in "-_=" for c in uniqueid)):
        raise click.BadParameter("only base64url characters", param_hint="--id")
    specs = _peers(peers, xsign_peers)

    async def go() -> ReplicaSource:
        async with open_store(data_dir) as opened:
            opened.require_instance(instance)
            await opened.store.ensure_instance(instance)
            return await opened.store.replication.add_source(ReplicaSource(
                uniqueid=uniqueid or _new_source_id(), name=name.strip(), url=base,
                publickey=key, instance=instance, created=atom(utcnow())), specs)

    source = run(go())
    out(as_json, {"id": source.uniqueid, "name": source.name, "url": source.url,
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
@data_dir_option
@click.option("--instance", default=None, help="Only the sources of this chain of ours.")
@json_option
@handle_errors
def replica_list(data_dir: DataDir, instance: str | None, as_json: bool) -> None:
    """Sources with their status (active, forked, failed), size and last sync.

    Exits 1 when a source is stopped (forked or failed), so that alerting can run it."""

    async def go() -> list[dict[str, Any]]:
        async with open_store(data_dir) as opened:
            if instance is not None:
                opened.require_instance(instance)
            replication = opened.store.replication
            rows = []
            for source in await replication.sources(instance):
                head = await replication.chain(source.id).head()
                rows.append(_source_dict(
                    source, 0 if head is None else head.index + 1,
                    None if head is None else b64u_encode(head.summaryhash),
                    await replication.peers(source.id)))
            return rows

    rows = run(go())
    lines = []
    for r in rows:
        line = f"{r['name']}  {r['id']}  {r['status']}  {r['entries']} entries  {r['url']}"
        if r["status"] != STATUS_ACTIVE:
            line += f"  ({r['fault']}: {r['reason']})"
        elif r["last-error"]:
            line += f"  (last attempt failed: {r['last-error']})"
        lines.append(line)
    out(as_json, {"sources": rows}, "\n".join(lines) or "(no replication sources)")
    if any(r["status"] != STATUS_ACTIVE for r in rows):
        sys.exit(EXIT_REFUSED)


@replica.command("remove")
@data_dir_option
@click.argument("name")
@json_option
@handle_errors
def replica_remove(data_dir: DataDir, name: str, as_json: bool) -> None:
    """Remove a source with its copy and its evidence."""

    async def go() -> str:
        async with open_store(data_dir) as opened:
            source = await _source(opened.store, name)
            await opened.store.replication.remove_source(source.id)
            return source.uniqueid

    uniqueid = run(go())
    out(as_json, {"id": uniqueid, "removed": True}, f"removed {name} ({uniqueid})")


def _sync_text(result: dict[str, Any]) -> str:
    text = (f"{result['name']}: {result['status']}, +{result['added']} entries "
            f"({result['entries']} total)")
    if result["error"]:
        text += f" - {result['error']}"
    return text


@replica.command("sync")
@data_dir_option
@click.argument("name", required=False)
@click.option("--attest", "attest_due", is_flag=True,
              help="Then append the attestation of replicated heads if it is due.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds per request.")
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="Signature-checking workers (default: the CPUs available).")
@json_option
@handle_errors
def replica_sync(data_dir: DataDir, name: str | None, attest_due: bool, timeout: float,
                 workers: int | None, as_json: bool) -> None:
    """Pull every source (or NAME) once. Exit 0 only if every one synced cleanly; 1 if
    one forked, failed or is stopped; 3 if one could not be reached."""

    async def go() -> tuple[list[dict[str, Any]], str | None]:
        async with open_store(data_dir) as opened:
            store, settings = opened.store, opened.settings
            if name is not None:
                sources = [await _source(store, name)]
            else:
                sources = [s for s in await store.replication.sources(None)
                           if s.instance in settings.instances]
            options = SyncOptions(spool_dir=data_dir.replication_spool_dir,
                                  evidence_dir=data_dir.evidence_dir, timeout=timeout,
                                  workers=workers)
            results = await sync_sources(store, sources, options)
            attested = None
            if attest_due:
                key = opened.signing_key()
                for instance in sorted({s.instance for s in sources}):
                    async with opened.ledger(instance) as ledger:
                        entry = await attest(store, ledger, key,
                                             every=settings.scheduled_attestation)
                    if entry is not None:
                        attested = b64u_encode(entry.currhash)
            return [r.as_dict() for r in results], attested

    results, attested = run(go())
    clean = all(r["status"] == SyncStatus.OK for r in results)
    payload: dict[str, Any] = {"ok": clean, "sources": results}
    if attest_due:
        payload["attestation"] = attested
    text = "\n".join(_sync_text(r) for r in results) or "(no replication sources)"
    if attested:
        text += f"\nattestation appended: {attested}"
    out(as_json, payload, text)
    if not clean:
        bad = [r for r in results if r["status"] != SyncStatus.OK]
        code = EXIT_IO if all(r["status"] == SyncStatus.ERROR for r in bad) else EXIT_REFUSED
        exit_with_error(f"{len(bad)} of {len(results)} source(s) did not sync cleanly: "
                        + "; ".join(f"{r['name']} {r['status']}: {r['error']}" for r in bad),
                        code)


def _evidence_text(source: ReplicaSource, data: dict[str, Any]) -> str:
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
                # The upstream's bytes, never as terminal control sequences.
                lines.extend("    " + printable(line) for line in doc["body"].splitlines())
    return "\n".join(lines)


def printable(text: str) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``), so that
    bytes an upstream sent cannot drive the terminal that reads them."""
    return "".join(c if c.isprintable() or c == "\t" else f"\\x{ord(c):02x}"
                   if ord(c) < 0x100 else f"\\u{ord(c):04x}" for c in text)


@replica.command("evidence")
@data_dir_option
@click.argument("name")
@json_option
@handle_errors
def replica_evidence(data_dir: DataDir, name: str, as_json: bool) -> None:
    """Print why a source stopped: each fault with the signed answers that show it."""

    async def go() -> tuple[ReplicaSource, dict[str, Any]]:
        async with open_store(data_dir) as opened:
            source = await _source(opened.store, name)
            faults = await opened.store.replication.faults(source.id)
            keys = await opened.store.replication.keys(source.id)
        rows = [{"recorded": f.recorded, "status": f.status, "fault": f.kind,
                 "message": f.message, "details": f.details,
                 "documents": [describe(d) for d in f.documents]} for f in faults]
        history = [{"public-key": b64u_encode(k.publickey), "since": k.since,
                    "retired": k.retired, "reason": k.reason} for k in keys]
        return source, {"faults": rows, "keys": history}

    source, data = run(go())
    if as_json:
        click.echo(json.dumps({"id": source.uniqueid, "name": source.name,
                               "status": source.status, **data}))
        return
    click.echo(_evidence_text(source, data))


@replica.command("set-key")
@data_dir_option
@click.argument("name")
@click.option("--server-key", required=True, help="The upstream's new server public key.")
@click.option("--reason", default=None, help="Why (recorded in the key history).")
@json_option
@handle_errors
def replica_set_key(data_dir: DataDir, name: str, server_key: str, reason: str | None,
                    as_json: bool) -> None:
    """Pin a new server key for a source (legitimate key rotation); a source stopped by
    the key change follows again."""
    key = public_key(server_key, "--server-key")

    async def go() -> ReplicaSource:
        async with open_store(data_dir) as opened:
            replication = opened.store.replication
            source = await _source(opened.store, name)
            when = atom(utcnow())
            if key != source.publickey:
                await replication.set_key(source.id, key, when=when,
                                          reason=reason or "rotated by the operator")
            if source.status == STATUS_FAILED and source.fault == "key-changed":
                await replication.set_status(source.id, STATUS_ACTIVE, fault=None,
                                             reason=None, when=when)
            found = await replication.source(source.uniqueid)
            assert found is not None
            return found

    source = run(go())
    out(as_json, {"id": source.uniqueid, "server-key": b64u_encode(source.publickey),
                  "status": source.status},
        f"{source.name}: server key {b64u_encode(source.publickey)} ({source.status})")


@replica.command("resume")
@data_dir_option
@click.argument("name")
@json_option
@handle_errors
def replica_resume(data_dir: DataDir, name: str, as_json: bool) -> None:
    """Follow a stopped (forked or failed) source again; its evidence is kept."""

    async def go() -> str:
        async with open_store(data_dir) as opened:
            source = await _source(opened.store, name)
            await opened.store.replication.set_status(source.id, STATUS_ACTIVE, fault=None,
                                                      reason=None, when=atom(utcnow()))
            return source.uniqueid

    uniqueid = run(go())
    out(as_json, {"id": uniqueid, "status": STATUS_ACTIVE}, f"{name}: active")


@replica.command("set-url")
@data_dir_option
@click.argument("name")
@click.option("--url", required=True, help="The upstream's new base URL.")
@click.option("--upstream-instance", default=None, metavar="NAME",
              help="The upstream's chain copied (default: the one the source follows now).")
@json_option
@handle_errors
def replica_set_url(data_dir: DataDir, name: str, url: str,
                    upstream_instance: str | None, as_json: bool) -> None:
    """The upstream moved: follow it at a new address (same key, same chain)."""

    async def go() -> str:
        async with open_store(data_dir) as opened:
            source = await _source(opened.store, name)
            followed = split_instance(source.url)[1]
            base = chain_url(url, upstream_instance or followed)
            await opened.store.replication.set_url(source.id, base)
            return base

    base = run(go())
    out(as_json, {"name": name, "url": base}, f"{name}: {base}")


@replica.command("set-checkpoint-key")
@data_dir_option
@click.argument("name")
@click.option("--checkpoint-key", required=True, metavar="VKEY",
              help="The upstream's Merkle tree checkpoint key (the vkey it announced).")
@json_option
@handle_errors
def replica_set_checkpoint_key(data_dir: DataDir, name: str, checkpoint_key: str,
                               as_json: bool) -> None:
    """Check the upstream's Merkle tree on every sync: each checkpoint it signs must be
    proven consistent with the last one verified, else the source stops as forked."""
    try:
        vkey = Ed25519Verifier.from_vkey(checkpoint_key.strip()).vkey()
    except ChronicleError as exc:
        raise click.BadParameter(exc.message, param_hint="--checkpoint-key") from None

    async def go() -> None:
        async with open_store(data_dir) as opened:
            source = await _source(opened.store, name)
            await opened.store.tlog.watch_upstream(source.id, vkey)

    run(go())
    out(as_json, {"name": name, "checkpoint-key": vkey},
        f"{name}: checkpoints checked with {vkey}")


@replica.command("set-peers")
@data_dir_option
@click.argument("name")
@click.option("--peer", "peers", multiple=True, metavar="URL[#KEY]",
              help="Another copy of the upstream's chain to compare heads with. Repeatable.")
@click.option("--xsign-peer", "xsign_peers", multiple=True, metavar="URL[#KEY]",
              help="A Chronicle the upstream cross-signs onto. Repeatable.")
@json_option
@handle_errors
def replica_set_peers(data_dir: DataDir, name: str, peers: tuple[str, ...],
                      xsign_peers: tuple[str, ...], as_json: bool) -> None:
    """Replace the peers a source's head is compared with (none: no split-view check)."""
    specs = _peers(peers, xsign_peers)

    async def go() -> None:
        async with open_store(data_dir) as opened:
            source = await _source(opened.store, name)
            await opened.store.replication.set_peers(source.id, specs)

    run(go())
    out(as_json, {"name": name, "peers": [
        {"url": p.url, "kind": p.kind,
         "public-key": None if p.publickey is None else b64u_encode(p.publickey)}
        for p in specs]}, f"{name}: {len(specs)} peer(s)")
