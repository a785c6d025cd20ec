"""Scheduled attestation: append the verified heads of every replicated source to our
own chain (vectors: chain B's first entry), at most once per ``scheduled-attestation``.

The message is signed with our server key and goes through the one append path
(:class:`~chronicle.ledger.Ledger`), like every entry of our chain. Anyone auditing our
chain then sees which history of each upstream we held, and when; combined with
cross-signing, upstreams that fork get caught by everyone who follows us.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from chronicle.core.blakechain import Entry
from chronicle.core.encoding import atom, parse_timestamp, utcnow
from chronicle.core.errors import EncodingError
from chronicle.core.replica import ReplicatedHead, attestation_message
from chronicle.core.sapient import SigningKey
from chronicle.ledger import Ledger
from chronicle.store import Store


def job_name(instance: str) -> str:
    return f"attestation:{instance}"


async def attest(store: Store, ledger: Ledger, key: SigningKey, *,
                 every: timedelta | None, clock: Callable[[], datetime] = utcnow,
                 force: bool = False) -> Entry | None:
    """Append an attestation to ``ledger``'s chain if one is due; return the new entry.

    Due when the instance has replicated entries and the last attestation is older than
    ``every`` (or there was none). ``every`` None disables it unless ``force``.
    """
    if every is None and not force:
        return None
    now = clock()
    name = job_name(ledger.instance)
    last_text = await store.jobs.get(name)
    if last_text and not force and every is not None:
        try:
            if now - parse_timestamp(last_text) < every:
                return None
        except EncodingError:
            pass
    heads = []
    for source in await store.replication.sources(ledger.instance):
        head = await store.replication.chain(source.id).head()
        if head is not None:
            heads.append(ReplicatedHead(source.uniqueid, head.currhash, head.summaryhash))
    if not heads:
        return None
    message = attestation_message(now, heads)
    entry = await ledger.append(message, key.public, key.sign(message))
    await store.jobs.set(name, atom(now))
    return entry
