"""The release ledger's operator side (docs/release.md): ``release enable|status`` on a
data directory. The vendors' and the registry's tools are ``chronicle vendor`` and
``chronicle registry``.

``release enable`` works while ``serve`` runs on the same directory: the gate reads the
chain's release row inside every batch's transaction.
"""

from __future__ import annotations

from typing import Any

import click

from chronicle.cli.common import (
    data_dir_option,
    handle_errors,
    instance_option,
    json_option,
    open_store,
    out,
    run,
)
from chronicle.config import DataDir
from chronicle.core.encoding import decode_b64_field, utcnow
from chronicle.release.messages import MAX_NAME_CHARS, valid_vendor
from chronicle.releaselog import enable as enable_release
from chronicle.releaselog import status as release_status


def _core_vendor(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not valid_vendor(value):
        raise click.BadParameter(
            f"{value!r} is not a Composer vendor name (lowercase letters and digits, "
            f"words joined by one of . _ -, at most {MAX_NAME_CHARS} characters)")
    return value


def _core_key(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if decode_b64_field(value, 32) is None:
        raise click.BadParameter("not an Ed25519 public key (32 bytes, base64url with "
                                 "padding: 44 characters)")
    return value


@click.group("release")
def release() -> None:
    """The release ledger: vendors' keys and signed releases, judged at publish."""


@release.command("enable")
@data_dir_option
@click.option("--core-vendor", required=True, callback=_core_vendor, metavar="NAME",
              help="The registry's vendor name (the core vendor): it vouches for every "
                   "other vendor's first key.")
@click.option("--core-key", required=True, callback=_core_key, metavar="PK",
              help="The core vendor's first (full) Ed25519 public key, base64url.")
@instance_option
@json_option
@handle_errors
def release_enable(data_dir: DataDir, core_vendor: str, core_key: str, instance: str,
                   as_json: bool) -> None:
    """Turn the chain into a release ledger: from now on every publish is judged by the
    release rules, and a server-signed entry names the core vendor and its first key (a
    verifier bootstraps from the pinned server key alone). Once only."""

    async def go() -> dict[str, Any]:
        async with open_store(data_dir) as opened:
            opened.require_instance(instance)
            async with opened.ledger(instance) as ledger:
                report = await enable_release(opened.store, ledger, opened.signing_key(),
                                              core_vendor, core_key, clock=utcnow)
        return report.as_dict()

    report = run(go())
    out(as_json, report,
        f"enabled: core vendor {report['core-vendor']}, core key {report['core-key']}\n"
        f"enable entry {report['index']} (currhash {report['currhash']}); "
        f"{report['history']} earlier entries checked")


@release.command("status")
@data_dir_option
@instance_option
@json_option
@handle_errors
def release_status_command(data_dir: DataDir, instance: str, as_json: bool) -> None:
    """Whether the chain is a release ledger, its core vendor, and what its state holds."""

    async def go() -> dict[str, Any]:
        async with open_store(data_dir) as opened:
            opened.require_instance(instance)
            return await release_status(opened.store, instance)

    status = run(go())
    if not status["enabled"]:
        out(as_json, status, "not a release ledger" if "prepared" not in status else
            "enabling was interrupted: run `chronicle release enable` again")
        return
    out(as_json, status,
        f"release ledger since entry {status['at']['index']}: core vendor "
        f"{status['core-vendor']} ({status['core-key']})\n"
        f"{status['vendors']} vendors, {status['keys']} keys, {status['updates']} updates, "
        f"{status['attestations']} attestations")
