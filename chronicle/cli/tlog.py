"""The Merkle tree (docs/tlog.md): ``tlog enable|status`` for the operator (a data
directory), ``prove`` for anyone (a server URL and its two keys).

``tlog enable`` works while ``serve`` runs on the same directory; the server starts
serving ``/chronicle/tlog/`` at once.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from chronicle.cli.common import (
    base_url,
    data_dir_option,
    fail,
    handle_errors,
    json_option,
    open_store,
    out,
    public_key,
    run,
)
from chronicle.client.http import ChronicleClient
from chronicle.client.tlog import TreeClient, check_entry
from chronicle.config import DataDir
from chronicle.core.checkpoint import CosignatureVerifier, WitnessPolicy
from chronicle.core.encoding import b64u_encode, decode_b64_field, utcnow
from chronicle.core.errors import ChronicleError
from chronicle.core.note import Ed25519Verifier, parse_note
from chronicle.treelog import check_origin
from chronicle.treelog import enable as enable_tree


def _origin(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        check_origin(value)
    except ChronicleError as exc:
        raise click.BadParameter(exc.message) from None
    return value


@click.group("tlog")
def tlog() -> None:
    """The Merkle tree over the default chain: checkpoints, proofs, tiles."""


@tlog.command("enable")
@data_dir_option
@click.option("--origin", required=True, callback=_origin,
              help="The log's name: its tiles URL without scheme, e.g. "
                   "ledger.example.org/chronicle/tlog. Never changes.")
@json_option
@handle_errors
def tlog_enable(data_dir: DataDir, origin: str, as_json: bool) -> None:
    """Enable the tree: make the checkpoint key, build the tree over the existing chain,
    and announce the key (vkey) in a server-signed chain entry."""
    show = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show:
            click.echo(f"\rbackfill: {done}/{total} entries", err=True, nl=done == total)

    async def go() -> dict[str, Any]:
        async with open_store(data_dir) as opened, opened.ledger("") as ledger:
            report = await enable_tree(opened.store, ledger, opened.signing_key(),
                                       data_dir.tlog_key_path(opened.settings), origin,
                                       clock=utcnow, progress=progress)
        return report.as_dict()

    report = run(go())
    text = (f"{'already enabled' if report['already-enabled'] else 'enabled'}: "
            f"{report['origin']}\nvkey: {report['vkey']}\ntree size: {report['size']} "
            f"({report['backfilled']} entries backfilled in {report['seconds']} s)\n"
            f"announced in entry {report['announced']}; checkpoint key in "
            f"{report['key-file']}")
    out(as_json, report, text)


@tlog.command("status")
@data_dir_option
@json_option
@handle_errors
def tlog_status(data_dir: DataDir, as_json: bool) -> None:
    """Whether the tree is enabled, its origin, vkey and size, the newest checkpoint."""

    async def go() -> dict[str, Any]:
        async with open_store(data_dir) as opened:
            store = opened.store
            tree = await store.tlog.tree("")
            head = await store.chain("").head()
            entries = 0 if head is None else head.index + 1
            if tree is None:
                return {"enabled": False, "entries": entries}
            latest = await store.tlog.latest_checkpoint(tree.instance_id)
            return {"enabled": tree.active, "status": tree.status, "origin": tree.origin,
                    "vkey": tree.vkey, "size": tree.size, "entries": entries,
                    "root": b64u_encode(tree.state().root()), "since": tree.created,
                    "announced": tree.announced,
                    "checkpoint": None if latest is None else {"size": latest.size,
                                                               "issued": latest.issued},
                    "key-file": str(data_dir.tlog_key_path(opened.settings))}

    status = run(go())
    if "origin" not in status:
        out(as_json, status, f"not enabled ({status['entries']} entries on the chain)")
        return
    lines = [f"{status['status']}: {status['origin']}", f"vkey: {status['vkey']}",
             f"tree size: {status['size']} of {status['entries']} entries",
             f"root: {status['root']}"]
    if status["checkpoint"]:
        lines.append(f"newest checkpoint: size {status['checkpoint']['size']}, issued "
                     f"{status['checkpoint']['issued']}")
    out(as_json, status, "\n".join(lines))


def _vkey(text: str) -> Ed25519Verifier:
    try:
        return Ed25519Verifier.from_vkey(text.strip())
    except ChronicleError as exc:
        raise click.BadParameter(exc.message, param_hint="--checkpoint-key") from None


def _witness_policy(vkeys: tuple[str, ...], quorum: int | None) -> WitnessPolicy | None:
    if not vkeys:
        if quorum is not None:
            raise click.UsageError("--witness-quorum needs --witness keys")
        return None
    try:
        verifiers = tuple(CosignatureVerifier.from_vkey(v.strip()) for v in vkeys)
        return WitnessPolicy(verifiers, len(verifiers) if quorum is None else quorum)
    except ChronicleError as exc:
        raise click.BadParameter(exc.message, param_hint="--witness") from None


@click.command("prove")
@click.argument("entry")
@click.option("--url", required=True, help="Server base URL, without /chronicle.")
@click.option("--server-key", required=True, help="Pinned server public key.")
@click.option("--checkpoint-key", required=True, metavar="VKEY",
              help="The tree's checkpoint key (vkey), as `tlog enable` printed it.")
@click.option("--witness", "witnesses", multiple=True, metavar="VKEY",
              help="A witness whose cosignature counts (its vkey). Repeatable.")
@click.option("--witness-quorum", type=click.IntRange(min=1), default=None,
              help="Cosignatures required of the --witness keys (default: all of them).")
@json_option
@handle_errors
def prove(entry: str, url: str, server_key: str, checkpoint_key: str,
          witnesses: tuple[str, ...], witness_quorum: int | None, as_json: bool) -> None:
    """Prove that ENTRY (a leaf index or a currhash) is in the server's signed tree.

    Fetches the checkpoint (signed by the server key and by the checkpoint key), an
    inclusion proof against it, and the entry itself; checks the proof, and that the
    entry's body, key and signature are what the proven leaf binds. With --witness, the
    checkpoint must also carry the cosignatures of that many of those witnesses: then
    the entry is in the history the witnesses saw, not just the one this server shows.
    """
    pinned = public_key(server_key, "--server-key")
    verifier = _vkey(checkpoint_key)
    policy = _witness_policy(witnesses, witness_quorum)
    base = base_url(url)
    if not (entry.isascii() and entry.isdigit()) and decode_b64_field(entry, 32) is None:
        raise click.BadParameter("a leaf index or a currhash (base64url)", param_hint="ENTRY")

    async def go() -> dict[str, Any]:
        async with ChronicleClient(base, pinned) as client:
            tree = TreeClient(client, verifier)
            signed = await tree.checkpoint()
            cosigners: tuple[str, ...] = ()
            if policy is not None:
                quorum = policy.check(signed.checkpoint,
                                      parse_note(signed.to_bytes())[1])
                if not quorum.satisfied:
                    fail(f"the checkpoint (size {signed.checkpoint.size}) is cosigned by "
                         f"{len(quorum.cosignatures)} of the {quorum.needed} witness(es) "
                         f"required ({', '.join(quorum.cosigners) or 'none'})")
                cosigners = quorum.cosigners
            proof = await tree.inclusion(entry, signed.checkpoint)
            found = [e async for e in client.lookup(b64u_encode(proof.leaf.currhash))]
            mine = [e for e in found if e.currhash == b64u_encode(proof.leaf.currhash)]
            if len(mine) != 1:
                fail("the server's lookup does not return the proven entry")
            check_entry(proof, mine[0])
            return {"ok": True, "origin": signed.checkpoint.origin, **proof.as_dict(),
                    "witnesses": list(cosigners),
                    "checkpoint": signed.to_bytes().decode("utf-8")}

    result = run(go())
    out(as_json, result,
        f"OK: entry {result['index']} (currhash {result['currhash']}) is in the tree of "
        f"{result['origin']} at size {result['tree-size']}\nroot: {result['root']}\n"
        f"created {result['created']} by {result['publickey']}; contents SHA-256 "
        f"{result['contents-sha256']}"
        + (f"\ncosigned by {', '.join(result['witnesses'])}" if result["witnesses"] else ""))
