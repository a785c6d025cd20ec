"""The ``chronicle`` command (conventions: shared spec cli.md).

Exit codes: 0 success; 1 verification failed or request refused; 2 usage error;
3 transport or I/O error. Errors are one ``error: …`` line on stderr (``--debug`` for a
traceback); ``--json`` prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from chronicle import __version__, admin
from chronicle.cliutil import (
    EXIT_IO,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    handle_errors,
)
from chronicle.cliutil import (
    data_dir_option as _data_dir_option,
)
from chronicle.cliutil import (
    fail as _fail,
)
from chronicle.cliutil import (
    instance_option as _instance_option,
)
from chronicle.cliutil import (
    out as _out,
)
from chronicle.cliutil import (
    public_key as _public_key,
)
from chronicle.cliutil import (
    run as _run,
)
from chronicle.config import (
    DEFAULT_DB,
    KEY_FILE,
    SETTINGS,
    ConfigError,
    DataDir,
    parse_value,
    write_secret_file,
)
from chronicle.core.encoding import atom, b64u_encode, utcnow
from chronicle.core.errors import (
    ChronicleError,
    IntegrityError,
)
from chronicle.core.protocol import valid_client_id
from chronicle.core.sapient import SigningKey
from chronicle.ledger import Ledger
from chronicle.store import Mirror, Store, open_store


class ChronicleGroup(click.Group):
    """Click group whose own usage errors follow cli.md too: one ``error: …`` line, exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(EXIT_REFUSED)
        sys.exit(result if isinstance(result, int) else EXIT_OK)


