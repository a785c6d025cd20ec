"""Migration from PHP Chronicle 1.3: import its database, or an export document, verified.

Sources:

- a PHP Chronicle SQLite database file (``local/chronicle.db``);
- a PostgreSQL DSN of a PHP Chronicle database (``postgresql://…``); MySQL DSNs are
  recognised and refused with a clear message unless a driver is installed (none is
  bundled);
- an export document (``GET /chronicle/export`` saved to a file; parsed incrementally).

Every entry is verified while importing: its Ed25519 signature, the link to the previous
entry, the currhash, the summaryhash and, when the source stores it, the 384-byte hash
state. The first fault stops the import with the entry's index (0-based) and PHP row id,
and nothing is stored: each chain is imported in one transaction through
:meth:`chronicle.ledger.Ledger.import_chain`. Clients and mirrors come along (a database
source); an export carries neither. PHP instances (tables ``chronicle_<prefix>_chain``)
become chains of the same name.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chronicle.config import DataDir
from chronicle.core.blakechain import ChainBuilder, Entry
from chronicle.core.document import DocumentParser
from chronicle.core.encoding import atom, b64u_decode, b64u_encode, utcnow
from chronicle.core.errors import (
    ChronicleError,
    EncodingError,
    IntegrityError,
    RequestError,
    StorageError,
)
from chronicle.core.sapient import verify
from chronicle.ledger import Ledger
from chronicle.store import Client, Mirror, open_store

PAGE = 2000
_PREFIX_RE = re.compile(r"^chronicle_(?:([A-Za-z0-9_-]+)_)?chain$")


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One chain row as the source stores it (text fields, as PHP does)."""

    rowid: int | None
    contents: str
    prevhash: str | None
    currhash: str
    summaryhash: str
    hashstate: str | None
    publickey: str
    signature: str
    created: str


@dataclass
class ImportedChain:
    instance: str
    entries: int
    clients: int
    mirrors: int
    head: str | None


@dataclass
class ImportReport:
    source: str
    chains: list[ImportedChain] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "chains": [
            {"instance": c.instance, "entries": c.entries, "clients": c.clients,
             "mirrors": c.mirrors, "summaryhash": c.head} for c in self.chains]}


class Source:
    """Where a PHP Chronicle's data comes from."""

    name: str

    async def instances(self) -> list[str]:
        raise NotImplementedError

    async def clients(self, instance: str) -> list[Client]:
        return []

    async def mirrors(self, instance: str) -> list[Mirror]:
        return []

    def rows(self, instance: str) -> AsyncIterator[list[SourceRow]]:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def _table(instance: str, name: str) -> str:
    return f"chronicle_{instance}_{name}" if instance else f"chronicle_{name}"


def _instances(source: str, tables: set[str]) -> list[str]:
    """PHP instance prefixes ("" for the default chain) from the chain tables present.

    An instance has a chain *and* a clients table; that tells instance ``p``'s replica
    chain (``chronicle_p_replication_chain``, no clients table) from an instance.
    """
    found = []
    for table in tables:
        match = _PREFIX_RE.match(table)
        prefix = match.group(1) or "" if match else None
        if prefix is not None and _table(prefix, "clients") in tables:
            found.append(prefix)
    if not found:
        raise StorageError(f"{source} holds no chronicle_chain table")
    return sorted(found)


def _client_row(row: Sequence[Any]) -> Client:
    """``publicid, publickey, isAdmin, comment, created`` of a PHP clients row."""
    try:
        key = b64u_decode(str(row[1]), 32, what="client public key")
    except EncodingError as exc:
        raise IntegrityError(f"client {row[0]}: {exc.message}", field="publickey") from None
    return Client(publicid=str(row[0]), publickey=key, is_admin=bool(row[2]),
                  comment=row[3], created=str(row[4] or ""))


