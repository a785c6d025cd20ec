"""The schemas, once for both backends, and their versioned migrations.

Each migration is DDL with type tokens (``{serial}``, ``{bigserial}``, ``{bigint}``,
``{blob}``, ``{bool}``, ``{false}``, and ``{without_rowid}`` after a table whose primary
key is all it is looked up by) that a driver's :class:`Dialect` fills in, so SQLite
and PostgreSQL get the same tables from one text (``{chain_row}``: the hashed fields every
chain table holds). A :class:`Schema` is one such numbered series: :data:`LEDGER` (a
ledger's database) and :data:`WITNESS` (``chronicle witness``'s own database). Each keeps
its version in its own row of the ``meta`` table (``schema_version``,
``witness_schema_version``), so both may even share one PostgreSQL schema; a store refuses
to open a database at another version (``chronicle migrate`` upgrades an older ledger).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from chronicle.core.errors import SchemaMismatchError, StorageError
from chronicle.store.sql import Database, Dialect, Session

SCHEMA_VERSION = 5

SQLITE_TYPES = {"serial": "INTEGER PRIMARY KEY", "bigserial": "INTEGER PRIMARY KEY",
                "bigint": "INTEGER", "blob": "BLOB", "bool": "INTEGER", "false": "0",
                "without_rowid": "WITHOUT ROWID"}
POSTGRES_TYPES = {"serial": "SERIAL PRIMARY KEY", "bigserial": "BIGSERIAL PRIMARY KEY",
                  "bigint": "BIGINT", "blob": "BYTEA", "bool": "BOOLEAN", "false": "FALSE",
                  "without_rowid": ""}

#: The hashed fields of a chain row, the same in every chain table (ours and replicas').
CHAIN_ROW = """currhash {blob} NOT NULL,
    summaryhash {blob} NOT NULL,
    hashstate {blob} NOT NULL,
    publickey {blob} NOT NULL,
    signature {blob} NOT NULL,
    created TEXT NOT NULL"""

MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE instances (id {serial}, name TEXT NOT NULL UNIQUE);
CREATE TABLE entries (
    id {bigserial},
    instance INTEGER NOT NULL REFERENCES instances(id),
    idx {bigint} NOT NULL,
    contents {blob} NOT NULL,
    prevhash {blob},
    {chain_row},
    UNIQUE (instance, idx)
);
CREATE UNIQUE INDEX entries_currhash ON entries(instance, currhash);
CREATE UNIQUE INDEX entries_summaryhash ON entries(instance, summaryhash);
CREATE UNIQUE INDEX entries_signature ON entries(instance, signature);
CREATE TABLE clients (
    id {bigserial},
    instance INTEGER NOT NULL REFERENCES instances(id),
    publicid TEXT NOT NULL,
    publickey {blob} NOT NULL,
    is_admin {bool} NOT NULL DEFAULT {false},
    comment TEXT,
    created TEXT NOT NULL,
    revoked TEXT
);
CREATE UNIQUE INDEX clients_active ON clients(instance, publicid) WHERE revoked IS NULL;
CREATE TABLE mirrors (
    id {bigserial},
    instance INTEGER NOT NULL REFERENCES instances(id),
    url TEXT NOT NULL,
    publickey TEXT NOT NULL,
    comment TEXT,
    sortpriority INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL,
    UNIQUE (instance, url)
);
""",
    2: """
CREATE TABLE replication_sources (
    id {bigserial},
    instance INTEGER NOT NULL REFERENCES instances(id),
    uniqueid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    publickey {blob} NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    fault TEXT,
    reason TEXT,
    status_since TEXT,
    created TEXT NOT NULL,
    last_sync TEXT,
    last_attempt TEXT,
    last_error TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    UNIQUE (instance, name)
);
CREATE TABLE replication_peers (
    id {bigserial},
    source {bigint} NOT NULL REFERENCES replication_sources(id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    publickey {blob},
    kind TEXT NOT NULL,
    cursor TEXT,
    UNIQUE (source, url)
);
CREATE TABLE replication_keys (
    id {bigserial},
    source {bigint} NOT NULL REFERENCES replication_sources(id) ON DELETE CASCADE,
    publickey {blob} NOT NULL,
    since TEXT NOT NULL,
    retired TEXT,
    reason TEXT
);
CREATE TABLE replica_entries (
    id {bigserial},
    source {bigint} NOT NULL REFERENCES replication_sources(id) ON DELETE CASCADE,
    idx {bigint} NOT NULL,
    contents {blob} NOT NULL,
    prevhash {blob} NOT NULL,
    {chain_row},
    replicated TEXT NOT NULL,
    UNIQUE (source, idx)
);
CREATE UNIQUE INDEX replica_entries_currhash ON replica_entries(source, currhash);
CREATE INDEX replica_entries_summaryhash ON replica_entries(source, summaryhash);
CREATE TABLE replication_faults (
    id {bigserial},
    source {bigint} NOT NULL REFERENCES replication_sources(id) ON DELETE CASCADE,
    recorded TEXT NOT NULL,
    status TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE TABLE replication_evidence (
    id {bigserial},
    fault {bigint} NOT NULL REFERENCES replication_faults(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    status INTEGER NOT NULL,
    signature TEXT,
    signer {blob},
    body {blob},
    file TEXT,
    size {bigint} NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE xsign_targets (
    id {bigserial},
    instance INTEGER NOT NULL REFERENCES instances(id),
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    publickey {blob} NOT NULL,
    clientid TEXT NOT NULL,
    policy TEXT NOT NULL,
    created TEXT NOT NULL,
    last_index {bigint},
    last_run TEXT,
    last_attempt TEXT,
    last_error TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    UNIQUE (instance, name)
);
CREATE TABLE xsign_receipts (
    id {bigserial},
    target {bigint} NOT NULL REFERENCES xsign_targets(id) ON DELETE CASCADE,
    recorded TEXT NOT NULL,
    status TEXT NOT NULL,
    idx {bigint} NOT NULL,
    currhash {blob} NOT NULL,
    summaryhash {blob} NOT NULL,
    message {blob} NOT NULL,
    signature TEXT NOT NULL,
    peer_currhash TEXT,
    peer_summaryhash TEXT,
    peer_created TEXT,
    response {blob},
    response_signature TEXT,
    error TEXT
);
CREATE TABLE job_state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
""",
    3: """
CREATE TABLE admin_requests (
    id {bigserial},
    signature {blob} NOT NULL UNIQUE,
    endpoint TEXT NOT NULL,
    recorded TEXT NOT NULL
);
""",
    4: """
CREATE TABLE tlog_trees (
    instance INTEGER PRIMARY KEY REFERENCES instances(id),
    origin TEXT NOT NULL,
    vkey TEXT NOT NULL,
    status TEXT NOT NULL,
    size {bigint} NOT NULL,
    treestate {blob} NOT NULL,
    created TEXT NOT NULL,
    announced {bigint}
);
CREATE TABLE tlog_hashes (
    instance INTEGER NOT NULL REFERENCES instances(id),
    idx {bigint} NOT NULL,
    hash {blob} NOT NULL,
    PRIMARY KEY (instance, idx)
) {without_rowid};
CREATE TABLE tlog_checkpoints (
    instance INTEGER NOT NULL REFERENCES instances(id),
    size {bigint} NOT NULL,
    root {blob} NOT NULL,
    note TEXT NOT NULL,
    issued TEXT NOT NULL,
    PRIMARY KEY (instance, size)
);
CREATE TABLE tlog_upstreams (
    source {bigint} PRIMARY KEY REFERENCES replication_sources(id) ON DELETE CASCADE,
    vkey TEXT NOT NULL,
    size {bigint},
    root {blob},
    body {blob},
    signature TEXT,
    url TEXT,
    checked TEXT
);
""",
    5: """
CREATE TABLE release_ledgers (
    instance INTEGER PRIMARY KEY REFERENCES instances(id),
    server_key TEXT NOT NULL,
    prepared TEXT NOT NULL,
    enabled_idx {bigint},
    enabled_hash TEXT,
    enabled_now TEXT,
    core_vendor TEXT,
    core_key TEXT
);
CREATE TABLE release_keys (
    instance INTEGER NOT NULL REFERENCES instances(id),
    vendor TEXT NOT NULL,
    publickey TEXT NOT NULL,
    name TEXT,
    limited {bool} NOT NULL,
    first {bool} NOT NULL,
    added_idx {bigint} NOT NULL,
    added_hash TEXT NOT NULL,
    added_by TEXT NOT NULL,
    added_emergency {bool} NOT NULL,
    revoked_idx {bigint},
    revoked_hash TEXT,
    revoked_by TEXT,
    revoked_emergency {bool} NOT NULL DEFAULT {false},
    PRIMARY KEY (instance, vendor, publickey)
);
CREATE TABLE release_updates (
    instance INTEGER NOT NULL REFERENCES instances(id),
    ident TEXT NOT NULL,
    vendor TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    version_key TEXT NOT NULL,
    idx {bigint} NOT NULL,
    currhash TEXT NOT NULL,
    body TEXT NOT NULL,
    op_sig TEXT NOT NULL,
    signer TEXT NOT NULL,
    emergency {bool} NOT NULL,
    revoked_idx {bigint},
    revoked_hash TEXT,
    revoked_by TEXT,
    revoke_reason TEXT,
    revoked_emergency {bool} NOT NULL DEFAULT {false},
    PRIMARY KEY (instance, ident)
);
CREATE UNIQUE INDEX release_updates_package ON release_updates(instance, vendor, name, idx);
CREATE TABLE release_attestations (
    instance INTEGER NOT NULL REFERENCES instances(id),
    idx {bigint} NOT NULL,
    currhash TEXT NOT NULL,
    ident TEXT NOT NULL,
    vendor TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    version_key TEXT NOT NULL,
    attestor TEXT NOT NULL,
    attestation TEXT NOT NULL,
    details TEXT,
    signer TEXT NOT NULL,
    PRIMARY KEY (instance, idx)
);
CREATE INDEX release_attestations_update ON release_attestations(instance, ident, idx);
CREATE TABLE release_op_sigs (
    instance INTEGER NOT NULL REFERENCES instances(id),
    op_sig TEXT NOT NULL,
    idx {bigint} NOT NULL,
    PRIMARY KEY (instance, op_sig)
) {without_rowid};
CREATE TABLE release_skipped (
    instance INTEGER NOT NULL REFERENCES instances(id),
    kind TEXT NOT NULL,
    count {bigint} NOT NULL,
    PRIMARY KEY (instance, kind)
);
""",
}


