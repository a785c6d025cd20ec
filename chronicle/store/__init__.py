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
from chronicle.store.sql import LeaderLock

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
    "open_store",
]


def open_store(url: str, base_dir: Path | None = None) -> Store:
    """The store for a database URL: ``sqlite:PATH`` (relative to ``base_dir``) or
    ``postgresql://…``. Not connected yet: call ``open()`` (or ``create_schema()``)."""
    if url.startswith("sqlite:"):
        from chronicle.store.sqlite import SqliteStore

        path = Path(url[len("sqlite:"):])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return SqliteStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from chronicle.store.postgres import PostgresStore
        except ImportError as exc:
            raise StorageError("PostgreSQL support needs asyncpg: "
                               "pip install 'chronicle[postgres]'") from exc
        return PostgresStore(url)
    raise StorageError(f"unsupported database URL: {url!r} "
                       "(expected sqlite:PATH or postgresql://...)")