class DatabaseSource(Source):
    """A PHP Chronicle database: its tables, read the same way whatever the driver.

    A driver says which tables there are, runs a query, and spells the three queries in
    its SQL dialect, parameters in its own markers. ``{table}`` is filled in with a name
    built from an instance prefix that :func:`_instances` found among the database's own
    tables, never with outside input. The chain is read in keyset pages by PHP row id.
    """

    CLIENTS_SQL: str
    MIRRORS_SQL = "SELECT url, publickey, comment, sortpriority FROM {table} ORDER BY id"
    CHAIN_PAGE_SQL: str
    """Chain rows after a row id (first parameter), at most a page (second), by id."""

    async def _tables(self) -> set[str]:
        raise NotImplementedError

    async def _query(self, sql: str, *args: object) -> Sequence[Sequence[Any]]:
        raise NotImplementedError

    async def instances(self) -> list[str]:
        return _instances(self.name, await self._tables())

    async def _table_rows(self, instance: str, name: str, sql: str
                          ) -> Sequence[Sequence[Any]]:
        """All rows of an instance's table (none if the table is absent), by id."""
        table = _table(instance, name)
        if table not in await self._tables():
            return []
        return await self._query(sql.format(table=table))

    async def clients(self, instance: str) -> list[Client]:
        return [_client_row(r)
                for r in await self._table_rows(instance, "clients", self.CLIENTS_SQL)]

    async def mirrors(self, instance: str) -> list[Mirror]:
        return [Mirror(url=r[0], publickey=r[1], comment=r[2], sortpriority=int(r[3] or 0))
                for r in await self._table_rows(instance, "mirrors", self.MIRRORS_SQL)]

    async def rows(self, instance: str) -> AsyncIterator[list[SourceRow]]:
        sql = self.CHAIN_PAGE_SQL.format(table=_table(instance, "chain"))
        last = -1
        while page := await self._query(sql, last, PAGE):
            yield [SourceRow(int(r[0]), _text(r[1]), r[2], r[3], r[4], r[5], r[6], r[7],
                             str(r[8])) for r in page]
            last = int(page[-1][0])


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


