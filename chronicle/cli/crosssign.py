"""``chronicle cross-sign …``: publish our chain head on peer Chronicles, by policy
(docs/replication.md). ``serve`` runs the policy; ``cross-sign run`` pushes now and exits
1 if a peer refused or answered something unverifiable, 3 if one could not be reached.
"""

from __future__ import annotations

import json
from typing import Any

import click

from chronicle.cli.common import (
    EXIT_IO,
    EXIT_REFUSED,
    base_url,
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
from chronicle.config import DataDir
from chronicle.core.encoding import atom, b64u_encode, utcnow
from chronicle.core.replica import CrossSignPolicy
from chronicle.replication import crosssign
from chronicle.store import XsignTarget


@click.group("cross-sign")
def cross_sign() -> None:
    """Publish our chain head on peer Chronicles, by policy (run by `serve`)."""


@cross_sign.command("add")
@data_dir_option
@click.option("--url", required=True, help="The peer's base URL.")
@click.option("--server-key", required=True, help="The peer's server public key (pinned).")
@click.option("--client-id", required=True, help="Our server key's client id on the peer.")
@click.option("--push-after", type=click.IntRange(min=1), default=None,
              help="Cross-sign after this many new entries.")
@click.option("--push-days", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Cross-sign at least every this many days.")
@click.option("--name", default=None, help="A name for this target (default: the URL).")
@instance_option
@json_option
@handle_errors
def xsign_add(data_dir: DataDir, url: str, server_key: str, client_id: str,
              push_after: int | None, push_days: float | None, name: str | None,
              instance: str, as_json: bool) -> None:
    """Add a cross-sign target. Register our server key as a client of the peer first."""
    key = public_key(server_key, "--server-key")
    base = base_url(url.strip())
    if push_after is None and push_days is None:
        raise click.UsageError("give --push-after and/or --push-days")
    if not client_id.strip():
        raise click.BadParameter("must not be empty", param_hint="--client-id")
    policy = CrossSignPolicy(push_after, push_days)

    async def go() -> XsignTarget:
        async with open_store(data_dir) as opened:
            opened.require_instance(instance)
            if key == opened.signing_key().public:
                fail("a cross-sign target must be another server (this is our own key)")
            await opened.store.ensure_instance(instance)
            return await opened.store.xsign.add_target(XsignTarget(
                name=name or base, url=base, publickey=key, clientid=client_id.strip(),
                policy=policy.as_json(), instance=instance, created=atom(utcnow())))

    target = run(go())
    out(as_json, {"name": target.name, "url": target.url, "policy": json.loads(target.policy)},
        f"cross-sign target {target.name} added ({target.policy})")


@cross_sign.command("list")
@data_dir_option
@click.option("--instance", default=None, help="Only the targets of this chain of ours.")
@json_option
@handle_errors
def xsign_list(data_dir: DataDir, instance: str | None, as_json: bool) -> None:
    """Targets, their policy, and the last receipt each gave."""

    async def go() -> list[dict[str, Any]]:
        async with open_store(data_dir) as opened:
            xsign = opened.store.xsign
            rows = []
            for t in await xsign.targets(instance):
                receipts = await xsign.receipts(t.id, limit=1)
                last = receipts[0] if receipts else None
                rows.append({
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
            return rows

    rows = run(go())
    text = "\n".join(
        f"{r['name']}  {json.dumps(r['policy'])}  last cross-signed entry "
        f"{r['last-index'] if r['last-index'] is not None else '-'}"
        + (f" at {r['last-run']}" if r["last-run"] else "")
        + (f"  ({r['failures']} failure(s): {r['last-error']})" if r["failures"] else "")
        for r in rows)
    out(as_json, {"targets": rows}, text or "(no cross-sign targets)")


@cross_sign.command("remove")
@data_dir_option
@click.argument("name")
@instance_option
@json_option
@handle_errors
def xsign_remove(data_dir: DataDir, name: str, instance: str, as_json: bool) -> None:
    """Stop cross-signing onto target NAME; its receipts are deleted with it (exit 1 if
    there is no such target). What was already published on the peer stays there."""
    async def go() -> bool:
        async with open_store(data_dir) as opened:
            return await opened.store.xsign.remove_target(instance, name)

    if not run(go()):
        fail(f"no cross-sign target {name!r}")
    out(as_json, {"name": name, "removed": True}, f"cross-sign target {name} removed")


@cross_sign.command("run")
@data_dir_option
@click.argument("name", required=False)
@click.option("--force", is_flag=True, help="Push now, whatever the policy says.")
@json_option
@handle_errors
def xsign_run(data_dir: DataDir, name: str | None, force: bool, as_json: bool) -> None:
    """Cross-sign now onto every target whose policy says so (or NAME). Exit 1 if a peer
    refused or answered something unverifiable, 3 if one could not be reached."""

    async def go() -> list[dict[str, Any]]:
        async with open_store(data_dir) as opened:
            key = opened.signing_key()
            targets = [t for t in await opened.store.xsign.targets(None)
                       if name is None or t.name == name]
            if name is not None and not targets:
                fail(f"no cross-sign target {name!r}")
            return [(await crosssign.push(opened.store, key, t, force=force)).as_dict()
                    for t in targets]

    results = run(go())
    out(as_json, {"targets": results},
        "\n".join(f"{r['name']}: {r['status']}" + (f" - {r['error']}" if r["error"] else "")
                  + (f" (peer entry {r['peer-currhash']})" if r["peer-currhash"] else "")
                  for r in results) or "(no cross-sign targets)")
    failed = (crosssign.PushStatus.ERROR, crosssign.PushStatus.REFUSED,
              crosssign.PushStatus.FAILED)
    bad = [r for r in results if r["status"] in failed]
    if bad:
        transient = all(r["status"] == crosssign.PushStatus.ERROR for r in bad)
        code = EXIT_IO if transient else EXIT_REFUSED
        exit_with_error("; ".join(f"{r['name']}: {r['error']}" for r in bad), code)
