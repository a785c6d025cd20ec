"""chronicle.core.replica against the recorded PHP data: verified copying, the replica API
bodies, attestation and cross-sign messages, the cross-sign policy, backoff."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from chronicle.core import protocol, replica
from chronicle.core.blakechain import ChainBuilder, Entry
from chronicle.core.encoding import b64u_decode, b64u_encode, parse_timestamp
from chronicle.core.errors import EncodingError
from chronicle.core.replica import (
    CrossSignClaim,
    CrossSignPolicy,
    ForkedLinkError,
    KeyChangedError,
    ReplicatedHead,
    ReplicaVerifier,
    TruncatedError,
)
from chronicle.core.sapient import SigningKey
from chronicle.core.verify import (
    EXPORT_KEYS,
    ROW_KEYS,
    BrokenLinkError,
    HashMismatchError,
    HistoryRewrittenError,
    SplitViewError,
)
from tests.helpers import VECTORS, load_vector

EXCHANGES = {e["id"]: e for e in load_vector("exchanges.json")["exchanges"]}
CHAINS = load_vector("hashchains.json")
B_DB = load_vector("db/B.json")["tables"]
KEYS = load_vector("keys.json")
SOURCE = "wBiorLqcC-U8iRZNKhEDuSS1X2GQHBHQFlA1-UNhjOhP"
CANONICAL = "http://127.0.0.1:18111/chronicle"
KEY_A = b64u_decode(KEYS["servers"]["A"]["publickey"], 32)
KEY_B = b64u_decode(KEYS["servers"]["B"]["publickey"], 32)
NOW = parse_timestamp("2026-11-28T04:58:25+00:00")


def recorded(exchange_id: int) -> dict[str, Any]:
    return dict(json.loads(EXCHANGES[exchange_id]["response"]["body_text"]))


def export_rows() -> list[dict[str, Any]]:
    body = (VECTORS / "exports" / "B-final-replica-export.body.json").read_text()
    return list(json.loads(body)["results"])


def copied(rows: list[dict[str, Any]], head: Entry | None = None) -> list[Entry]:
    verifier = ReplicaVerifier(head)
    out = []
    for row in rows:
        entry, signed = verifier.check(row)
        assert signed.index == entry.index
        out.append(entry)
    return out


# --- verified copying -------------------------------------------------------------------------

def test_copy_of_the_php_replica_export_equals_b_stored_rows() -> None:
    entries = copied(export_rows())
    stored = CHAINS["B-replica-of-A"]["entries"]
    assert len(entries) == len(stored) == 29
    for entry, row in zip(entries, stored, strict=True):
        assert entry.contents.decode() == row["contents"]
        assert (b64u_encode(entry.prevhash) if entry.prevhash else "") == row["prevhash"]
        assert b64u_encode(entry.currhash) == row["currhash"]
        assert b64u_encode(entry.summaryhash) == row["summaryhash"]
        assert b64u_encode(entry.hashstate) == row["hashstate"]
        assert entry.created == row["created"]


def test_copy_resumes_from_a_stored_head_with_its_hash_state() -> None:
    rows = export_rows()
    first = copied(rows[:19])
    since = json.loads(EXCHANGES[101]["response"]["body_text"])["results"]
    verifier = ReplicaVerifier(first[-1], keys=ROW_KEYS)
    more = [verifier.check(row)[0] for row in since]
    assert [e.index for e in more] == [19, 20]
    assert [b64u_encode(e.summaryhash) for e in more] == [r["summary"] for r in rows[19:21]]


def test_a_broken_link_right_after_our_head_is_a_fork() -> None:
    rows = export_rows()
    head = copied(rows[:10])[-1]
    verifier = ReplicaVerifier(head, keys=EXPORT_KEYS)
    with pytest.raises(ForkedLinkError) as info:
        verifier.check(rows[11])
    assert info.value.kind == "history-rewritten"
    assert replica.status_for(info.value) == replica.STATUS_FORKED
    assert info.value.index == 10


def test_later_faults_are_failures_not_forks() -> None:
    rows = export_rows()
    verifier = ReplicaVerifier(None)
    verifier.check(rows[0])
    with pytest.raises(BrokenLinkError) as link:
        verifier.check(rows[2])
    assert not isinstance(link.value, ForkedLinkError)
    assert replica.status_for(link.value) == replica.STATUS_FAILED
    bad = copy.deepcopy(rows[:2])
    bad[1]["summary"] = rows[2]["summary"]
    with pytest.raises(HashMismatchError) as mismatch:
        copied(bad)
    assert (mismatch.value.index, mismatch.value.field) == (1, "summary")


def test_created_is_kept_exactly_as_received() -> None:
    key = SigningKey.generate()
    builder = ChainBuilder(None)
    body = b"offset time"
    entry = builder.append(body, key.public, key.sign(body), "2026-11-28T05:58:21+01:00")
    row = protocol.export_row(entry)
    (copy_,) = copied([row])
    assert copy_.created == "2026-11-28T05:58:21+01:00"
    assert copy_.currhash == entry.currhash


def test_a_head_without_hash_state_is_refused() -> None:
    head = copied(export_rows()[:2])[-1]
    with pytest.raises(ValueError, match="hash state"):
        ReplicaVerifier(Entry(head.index, head.contents, head.prevhash, head.currhash,
                              head.summaryhash, b"", head.publickey, head.signature,
                              head.created))


def test_fault_kinds() -> None:
    assert TruncatedError("x").kind == "truncated"
    assert isinstance(TruncatedError("x"), HistoryRewrittenError)
    assert KeyChangedError("x").kind == "key-changed"
    assert replica.status_for(KeyChangedError("x")) == replica.STATUS_FAILED
    for fault in (TruncatedError("x"), HistoryRewrittenError("x"), SplitViewError("x")):
        assert replica.status_for(fault) == replica.STATUS_FORKED
    details = replica.fault_details(SplitViewError("x", peers=[{"url": "u"}], index=3))
    assert details["fault"] == "split-view"
    assert details["peers"] == [{"url": "u"}]
    assert details["index"] == 3


# --- the replica API bodies (byte for byte as PHP's) --------------------------------------

def test_replica_index_row_is_php_s() -> None:
    body = recorded(87)
    mine = replica.index_row(SOURCE, CANONICAL, "Chronicle A (replicated by B)", KEY_A)
    assert body["results"] == [mine]
    env = protocol.ok_envelope(parse_timestamp(body["datetime"]), [mine])
    assert protocol.render(env) == EXCHANGES[87]["response"]["body_text"].encode()


def test_replica_subindex_is_php_s_while_healthy() -> None:
    body = recorded(88)
    mine = replica.subindex(SOURCE, CANONICAL, KEY_A)
    env = protocol.ok_envelope(parse_timestamp(body["datetime"]), mine)
    assert protocol.render(env) == EXCHANGES[88]["response"]["body_text"].encode()
    stopped = replica.subindex(SOURCE, CANONICAL, KEY_A, status="forked",
                               fault="history-rewritten", reason="entry 3 differs",
                               since="2026-11-28T05:00:00+00:00")
    assert list(stopped) == ["uniqueid", "serverPublicKey", "canonical", "urls", "status",
                             "fault", "reason", "since"]
    assert stopped["status"] == "forked"


def test_replica_lasthash_and_lookup_bodies_are_php_s() -> None:
    entries = copied(export_rows()[:19])
    body = recorded(89)
    env = protocol.ok_envelope(parse_timestamp(body["datetime"]),
                               replica.lasthash_results(entries[-1]), notice=replica.NOTICE)
    assert protocol.render(env) == EXCHANGES[89]["response"]["body_text"].encode()
    assert replica.lasthash_results(None) == []
    body = recorded(90)
    env = protocol.ok_envelope(parse_timestamp(body["datetime"]), [replica.row(entries[1])],
                               notice=replica.NOTICE)
    assert protocol.render(env) == EXCHANGES[90]["response"]["body_text"].encode()
    assert replica.row(entries[0])["prevhash"] == ""
    assert replica.export_row(entries[0])["prev"] == ""


def test_replica_export_document_is_php_s() -> None:
    entries = copied(export_rows())
    text = (VECTORS / "exports" / "B-final-replica-export.body.json").read_text()
    env = protocol.ok_envelope(parse_timestamp(json.loads(text)["datetime"]), None,
                               total=len(entries))
    doc = protocol.StreamedDocument.for_envelope(env)
    rendered = "".join(doc.chunks(replica.render_row_indented(e, export=True)
                                  for e in entries))
    assert rendered == text


# --- attestation and cross-signing --------------------------------------------------------

def test_attestation_message_is_b_s_first_entry() -> None:
    stored = B_DB["chronicle_chain"][0]
    heads = [ReplicatedHead(SOURCE, b64u_decode("YZuw7WjgJ0RoHmSQ8NU84QR4o2ZSTXJBA1nm3TZiw1s="),
                            b64u_decode("Dmwv6uW4gj_2EvsGl3dZhsG7MP6-YmDGYhuELyhz2hA="))]
    message = replica.attestation_message(NOW, heads)
    assert message == stored["data"].encode()
    key = SigningKey.from_text(KEYS["servers"]["B"]["secretkey"])
    assert key.sign_b64(message) == stored["signature"]


def test_cross_sign_message_is_a_s_recorded_request() -> None:
    request = EXCHANGES[106]["request"]
    message = replica.cross_sign_message(
        KEY_B, parse_timestamp("2026-11-28T04:58:26+00:00"),
        b64u_decode("Jmh8hSapXY1CPrQ4W6ynmP6E4HK4tipumdcCzcKqhJE="),
        b64u_decode("Kd5j7FWRpmbuEoAlKiOV5XaZXwXLZMTKZ39BVlC2FnU="))
    assert message == request["body_text"].encode()
    key = SigningKey.from_text(KEYS["servers"]["A"]["secretkey"])
    signature = dict(request["headers"])["Body-Signature-Ed25519"]
    assert key.sign_b64(message) == signature
    claim = replica.parse_cross_sign(message)
    assert claim == CrossSignClaim(KEY_B, "2026-11-28T04:58:26+00:00",
                                   b64u_decode("Jmh8hSapXY1CPrQ4W6ynmP6E4HK4tipumdcCzcKqhJE="),
                                   b64u_decode("Kd5j7FWRpmbuEoAlKiOV5XaZXwXLZMTKZ39BVlC2FnU="))


@pytest.mark.parametrize("contents", [b"plain text", b"[1, 2]", b"{not json",
                                      b'{"cross-sign-at": "x", "target": "short"}',
                                      b'{"target": "x", "currhash": "y"}'])
def test_other_contents_are_not_cross_sign_claims(contents: bytes) -> None:
    assert replica.parse_cross_sign(contents) is None


def test_policy_json_is_php_s() -> None:
    policy = CrossSignPolicy(2, 30)
    target = load_vector("db/A.json")["tables"]["chronicle_xsign_targets"][0]
    assert policy.as_json() == target["policy"]
    assert CrossSignPolicy.from_json(target["policy"]) == CrossSignPolicy(2, 30.0)
    assert CrossSignPolicy(push_after=3).as_json() == '{"push-after":3}'
    assert CrossSignPolicy(push_days=0.5).as_json() == '{"push-days":0.5}'


@pytest.mark.parametrize("args", [(None, None), (0, None), (None, 0), (-1, 3)])
def test_invalid_policies(args: tuple[int | None, float | None]) -> None:
    with pytest.raises(EncodingError):
        CrossSignPolicy(*args)


@pytest.mark.parametrize("text", ["", "[]", '{"push-after": "2"}', '{"push-days": true}',
                                  "{}"])
def test_invalid_policy_json(text: str) -> None:
    with pytest.raises(EncodingError):
        CrossSignPolicy.from_json(text)


def test_policy_by_count_as_recorded_on_a() -> None:
    """PHP's scenario: first publish cross-signs, then every second entry (push-after 2)."""
    policy = CrossSignPolicy(2, 30)
    t = datetime(2026, 11, 28, 4, 58, 26).astimezone()
    assert not policy.due(head_index=None, last_index=None, last_run=None, now=t)
    assert policy.due(head_index=20, last_index=None, last_run=None, now=t)
    assert not policy.due(head_index=21, last_index=20, last_run=t, now=t)
    assert policy.due(head_index=22, last_index=20, last_run=t, now=t)
    assert not policy.due(head_index=20, last_index=20, last_run=t,
                          now=t + timedelta(days=365))


def test_policy_by_days() -> None:
    policy = CrossSignPolicy(push_days=1)
    t = datetime(2026, 1, 1).astimezone()
    assert not policy.due(head_index=50, last_index=40, last_run=t,
                          now=t + timedelta(hours=23))
    assert policy.due(head_index=50, last_index=40, last_run=t, now=t + timedelta(days=1))
    only_count = CrossSignPolicy(push_after=5)
    assert not only_count.due(head_index=44, last_index=40, last_run=t,
                              now=t + timedelta(days=400))
    assert only_count.due(head_index=45, last_index=40, last_run=t, now=t)


def test_backoff_doubles_up_to_the_maximum_with_jitter() -> None:
    assert replica.backoff_delay(60, 0, maximum=3600, rand=0.5) == 60
    assert replica.backoff_delay(60, 1, maximum=3600, rand=0.5) == 120
    assert replica.backoff_delay(60, 3, maximum=3600, rand=0.5) == 480
    assert replica.backoff_delay(60, 50, maximum=3600, rand=0.5) == 3600
    assert replica.backoff_delay(60, 2, maximum=3600, rand=0.0) == 180
    assert replica.backoff_delay(60, 2, maximum=3600, rand=0.999999) == pytest.approx(300, 0.01)