class SqliteSource(DatabaseSource):
    """A PHP Chronicle SQLite database, opened read-only."""

    CLIENTS_SQL = "SELECT publicid, publickey, isAdmin, comment, created FROM {table} ORDER BY id"
    CHAIN_PAGE_SQL = ("SELECT id, data, prevhash, currhash, summaryhash, hashstate, publickey, "
                      "signature, created FROM {table} WHERE id > ? ORDER BY id LIMIT ?")

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        if not path.is_file():
            raise StorageError(f"{path}: no such file")
        try:
            self._conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
            self._table_names = {r[0] for r in self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            raise StorageError(f"{path}: not a readable SQLite database ({exc})") from exc

    async def _tables(self) -> set[str]:
        return self._table_names

    async def _query(self, sql: str, *args: object) -> Sequence[Sequence[Any]]:
        return self._conn.execute(sql, args).fetchall()

    async def close(self) -> None:
        self._conn.close()


class PostgresSource(DatabaseSource):
    """A PHP Chronicle PostgreSQL database (read only)."""

    CLIENTS_SQL = ('SELECT publicid, publickey, "isAdmin"::int, comment, created::text '
                   "FROM {table} ORDER BY id")
    CHAIN_PAGE_SQL = ("SELECT id, data, prevhash, currhash, summaryhash, hashstate, publickey, "
                      "signature, created::text FROM {table} WHERE id > $1 ORDER BY id "
                      "LIMIT $2")

    def __init__(self, dsn: str) -> None:
        self.name = dsn.split("@")[-1]
        self._dsn = dsn
        self._conn: Any = None

    async def _c(self) -> Any:
        if self._conn is None:
            import asyncpg

            from chronicle.store.postgres import split_url

            dsn, schema = split_url(self._dsn)
            settings = {"search_path": schema} if schema else {}
            try:
                self._conn = await asyncpg.connect(dsn, server_settings=settings)
            except (OSError, asyncpg.PostgresError) as exc:
                raise StorageError(f"cannot connect to {self.name}: {exc}") from exc
        return self._conn

    async def _tables(self) -> set[str]:
        rows = await self._query("SELECT table_name FROM information_schema.tables "
                                 "WHERE table_schema = ANY(current_schemas(false))")
        return {r[0] for r in rows}

    async def _query(self, sql: str, *args: object) -> Sequence[Sequence[Any]]:
        conn = await self._c()
        rows: Sequence[Sequence[Any]] = await conn.fetch(sql, *args)
        return rows

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


class ExportSource(Source):
    """An export document (unpaginated ``/chronicle/export`` body) in a file."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        if not path.is_file():
            raise StorageError(f"{path}: no such file")
        self._path = path

    async def instances(self) -> list[str]:
        return [""]

    async def rows(self, instance: str) -> AsyncIterator[list[SourceRow]]:
        parser = DocumentParser()
        with self._path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                rows = parser.feed(chunk)
                if rows:
                    yield [_export_row(r) for r in rows]
            rows = parser.close()
        if rows:
            yield [_export_row(r) for r in rows]
        if parser.header.get("status") != "OK" or not parser.results_is_list:
            raise IntegrityError(f"{self.name} is not a successful export document")
        total = parser.header.get("total")
        if total is not None and total != parser.rows_seen:
            raise IntegrityError(f"export says total {total} but holds {parser.rows_seen} "
                                 "entries", field="total", expected=str(total),
                                 found=str(parser.rows_seen))


def _export_row(row: Any) -> SourceRow:
    if not isinstance(row, dict):
        raise IntegrityError("export entry is not an object")
    try:
        return SourceRow(None, row["contents"], row.get("prev"), row["hash"], row["summary"],
                         None, row["publickey"], row["signature"], row["created"])
    except KeyError as exc:
        raise IntegrityError(f"export entry lacks {exc.args[0]}", field=str(exc.args[0])) \
            from None


def open_source(spec: str) -> Source:
    """Pick the source from its spelling: a DSN, a ``.json`` document, or a SQLite file."""
    if spec.startswith(("postgresql://", "postgres://")):
        return PostgresSource(spec)
    if spec.startswith(("mysql://", "mysql:")):
        raise StorageError("MySQL sources need a MySQL driver, which chronicle does not "
                           "bundle; dump the tables to SQLite or export the chain instead")
    path = Path(spec)
    if path.suffix.lower() == ".json":
        return ExportSource(path)
    return SqliteSource(path)


class RowVerifier:
    """Recompute each source row from its signed parts and compare every stored field."""

    def __init__(self) -> None:
        self.builder = ChainBuilder(None)

    def entry(self, row: SourceRow) -> Entry:
        index = self.builder.next_index
        where = f" (PHP row id {row.rowid})" if row.rowid is not None else ""

        def fault(message: str, field_name: str, expected: str | None,
                  found: str | None) -> IntegrityError:
            return IntegrityError(message + where, index=index, field=field_name,
                                  expected=expected, found=found)

        try:
            publickey = b64u_decode(row.publickey, 32, what="publickey")
            signature = b64u_decode(row.signature, 64, what="signature")
        except EncodingError as exc:
            raise fault(exc.message, "publickey/signature", None, None) from None
        try:
            contents = row.contents.encode("utf-8")
        except UnicodeEncodeError:
            raise fault("contents are not valid UTF-8", "contents", None, None) from None
        if not verify(publickey, contents, signature):
            raise fault("entry signature does not verify", "signature",
                        "valid Ed25519 signature", row.signature)
        expected_prev = self.builder.prevhash
        prev_text = None if expected_prev is None else b64u_encode(expected_prev)
        found_prev = row.prevhash or None  # PHP replicas store "" for the first entry
        if found_prev != prev_text:
            raise fault("entry does not link to the previous entry", "prevhash", prev_text,
                        row.prevhash)
        entry = self.builder.append(contents, publickey, signature, row.created)
        checks = [("currhash", entry.currhash, row.currhash),
                  ("summaryhash", entry.summaryhash, row.summaryhash)]
        if row.hashstate is not None:
            checks.append(("hashstate", entry.hashstate, row.hashstate))
        for name, computed, stored in checks:
            if b64u_encode(computed) != stored:
                raise fault(f"{name} does not match", name, b64u_encode(computed), stored)
        return entry


async def verified_batches(source: Source, instance: str) -> AsyncIterator[list[Entry]]:
    verifier = RowVerifier()
    async for page in source.rows(instance):
        yield [verifier.entry(row) for row in page]


async def run_import(data_dir: DataDir, spec: str) -> ImportReport:
    """Import ``spec`` into the ledger at ``data_dir`` (each chain must be empty there)."""
    source = open_source(spec)
    settings = data_dir.settings()
    store = open_store(settings.database, data_dir.path)
    report = ImportReport(source=source.name)
    try:
        await store.open()
        instances = await source.instances()
        for instance in instances:
            await store.ensure_instance(instance)
            if await store.chain(instance).head() is not None:
                raise RequestError(f"chain {instance or '(default)'} is not empty; "
                                   "import into a fresh data directory", status=409)
        for instance in instances:
            clients = await source.clients(instance)
            ledger = Ledger(store, instance, max_batch=settings.max_batch,
                            max_queue=settings.max_queue)
            count = await ledger.import_chain(
                verified_batches(source, instance), clients)
            mirrors = await source.mirrors(instance)
            for mirror in mirrors:
                await store.mirrors.add(instance, mirror, atom(utcnow()))
            head = await store.chain(instance).head()
            report.chains.append(ImportedChain(
                instance, count, len(clients), len(mirrors),
                None if head is None else b64u_encode(head.summaryhash)))
            if instance and instance not in settings.instances:
                # Right away: a later chain's failure must not hide this one from serve.
                raw = data_dir.read_raw()
                raw["instances"] = sorted({*raw.get("instances", []), instance})
                data_dir.write_raw(raw)
    finally:
        await source.close()
        await store.close()
    return report


__all__ = ["ChronicleError", "DatabaseSource", "ExportSource", "ImportReport", "PostgresSource",
           "SqliteSource", "open_source", "run_import", "verified_batches"]
