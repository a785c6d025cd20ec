"""Database rows to the store's records, and the column lists that produce those rows.

Both backends select the same columns in the same order, so each conversion exists once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chronicle.core.blakechain import ChainHead, Entry
from chronicle.store.records import (
    Client,
    EvidenceDocument,
    ReplicaSource,
    XsignReceipt,
    XsignTarget,
)

ENTRY_COLUMNS = ("idx", "contents", "prevhash", "currhash", "summaryhash", "hashstate",
                 "publickey", "signature", "created")
ENTRY_COLS = ", ".join(ENTRY_COLUMNS)
#: The same columns with an empty hash state: range reads never need it (a third of a row).
RANGE_COLS = ENTRY_COLS.replace("hashstate", "NULL")
HEAD_COLS = "idx, currhash, summaryhash, hashstate, created"
CLIENT_COLS = "publicid, publickey, is_admin, comment, created, revoked"
SOURCE_SELECT = (
    "SELECT s.id, s.uniqueid, s.name, s.url, s.publickey, i.name, s.status, s.fault, "
    "s.reason, s.status_since, s.created, s.last_sync, s.last_attempt, s.last_error, "
    "s.failures FROM replication_sources s JOIN instances i ON i.id = s.instance")
XSIGN_SELECT = (
    "SELECT t.id, t.name, t.url, t.publickey, t.clientid, t.policy, i.name, t.created, "
    "t.last_index, t.last_run, t.last_attempt, t.last_error, t.failures "
    "FROM xsign_targets t JOIN instances i ON i.id = t.instance")
RECEIPT_COLS = ("id, target, recorded, status, idx, currhash, summaryhash, message, signature, "
                "peer_currhash, peer_summaryhash, peer_created, response, response_signature, "
                "error")
EVIDENCE_COLS = "role, method, url, status, signature, signer, body, file, size, sha256"


def entry(row: Sequence[Any]) -> Entry:
    """A chain row. The first entry's prevhash is NULL on the main chain and ``""`` on a
    replica (as PHP stores it): both read as None."""
    return Entry(index=row[0], contents=bytes(row[1]),
                 prevhash=bytes(row[2]) if row[2] else None,
                 currhash=bytes(row[3]), summaryhash=bytes(row[4]),
                 hashstate=bytes(row[5]) if row[5] is not None else b"",
                 publickey=bytes(row[6]), signature=bytes(row[7]), created=row[8])


def head(row: Sequence[Any]) -> ChainHead:
    return ChainHead(row[0], bytes(row[1]), bytes(row[2]), bytes(row[3]), row[4])


def client(row: Sequence[Any]) -> Client:
    return Client(publicid=row[0], publickey=bytes(row[1]), is_admin=bool(row[2]),
                  comment=row[3], created=row[4], revoked=row[5])


def source(r: Sequence[Any]) -> ReplicaSource:
    return ReplicaSource(uniqueid=r[1], name=r[2], url=r[3], publickey=bytes(r[4]),
                         instance=r[5], id=r[0], status=r[6], fault=r[7], reason=r[8],
                         status_since=r[9], created=r[10], last_sync=r[11],
                         last_attempt=r[12], last_error=r[13], failures=r[14])


def xsign(r: Sequence[Any]) -> XsignTarget:
    return XsignTarget(name=r[1], url=r[2], publickey=bytes(r[3]), clientid=r[4], policy=r[5],
                       instance=r[6], id=r[0], created=r[7], last_index=r[8], last_run=r[9],
                       last_attempt=r[10], last_error=r[11], failures=r[12])


def receipt(r: Sequence[Any]) -> XsignReceipt:
    return XsignReceipt(target_id=r[1], recorded=r[2], status=r[3], index=r[4],
                        currhash=bytes(r[5]), summaryhash=bytes(r[6]), message=bytes(r[7]),
                        signature=r[8], peer_currhash=r[9], peer_summaryhash=r[10],
                        peer_created=r[11], response=None if r[12] is None else bytes(r[12]),
                        response_signature=r[13], error=r[14], id=r[0])


def evidence(d: Sequence[Any]) -> EvidenceDocument:
    return EvidenceDocument(role=d[0], method=d[1], url=d[2], status=d[3], signature=d[4],
                            signer=None if d[5] is None else bytes(d[5]),
                            body=None if d[6] is None else bytes(d[6]), file=d[7], size=d[8],
                            sha256=d[9])
