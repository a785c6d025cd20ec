"""Storage backends behind one interface (:class:`chronicle.store.base.Store`)."""

from __future__ import annotations

from pathlib import Path

from chronicle.core.errors import StorageError
from chronicle.store.base import SCHEMA_VERSION, Client, Mirror, Store, WriteTx

__all__ = ["SCHEMA_VERSION", "Client", "Mirror", "Store", "WriteTx", "store_for_url"]


def store_for_url(url: str, base_dir: Path | None = None) -> Store:
    """Pick the driver: ``sqlite:PATH`` (relative to ``base_dir``) or ``postgresql://…``."""
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