@click.group(cls=ChronicleGroup)
@click.version_option(__version__, prog_name="chronicle")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def main(debug: bool) -> None:
    """Append-only, signed transparency ledger (Chronicle 1.3 compatible)."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- keys -------------------------------------------------------------------------------

@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the secret key file (mode 0600) and print the public key.")
@handle_errors
def keygen(as_json: bool, out: Path | None) -> None:
    """Create an Ed25519 key pair (secret key in PHP Chronicle's key-file format)."""
    key = SigningKey.generate()
    if out is not None:
        try:
            write_secret_file(out, key.to_text())
        except FileExistsError:
            _fail(f"{out} already exists", EXIT_IO)
        _out(as_json, {"public-key": key.public_b64}, key.public_b64)
        return
    _out(as_json, {"secret-key": key.to_text(), "public-key": key.public_b64},
         f"secret-key: {key.to_text()}\npublic-key: {key.public_b64}")


# --- server lifecycle ----------------------------------------------------------------------

async def _open(data_dir: DataDir) -> tuple[Store, Any]:
    settings = data_dir.settings()
    store = open_store(settings.database, data_dir.path)
    await store.open()
    return store, settings


@main.command()
@_data_dir_option
@click.option("--signing-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Use this existing key file (e.g. PHP Chronicle's local/signing-secret.key).")
@click.option("--database", default=DEFAULT_DB, show_default=True, help="Database URL.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def init(data_dir: Path, signing_key: Path | None, database: str, as_json: bool) -> None:
    """Create a data directory: settings, signing key and an empty database."""
    dd = DataDir(data_dir)
    if dd.exists():
        _fail(f"{data_dir} already holds a ledger", EXIT_REFUSED)
    if signing_key is not None:
        try:
            key = SigningKey.from_text(signing_key.read_text())
        except ChronicleError as exc:
            _fail(f"{signing_key}: {exc.message}", EXIT_REFUSED)
    else:
        key = SigningKey.generate()
    data_dir.mkdir(parents=True, exist_ok=True)
    key_path = data_dir / KEY_FILE
    if key_path.exists():
        _fail(f"{key_path} already exists", EXIT_REFUSED)
    if database.startswith("sqlite:"):
        db_path = Path(database[len("sqlite:"):])
        if not db_path.is_absolute():
            db_path = data_dir / db_path
        if db_path.exists():  # e.g. an interrupted init: refuse rather than guess
            _fail(f"{db_path} already exists", EXIT_REFUSED)
    settings = {k: default for k, (default, _) in SETTINGS.items()}
    settings["database"] = database

    async def create() -> None:
        store = open_store(database, data_dir)
        try:
            await store.create_schema()
            await store.ensure_instance("")
        finally:
            await store.close()

    _run(create())
    write_secret_file(key_path, key.to_text())
    dd.write_raw(settings)
    _out(as_json, {"public-key": key.public_b64}, key.public_b64)


@main.command()
@_data_dir_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes sharing the port (appends stay strictly ordered).")
@handle_errors
def serve(data_dir: Path, host: str, port: int, workers: int) -> None:
    """Serve the ledger over HTTP until SIGTERM (drains, then exits 0)."""
    from chronicle.server.runner import run

    run(data_dir, host, port, workers=workers)


@main.command()
@_data_dir_option
@handle_errors
def migrate(data_dir: Path) -> None:
    """Upgrade the database schema to this version of chronicle."""
    dd = DataDir(data_dir)
    settings = dd.settings()

    async def go() -> tuple[int, int]:
        store = open_store(settings.database, dd.path)
        try:
            return await store.migrate()
        finally:
            await store.close()

    before, after = _run(go())
    click.echo(f"schema version {after}" + (f" (upgraded from {before})" if before != after
                                            else " (already up to date)"))


@main.group()
def config() -> None:
    """Read or change settings (applied at the next start of `serve`)."""


@config.command("get")
@_data_dir_option
@click.argument("key", required=False)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def config_get(data_dir: Path, key: str | None, as_json: bool) -> None:
    raw = DataDir(data_dir).read_raw()
    values = {k: raw.get(k, default) for k, (default, _) in SETTINGS.items()}
    if key is None:
        _out(as_json, values, "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items()))
        return
    if key not in SETTINGS:
        raise click.BadParameter(f"unknown setting {key!r}", param_hint="KEY")
    _out(as_json, {key: values[key]},
         values[key] if isinstance(values[key], str) else json.dumps(values[key]))


@config.command("set")
@_data_dir_option
@click.argument("key")
@click.argument("value")
@handle_errors
def config_set(data_dir: Path, key: str, value: str) -> None:
    dd = DataDir(data_dir)
    raw = dd.read_raw()
    if key not in SETTINGS:
        raise click.BadParameter(f"unknown setting {key!r}", param_hint="KEY")
    try:
        raw[key] = parse_value(key, value)
        dd.write_raw(raw)
    except ConfigError as exc:
        raise click.BadParameter(exc.message, param_hint="VALUE") from None


# --- clients ---------------------------------------------------------------------------------

@main.group()
def client() -> None:
    """Manage the clients allowed to publish (works while `serve` runs)."""


@client.command("add")
@_data_dir_option
@click.option("--public-key", "public_key", required=True, help="Client's Ed25519 public key.")
@click.option("--admin", "is_admin", is_flag=True, help="May register and revoke clients.")
@click.option("--comment", default=None)
@click.option("--client-id", default=None, help="Use this id instead of a random one.")
@_instance_option
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def client_add(data_dir: Path, public_key: str, is_admin: bool, comment: str | None,
               client_id: str | None, instance: str, as_json: bool) -> None:
    pk = _public_key(public_key)
    if client_id is not None and not valid_client_id(client_id):
        raise click.BadParameter("1 to 128 characters of base64url ([A-Za-z0-9_=-])",
                                 param_hint="--client-id")
    dd = DataDir(data_dir)

    async def go() -> str:
        store, settings = await _open(dd)
        try:
            if instance not in settings.instances:
                _fail(f"unknown instance {instance!r}", EXIT_REFUSED)
            await store.ensure_instance(instance)
            key = dd.signing_key(settings)
            cid = client_id or admin.new_client_id()
            if await store.clients.get(instance, cid) is not None:
                _fail(f"client id {cid} is already in use", EXIT_REFUSED)
            ledger = Ledger(store, instance)
            try:
                await admin.register_client(store, ledger, key, publickey=pk, is_admin=is_admin,
                                            comment=comment, client_id=cid, now=utcnow(),
                                            publish=settings.publish_new_clients)
            finally:
                await ledger.stop()
            return cid
        finally:
            await store.close()

    cid = _run(go())
    _out(as_json, {"client-id": cid}, cid)


@client.command("list")
@_data_dir_option
@_instance_option
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked clients.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def client_list(data_dir: Path, instance: str, include_revoked: bool, as_json: bool) -> None:
    async def go() -> list[dict[str, Any]]:
        store, _ = await _open(DataDir(data_dir))
        try:
            clients = await store.clients.all(instance, include_revoked=include_revoked)
        finally:
            await store.close()
        return [{"client-id": c.publicid, "public-key": b64u_encode(c.publickey),
                 "admin": c.is_admin, "comment": c.comment, "created": c.created,
                 "revoked": c.revoked} for c in clients]

    rows = _run(go())
    text = "\n".join(
        f"{r['client-id']}  {r['public-key']}  {'admin' if r['admin'] else 'client'}"
        + (f"  revoked {r['revoked']}" if r["revoked"] else "")
        + (f"  {r['comment']}" if r["comment"] else "") for r in rows)
    _out(as_json, {"clients": rows}, text or "(no clients)")


@client.command("revoke")
@_data_dir_option
@click.option("--client-id", required=True)
@_instance_option
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def client_revoke(data_dir: Path, client_id: str, instance: str, as_json: bool) -> None:
    dd = DataDir(data_dir)

    async def go() -> None:
        store, settings = await _open(dd)
        try:
            found = await store.clients.get(instance, client_id)
            if found is None:
                _fail(f"no active client {client_id}", EXIT_REFUSED)
            ledger = Ledger(store, instance)
            try:
                await admin.revoke_client(store, ledger, dd.signing_key(settings), client=found,
                                          now=utcnow(), publish=settings.publish_revoked_clients)
            finally:
                await ledger.stop()
        finally:
            await store.close()

    _run(go())
    _out(as_json, {"client-id": client_id, "revoked": True}, f"revoked {client_id}")


# --- mirrors ---------------------------------------------------------------------------------

@main.group()
def mirror() -> None:
    """Manage the public list of mirrors (GET /chronicle/mirrors)."""


@mirror.command("add")
@_data_dir_option
@click.option("--url", required=True)
@click.option("--public-key", "public_key", required=True)
@click.option("--comment", default=None)
@click.option("--sort", "sortpriority", default=0, type=int, help="Lower sorts first.")
@_instance_option
@handle_errors
def mirror_add(data_dir: Path, url: str, public_key: str, comment: str | None,
               sortpriority: int, instance: str) -> None:
    _public_key(public_key)

    async def go() -> None:
        store, _ = await _open(DataDir(data_dir))
        try:
            await store.mirrors.add(instance, Mirror(url, public_key.strip(), comment,
                                                    sortpriority), atom(utcnow()))
        finally:
            await store.close()

    _run(go())
    click.echo(f"mirror {url} added")


@mirror.command("list")
@_data_dir_option
@_instance_option
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def mirror_list(data_dir: Path, instance: str, as_json: bool) -> None:
    async def go() -> list[Mirror]:
        store, _ = await _open(DataDir(data_dir))
        try:
            return await store.mirrors.all(instance)
        finally:
            await store.close()

    rows = _run(go())
    payload = [{"url": m.url, "publickey": m.publickey, "comment": m.comment,
                "sort": m.sortpriority} for m in rows]
    _out(as_json, {"mirrors": payload},
         "\n".join(f"{m.url}  {m.publickey}  {m.comment or ''}".rstrip() for m in rows)
         or "(no mirrors)")


@mirror.command("remove")
@_data_dir_option
@click.option("--url", required=True)
@_instance_option
@handle_errors
def mirror_remove(data_dir: Path, url: str, instance: str) -> None:
    async def go() -> bool:
        store, _ = await _open(DataDir(data_dir))
        try:
            return await store.mirrors.remove(instance, url)
        finally:
            await store.close()

    if not _run(go()):
        _fail(f"no mirror {url}", EXIT_REFUSED)
    click.echo(f"mirror {url} removed")


@main.command()
@_data_dir_option
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def backup(data_dir: Path, out: Path, as_json: bool) -> None:
    """Write a consistent, verified snapshot of a SQLite ledger to OUT (works while serving).

    OUT becomes a complete data directory (settings, signing key, database): restore by
    serving it, or by copying it back in place of DIR.
    """
    from chronicle.backup import run_backup

    report = _run(run_backup(DataDir(data_dir), out))
    text = "\n".join(f"{name or '(default)'}: {info['entries']} entries, summaryhash "
                     f"{info['summaryhash']}" for name, info in report.chains.items())
    _out(as_json, report.as_dict(), f"backup written to {out}\n{text}")


# --- migration from PHP Chronicle ------------------------------------------------------------

@main.command("import")
@_data_dir_option
@click.argument("source")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def import_(data_dir: Path, source: str, as_json: bool) -> None:
    """Import a PHP Chronicle 1.3 chain, verifying every entry.

    SOURCE: a PHP Chronicle SQLite database file, a postgresql:// DSN of its database, or
    an export document (*.json). Clients, mirrors and instances come along from a
    database. On the first fault nothing of that chain is stored and the entry's index is
    reported (exit 1).
    """
    from chronicle.importer import run_import

    report = _run(run_import(DataDir(data_dir), source))
    text = "\n".join(
        f"{c.instance or '(default)'}: {c.entries} entries, {c.clients} clients, "
        f"{c.mirrors} mirrors; head summaryhash {c.head}" for c in report.chains)
    _out(as_json, report.as_dict(), text)


# --- publishing --------------------------------------------------------------------------------

@main.command()
@click.option("--url", required=True, help="Server base URL, without /chronicle.")
@click.option("--client-id", required=True)
@click.option("--secret-key-file", required=True,
              type=click.Path(dir_okay=False, path_type=Path))
@click.option("--server-key", required=True, help="Pinned server public key.")
@_instance_option
@click.option("--json", "as_json", is_flag=True)
@click.argument("body", required=False)
@handle_errors
def publish(url: str, client_id: str, secret_key_file: Path, server_key: str, instance: str,
            as_json: bool, body: str | None) -> None:
    """Publish BODY (or stdin with `-`, as exact bytes) and print the verified receipt."""
    from chronicle.client import ChronicleClient

    pinned = _public_key(server_key, "--server-key")
    if body is None:
        raise click.UsageError("give BODY, or - to read stdin")
    data = sys.stdin.buffer.read() if body == "-" else body.encode("utf-8")
    try:
        key = SigningKey.from_text(secret_key_file.read_text())
    except ChronicleError as exc:
        _fail(f"{secret_key_file}: {exc.message}", EXIT_USAGE)

    async def go() -> dict[str, str]:
        async with ChronicleClient(url, pinned, instance=instance, client_id=client_id,
                                   key=key) as api:
            return (await api.publish(data)).as_dict()

    try:
        receipt = _run(go())
    except IntegrityError as exc:
        _fail(f"verification failed: {exc.diagnostics()}", EXIT_REFUSED)
    _out(as_json, receipt, "\n".join(f"{k}: {v}" for k, v in receipt.items()))


from chronicle.audit.command import audit as _audit_command  # noqa: E402, I001
main.add_command(_audit_command)
from chronicle.replication.commands import replica as _replica_command  # noqa: E402, I001
from chronicle.replication.commands import cross_sign as _cross_sign_command  # noqa: E402
main.add_command(_replica_command)
main.add_command(_cross_sign_command)
if __name__ == "__main__":  # pragma: no cover
    main()
