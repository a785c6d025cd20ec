"""Put the rows of ``since`` answers back into chain order, buffered on disk.

PHP Chronicle 1.3's replica ``since`` has no ``ORDER BY``: it lists the new rows in
summary-hash order, and its pages cut that order anywhere. The rows are genuine and carry
their links (each row's ``prevhash`` is the previous row's ``currhash``), so the chain can
be rebuilt from a head we verified: :class:`RowBuffer` keeps every row of an answer (all
its pages) in a temporary SQLite file under the spool directory — memory stays bounded
whatever the size — and :meth:`RowBuffer.chain_from` yields them in chain order. Rows that
repeat (the same currhash on two pages) count once. Whatever is left after the walk does
not continue the head: the caller decides whether that is a fork. Only ``since`` answers
are treated so; an ``export`` must come in chain order (protocol.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chronicle.core.verify import ROW_KEYS, MalformedError, RowKeys

BATCH = 2048


class RowBuffer:
    """Rows keyed by their link, in a throw-away SQLite file (deleted on :meth:`close`)."""

    def __init__(self, spool_dir: Path, keys: RowKeys = ROW_KEYS) -> None:
        spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="since-", suffix=".db", dir=spool_dir)
        os.close(fd)
        self.path = Path(name)
        self.keys = keys
        self.added = 0
        # Used from one thread at a time, but not always the same one (asyncio.to_thread).
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE rows (seq INTEGER PRIMARY KEY, prev TEXT NOT NULL, "
                         "curr TEXT NOT NULL UNIQUE, body TEXT NOT NULL)")
        self._db.execute("CREATE INDEX rows_prev ON rows(prev)")

    def add(self, rows: list[Any]) -> None:
        """Keep ``rows`` (one page's worth or a chunk of it); a repeated currhash is
        dropped. A row without string links is malformed, as it would be in order."""
        values = []
        for row in rows:
            prev = row.get(self.keys.prev) if isinstance(row, dict) else None
            curr = row.get(self.keys.curr) if isinstance(row, dict) else None
            if not isinstance(curr, str) or not isinstance(prev, str | None):
                raise MalformedError("a since row has no currhash and prevhash strings",
                                     field=self.keys.curr)
            values.append((prev or "", curr, _json(row)))
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR IGNORE INTO rows (prev, curr, body) VALUES (?,?,?)",
                             values)
        self._db.execute("COMMIT")
        self.added += len(values)

    def chain_from(self, head: str) -> Iterator[list[Any]]:
        """Batches of rows in chain order from the one whose prevhash is ``head``; each
        row yielded is removed. Stops where no row (or more than one: the answer itself
        forks) continues the chain."""
        batch: list[Any] = []
        current = head
        while True:
            found = self._db.execute("SELECT seq, curr, body FROM rows WHERE prev = ? LIMIT 2",
                                     (current,)).fetchall()
            if len(found) != 1:
                break
            seq, current, body = found[0]
            self._db.execute("DELETE FROM rows WHERE seq = ?", (seq,))
            batch.append(_parse(body))
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def left(self) -> list[str]:
        """The currhashes of the rows no walk has taken."""
        return [r[0] for r in self._db.execute("SELECT curr FROM rows ORDER BY seq")]

    def discard(self, currhashes: list[str]) -> None:
        self._db.executemany("DELETE FROM rows WHERE curr = ?", [(c,) for c in currhashes])

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> RowBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json(row: dict[str, Any]) -> str:
    # ASCII escapes: a row may carry lone surrogates (valid JSON escapes, not UTF-8).
    return json.dumps(row, separators=(",", ":"))


def _parse(body: str) -> Any:
    return json.loads(body)
