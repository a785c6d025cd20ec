"""Row converters shared by the storage drivers: database rows to the store's records.

Both drivers select the same columns in the same order, so one conversion serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chronicle.core.blakechain import Entry
from chronicle.store.base import Client, ReplicaSource, XsignReceipt, XsignTarget


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(index=row[0], contents=bytes(row[1]),
                 prevhash=bytes(row[2]) if row[2] is not None else None,
                 currhash=bytes(row[3]), summaryhash=bytes(row[4]), hashstate=bytes(row[5]),
                 publickey=bytes(row[6]), signature=bytes(row[7]), created=row[8])


def _client(row: Sequence[Any]) -> Client:
    return Client(publicid=row[0], publickey=bytes(row[1]), is_admin=bool(row[2]),
                  comment=row[3], created=row[4], revoked=row[5])


def _replica_entry(row: Sequence[Any]) -> Entry:
    """A replica row: the first entry's prevhash is stored as ``""`` (as PHP), read as None."""
    return Entry(index=row[0], contents=bytes(row[1]), prevhash=bytes(row[2]) or None,
                 currhash=bytes(row[3]), summaryhash=bytes(row[4]), hashstate=bytes(row[5]),
                 publickey=bytes(row[6]), signature=bytes(row[7]), created=row[8])


def _source(r: Sequence[Any]) -> ReplicaSource:
    return ReplicaSource(uniqueid=r[1], name=r[2], url=r[3], publickey=bytes(r[4]),
                         instance=r[5], id=r[0], status=r[6], fault=r[7], reason=r[8],
                         status_since=r[9], created=r[10], last_sync=r[11],
                         last_attempt=r[12], last_error=r[13], failures=r[14])


def _xsign(r: Sequence[Any]) -> XsignTarget:
    return XsignTarget(name=r[1], url=r[2], publickey=bytes(r[3]), clientid=r[4], policy=r[5],
                       instance=r[6], id=r[0], created=r[7], last_index=r[8], last_run=r[9],
                       last_attempt=r[10], last_error=r[11], failures=r[12])


def _receipt(r: Sequence[Any]) -> XsignReceipt:
    return XsignReceipt(target_id=r[1], recorded=r[2], status=r[3], index=r[4],
                        currhash=bytes(r[5]), summaryhash=bytes(r[6]), message=bytes(r[7]),
                        signature=r[8], peer_currhash=r[9], peer_summaryhash=r[10],
                        peer_created=r[11], response=None if r[12] is None else bytes(r[12]),
                        response_signature=r[13], error=r[14], id=r[0])
