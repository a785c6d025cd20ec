"""The ``chronicle`` command (conventions: shared spec cli.md), a module per command group.

- ``lifecycle``: init, serve, migrate, config get|set, backup, import (a data directory)
- ``clients``: client add|list|revoke, mirror add|list|remove (the ledger's lists)
- ``publish``: keygen, publish (the publisher's side, no data directory)
- ``replica``, ``crosssign``: replication and cross-signing
- ``audit``: replay a whole chain and prove it
- ``logs``: text or JSON log lines, with request ids
- ``witness``: run our own tlog witness (its own directory and database)
- ``tlog``: the Merkle tree (``tlog enable|status``, ``prove``)
- ``release``: the release ledger's operator side (``release enable|status``)
- ``digest``, ``vendor``, ``registry``: the release ledger's source tree digest, a vendor's
  and the registry's (core vendor's) commands; ``release_profile`` is what they share
- ``verify``: the verifying client for package users (``verify init|sync|review|lock|…``)
- ``common``: exit codes, the error handler, ``open_store``, shared options, output

The CLI is the top layer: it imports from anywhere in ``chronicle``; nothing imports it.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from chronicle import __version__
from chronicle.cli import logs
from chronicle.cli.common import EXIT_OK, EXIT_REFUSED, exit_with_error

__all__ = ["main"]


#: Each command and the module defining it, imported only when that command runs (or
#: ``--help`` lists them all): a command starts without loading what others need.
COMMANDS = {
    "keygen": ("publish", "keygen"), "init": ("lifecycle", "init"),
    "serve": ("lifecycle", "serve"), "migrate": ("lifecycle", "migrate"),
    "config": ("lifecycle", "config"), "client": ("clients", "client"),
    "mirror": ("clients", "mirror"), "backup": ("lifecycle", "backup"),
    "import": ("lifecycle", "import_"), "publish": ("publish", "publish"),
    "audit": ("audit", "audit"), "replica": ("replica", "replica"),
    "cross-sign": ("crosssign", "cross_sign"), "witness": ("witness", "witness"),
    "tlog": ("tlog", "tlog"), "prove": ("tlog", "prove"), "release": ("release", "release"),
    "verify": ("verify", "verify"), "digest": ("digest", "digest"),
    "vendor": ("vendor", "vendor"), "registry": ("registry", "registry"),
}


class ChronicleGroup(click.Group):
    """Click group whose own usage errors follow cli.md too: one ``error: …`` line, exit 2;
    its commands (:data:`COMMANDS`) are loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(f"chronicle.cli.{module}"), attribute)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.ClickException as exc:
            exit_with_error(exc.format_message(), exc.exit_code)
        except click.exceptions.Abort:
            exit_with_error("aborted", EXIT_REFUSED)
        sys.exit(result if isinstance(result, int) else EXIT_OK)


@click.group(cls=ChronicleGroup)
@click.version_option(__version__, prog_name="chronicle")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("--log-format", type=click.Choice(logs.FORMATS), default="text",
              envvar="CHRONICLE_LOG_FORMAT", show_default=True,
              help="Log lines as text or as JSON objects (for log collectors).")
def main(debug: bool, log_format: str) -> None:
    """Append-only, signed transparency ledger (Chronicle 1.3 compatible)."""
    # Everything chronicle creates (databases, WAL files, caches, evidence, backups, keys)
    # is its owner's alone.
    os.umask(0o077)
    logs.configure(debug=debug, fmt=log_format)