#: The witness's own database (``chronicle witness``): the logs it witnesses, their keys,
#: the latest checkpoint it cosigned for each, and refused requests kept as evidence.
WITNESS_MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE witness_logs (
    id {serial},
    origin TEXT NOT NULL UNIQUE,
    size {bigint},
    root {blob},
    checkpoint {blob},
    cosigned TEXT,
    created TEXT NOT NULL
);
CREATE TABLE witness_keys (
    id {serial},
    log INTEGER NOT NULL REFERENCES witness_logs(id),
    vkey TEXT NOT NULL,
    added TEXT NOT NULL,
    UNIQUE (log, vkey)
);
CREATE TABLE witness_evidence (
    id {bigserial},
    log INTEGER NOT NULL REFERENCES witness_logs(id),
    recorded TEXT NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    known_size {bigint},
    known_root {blob},
    digest {blob} NOT NULL,
    request {blob} NOT NULL,
    UNIQUE (log, digest)
);
""",
}


@dataclass(frozen=True, slots=True)
class Schema:
    """One numbered series of migrations, and where a database records how far it got."""

    what: str
    """What a database holding it is called in errors ("chronicle database")."""
    version_key: str
    """Its row in ``meta``."""
    migrations: Mapping[int, str]
    version: int
    """The version this software needs."""
    init_command: str
    """The command that creates such a database (named when none is found)."""
    migrate_hint: str = ""
    """What to run on an older database (empty: nothing upgrades it yet)."""


LEDGER = Schema("chronicle database", "schema_version", MIGRATIONS, SCHEMA_VERSION,
                "chronicle init", " (run `chronicle migrate`)")
WITNESS = Schema("chronicle witness database", "witness_schema_version", WITNESS_MIGRATIONS,
                 max(WITNESS_MIGRATIONS), "chronicle witness init")


def ddl(version: int, dialect: Dialect, schema: Schema = LEDGER) -> str:
    """Migration ``version`` of ``schema`` in the dialect's types."""
    return schema.migrations[version].format(chain_row=CHAIN_ROW.format(**dialect.types),
                                             **dialect.types)


