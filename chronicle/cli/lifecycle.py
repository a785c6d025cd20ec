"""A ledger's life on one machine: ``init``, ``serve``, ``migrate``, ``config get|set``,
``backup`` and ``import`` (from PHP Chronicle). Each takes ``--data-dir``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from chronicle.backup import run_backup
from chronicle.cli.common import (
    closing,
    data_dir_option,
    handle_errors,
    init_directory,
    json_option,
    listen_options,
    out,
    run,
)
from chronicle.config import (
    DEFAULT_DB,
    SETTINGS,
    ConfigError,
    DataDir,
    Settings,
    parse_value,
    with_defaults,
)
from chronicle.importer import run_import
from chronicle.server.runner import announce_on_stderr
from chronicle.server.runner import run as run_server
from chronicle.store import open_store as store_for_url


@click.command()
@data_dir_option
@click.option("--signing-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Use this existing key file (e.g. PHP Chronicle's local/signing-secret.key).")
@click.option("--database", default=DEFAULT_DB, show_default=True, help="Database URL.")
@json_option
@handle_errors
def init(data_dir: DataDir, signing_key: Path | None, database: str, as_json: bool) -> None:
    """Create a data directory: settings, signing key and an empty database."""
    raw = with_defaults({"database": database})

    async def create() -> None:
        async with closing(store_for_url(database, data_dir.path)) as store:
            await store.create_schema()
            await store.ensure_instance("")

    key = init_directory(data_dir, "ledger", signing_key, raw, create)
    out(as_json, {"public-key": key.public_b64}, key.public_b64)


@click.command()
@data_dir_option
@listen_options(8080)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes sharing the port (appends stay strictly ordered).")
@click.option("--json", "as_json", is_flag=True,
              help="Once listening, print one JSON object: url, workers, public-key.")
@handle_errors
def serve(data_dir: DataDir, host: str, port: int, workers: int, as_json: bool) -> None:
    """Serve the ledger over HTTP until SIGTERM (drains, then exits 0).

    Prints `listening on URL` on stderr once connections are accepted.
    """
    public = data_dir.signing_key(data_dir.settings()).public_b64

    def announce(url: str, count: int) -> None:
        announce_on_stderr(url, count)
        if as_json:
            click.echo(json.dumps({"url": url, "workers": count, "public-key": public}))

    run_server(data_dir.path, host, port, workers=workers, announce=announce)


@click.command()
@data_dir_option
@click.option("--database", default=None, metavar="URL",
              help="Connect with this URL instead, e.g. as the role owning the tables "
                   "when `serve` runs as one that may not change them.")
@json_option
@handle_errors
def migrate(data_dir: DataDir, database: str | None, as_json: bool) -> None:
    """Upgrade the database schema to this version of chronicle."""
    url = data_dir.settings().database
    if database is not None:
        try:
            url = Settings.from_mapping({"database": database}).database
        except ConfigError as exc:
            raise click.BadParameter(exc.message, param_hint="--database") from None

    async def go() -> tuple[int, int]:
        async with closing(store_for_url(url, data_dir.path)) as store:
            return await store.migrate()

    before, after = run(go())
    out(as_json, {"schema-version": after, "was": before, "upgraded": before != after},
        f"schema version {after}" + (f" (upgraded from {before})" if before != after
                                     else " (already up to date)"))


@click.group()
def config() -> None:
    """Read or change settings (applied at the next start of `serve`)."""


def _known_setting(key: str) -> None:
    if key not in SETTINGS:
        raise click.BadParameter(f"unknown setting {key!r}", param_hint="KEY")


@config.command("get")
@data_dir_option
@click.argument("key", required=False)
@json_option
@handle_errors
def config_get(data_dir: DataDir, key: str | None, as_json: bool) -> None:
    """Print one setting (KEY), or all of them; defaults included.

    A string prints bare, anything else as JSON: `config set KEY` reads it back as printed.
    """
    values = with_defaults(data_dir.read_raw())
    if key is None:
        out(as_json, values, "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items()))
        return
    _known_setting(key)
    out(as_json, {key: values[key]},
        values[key] if isinstance(values[key], str) else json.dumps(values[key]))


@config.command("set")
@data_dir_option
@click.argument("key")
@click.argument("value")
@json_option
@handle_errors
def config_set(data_dir: DataDir, key: str, value: str, as_json: bool) -> None:
    """Set KEY to VALUE in chronicle.toml, checked as `serve` will read it.

    VALUE is a number (sizes in bytes), a duration ("30 seconds", "7 days"), true/false, a
    string, or names (`instances`: a,b or a JSON list), as `config get` prints it. Applied
    at the next start of `serve`.
    """
    raw = data_dir.read_raw()
    _known_setting(key)
    try:
        raw[key] = parse_value(key, value)
        data_dir.write_raw(raw)
    except ConfigError as exc:
        raise click.BadParameter(exc.message, param_hint="VALUE") from None
    out(as_json, {key: raw[key]}, f"{key} = {json.dumps(raw[key])}")


@click.command()
@data_dir_option
@click.argument("target", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
@json_option
@handle_errors
def backup(data_dir: DataDir, target: Path, as_json: bool) -> None:
    """Write a consistent, verified snapshot of a SQLite ledger to OUT (works while serving).

    OUT becomes a complete data directory (settings, signing key, database): restore by
    serving it, or by copying it back in place of DIR.
    """
    report = run(run_backup(data_dir, target))
    text = "\n".join(f"{name or '(default)'}: {info['entries']} entries, summaryhash "
                     f"{info['summaryhash']}" for name, info in report.chains.items())
    out(as_json, report.as_dict(), f"backup written to {target}\n{text}")


@click.command("import")
@data_dir_option
@click.argument("source")
@json_option
@handle_errors
def import_(data_dir: DataDir, source: str, as_json: bool) -> None:
    """Import a PHP Chronicle 1.3 chain, verifying every entry.

    SOURCE: a PHP Chronicle SQLite database file, a postgresql:// DSN of its database, or
    an export document (*.json). Clients, mirrors and instances come along from a
    database. On the first fault nothing of that chain is stored and the entry's index is
    reported (exit 1).
    """
    report = run(run_import(data_dir, source))
    text = "\n".join(
        f"{c.instance or '(default)'}: {c.entries} entries, {c.clients} clients, "
        f"{c.mirrors} mirrors; head summaryhash {c.head}" for c in report.chains)
    out(as_json, report.as_dict(), text)
