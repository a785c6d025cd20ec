"""Storage: one :class:`Store` per database, its concerns written once over a small driver
interface (:mod:`chronicle.store.sql`), with SQLite and PostgreSQL drivers."""

from __future__ import annotations

from pathlib import Path

from chronicle.core.errors import StorageError
from chronicle.store.base import Store
from chronicle.store.chains import BatchView, Candidate, Chain, ChainHook, HookBatch, WriteTx
from chronicle.store.records import (
    Client,
    EvidenceDocument,
    KeyRecord,
    Mirror,
    ReplicaFault,
    ReplicaPeer,
    ReplicaSource,
    XsignReceipt,
    XsignTarget,
)
from chronicle.store.replication import ReplicaConflict
from chronicle.store.schema import SCHEMA_VERSION
from chronicle.store.sql import Database, LeaderLock

__all__ = [
    "SCHEMA_VERSION",
    "BatchView",
    "Candidate",
    "Chain",
    "ChainHook",
    "Client",
    "EvidenceDocument",
    "HookBatch",
    "KeyRecord",
    "LeaderLock",
    "Mirror",
    "ReplicaConflict",
    "ReplicaFault",
    "ReplicaPeer",
    "ReplicaSource",
    "Store",
    "WriteTx",
    "XsignReceipt",
    "XsignTarget",
    "open_database",
    "open_store",
]


def _locate(url: str, base_dir: Path | None) -> Path | str:
    """The SQLite file (relative to ``base_dir``) or the PostgreSQL URL a database URL
    names; anything else is refused."""
    if url.startswith("sqlite:"):
        path = Path(url[len("sqlite:"):])
        return base_dir / path if not path.is_absolute() and base_dir is not None else path
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import asyncpg  # noqa: F401
        except ImportError as exc:
            raise StorageError("PostgreSQL support needs asyncpg: "
                               "pip install 'chronicle[postgres]'") from exc
        return url
    raise StorageError(f"unsupported database URL: {url!r} "
                       "(expected sqlite:PATH or postgresql://...)")


def open_store(url: str, base_dir: Path | None = None) -> Store:
    """The ledger store for a database URL: ``sqlite:PATH`` (relative to ``base_dir``) or
    ``postgresql://…``. Not connected yet: call ``open()`` (or ``create_schema()``)."""
    target = _locate(url, base_dir)
    if isinstance(target, Path):
        from chronicle.store.sqlite import SqliteStore

        return SqliteStore(target)
    from chronicle.store.postgres import PostgresStore

    return PostgresStore(target)


def open_database(url: str, base_dir: Path | None = None) -> Database:
    """The database a URL names (as :func:`open_store`), for a store of another schema
    (:class:`~chronicle.store.witness.WitnessStore`). Not connected yet."""
    target = _locate(url, base_dir)
    if isinstance(target, Path):
        from chronicle.store.sqlite import SqliteDatabase

        return SqliteDatabase(target)
    from chronicle.store.postgres import PostgresDatabase

    return PostgresDatabase(target)