async def _session_version(session: Session, dialect: Dialect, schema: Schema) -> int:
    if not await session.fetch(dialect.table_exists, "meta"):
        return 0
    row = await session.fetchrow("SELECT value FROM meta WHERE key = ?", schema.version_key)
    return int(row[0]) if row else 0


async def version(db: Database, schema: Schema = LEDGER) -> int:
    """The database's version of ``schema`` (0: it holds none of it)."""
    if not await db.read(db.dialect.table_exists, "meta"):
        return 0
    rows = await db.read("SELECT value FROM meta WHERE key = ?", schema.version_key)
    return int(rows[0][0]) if rows else 0


def check_version(found: int, where: str, schema: Schema = LEDGER) -> None:
    """Refuse to run on any schema but ours, saying what to do about it."""
    if found == schema.version:
        return
    if found == 0:
        raise SchemaMismatchError(f"{where} holds no {schema.what} "
                                  f"(run `{schema.init_command}`)")
    raise SchemaMismatchError(
        f"database schema version {found}, this chronicle needs {schema.version}"
        + (schema.migrate_hint if found < schema.version else
           " (the database is newer than this software)"))


async def upgrade(db: Database, *, fresh: bool, where: str,
                  schema: Schema = LEDGER) -> tuple[int, int]:
    """Apply the missing migrations in one transaction; ``(version before, after)``.

    The version is read inside the transaction (after the backend's schema lock), so
    several processes migrating at once apply each migration exactly once. ``fresh``
    (``chronicle init``) refuses a database that already holds the schema.
    """
    async with db.transaction() as session:
        lock = db.schema_lock()
        if lock is not None:
            await session.execute(lock)
        before = await _session_version(session, db.dialect, schema)
        if fresh and before != 0:
            raise StorageError(f"{where} already holds a {schema.what}")
        if before > schema.version:
            raise SchemaMismatchError(
                f"database schema version {before} is newer than this software "
                f"({schema.version})")
        for number in sorted(v for v in schema.migrations if before < v <= schema.version):
            await session.script(ddl(number, db.dialect, schema))
            await session.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                schema.version_key, str(number))
    return before, schema.version


class SchemaStore:
    """A store over one :class:`Database` holding one :class:`Schema`: its lifecycle.

    :meth:`open` refuses a database at another version; :meth:`create_schema` makes a
    fresh one (``init``); :meth:`migrate` upgrades an older one. A subclass loads what it
    caches in :meth:`_opened`.
    """

    schema: ClassVar[Schema] = LEDGER

    def __init__(self, db: Database, where: str) -> None:
        self.db = db
        self.where = where

    async def _connect(self) -> None:
        """Connect to a database that exists (opening one never makes it, empty)."""
        try:
            await self.db.connect()
        except SchemaMismatchError as exc:
            raise SchemaMismatchError(f"{exc.message} (run `{self.schema.init_command}`, or "
                                      "check the database setting)") from None

    async def open(self) -> None:
        """Connect and check the schema version (refuse to run on a mismatch)."""
        await self._connect()
        try:
            check_version(await version(self.db, self.schema), self.where, self.schema)
            await self._opened()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self.db.close()

    async def create_schema(self) -> None:
        """Create a fresh database at the current schema version (``init``)."""
        await self.db.connect(create=True)
        await upgrade(self.db, fresh=True, where=self.where, schema=self.schema)
        await self._opened()

    async def migrate(self) -> tuple[int, int]:
        """Bring an older schema up to date: ``(version found, version now)``."""
        await self._connect()
        versions = await upgrade(self.db, fresh=False, where=self.where, schema=self.schema)
        await self._opened()
        return versions

    async def _opened(self) -> None:
        """Load what the store caches, once the schema is there."""
