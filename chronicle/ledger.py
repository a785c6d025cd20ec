"""The sequencer: the one writer of a chain.

Every entry, from a client's publish, a server message or a CLI command, goes through
:meth:`Ledger.append`. Requests queue up; one task takes them in batches, re-reads the
chain head inside the database write lock, hashes each entry (core.blakechain), inserts
the batch in one transaction and commits it durably, and only then answers every waiter
(group commit). A failed commit answers every waiter of that batch with an error and
leaves the chain as it was; one refused for a full disk is retried once after the store
made room (:meth:`~chronicle.store.sql.Database.make_room`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from chronicle.config import DEFAULTS
from chronicle.core.blakechain import ChainBuilder, ChainHead, Entry, currhash
from chronicle.core.encoding import atom, parse_timestamp, utcnow
from chronicle.core.errors import (
    AuthError,
    ChronicleError,
    CommitOutcomeUnknown,
    EncodingError,
    OverloadedError,
    RequestError,
    StorageDenied,
    StorageError,
    StorageFull,
)
from chronicle.core.protocol import MSG_CLIENT_NOT_FOUND
from chronicle.store import BatchView, Candidate, Client, HookBatch, Store, WriteTx

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Outcome = Entry | ChronicleError
TxAction = Callable[[WriteTx], Awaitable[None]]


@dataclass(slots=True)
class AppendRequest:
    """An entry to add. ``client_id`` set: that client must still be active at commit time.

    ``action`` runs inside the same transaction, before the entry is inserted (a client
    registration and the server's record of it commit together or not at all).
    """

    contents: bytes
    publickey: bytes
    signature: bytes
    client_id: str | None = None
    action: TxAction | None = None
    future: asyncio.Future[Entry] = field(default_factory=lambda: asyncio.get_running_loop()
                                          .create_future())


class Ledger:
    """Serialises appends to one chain (``instance``) of ``store``.

    ``max_batch`` and ``max_queue`` are settings: whoever has the data directory's
    :class:`~chronicle.config.Settings` passes them; the defaults are the settings' own.
    """

    #: Seconds after a refusal for a full disk that a store which cannot tell whether it
    #: has room again (PostgreSQL) is offered writes again (the publishes' Retry-After).
    RECHECK_S = 60.0

    def __init__(self, store: Store, instance: str = "", *, clock: Clock = utcnow,
                 max_batch: int = DEFAULTS.max_batch, max_queue: int = DEFAULTS.max_queue,
                 max_batch_bytes: int = 16 << 20, max_queue_bytes: int = 256 << 20) -> None:
        self.store = store
        self.instance = instance
        self.clock = clock
        self.max_batch = max_batch
        self.max_queue = max_queue
        # Bodies can be megabytes: bound the queue and each batch by bytes as well, so
        # neither memory nor one commit's hashing grows with body size times count.
        self.max_batch_bytes = max_batch_bytes
        self.max_queue_bytes = max_queue_bytes
        self._queue_bytes = 0
        self._queue: deque[AppendRequest] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0
        self.committed = 0
        #: Told of every group commit: ``(instance, entries, seconds)`` (the metrics).
        self.observer: Callable[[str, int, float], None] | None = None
        #: Why the last batch could not be written, until one is (for /readyz).
        self.write_error: str | None = None
        #: ``write_error`` is a full disk (space freed later lets writes resume).
        self.disk_full = False
        self.refused_at = 0.0
        self._progress = time.monotonic()

    def stuck_for(self) -> float:
        """Seconds the queue has waited without a batch finishing (0 when idle)."""
        return 0.0 if not self._queue else time.monotonic() - self._progress

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                               name=f"ledger:{self.instance}")

    async def stop(self) -> None:
        """Stop taking requests, finish everything queued, then end the task."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def append(self, contents: bytes, publickey: bytes, signature: bytes, *,
                     client_id: str | None = None, action: TxAction | None = None) -> Entry:
        """Queue one entry and wait until it is durably committed; return the stored entry.

        If an entry with the same signature is already stored (a client retrying a publish
        whose answer it lost), that entry is returned and nothing new is stored.
        """
        if self._closing:
            raise OverloadedError("Server is shutting down, retry later")
        if len(self._queue) >= self.max_queue or \
                (self._queue and self._queue_bytes + len(contents) > self.max_queue_bytes):
            raise OverloadedError()
        if self._task is None:
            self.start()
        req = AppendRequest(contents, publickey, signature, client_id, action)
        self._queue.append(req)
        self._queue_bytes += len(contents)
        self._wakeup.set()
        return await req.future

    def _take_batch(self) -> list[AppendRequest]:
        # A request with a transactional side effect runs alone, so its failure cannot
        # take unrelated publishes down with it.
        first = self._queue.popleft()
        batch = [first]
        size = len(first.contents)
        if first.action is None:
            while self._queue and len(batch) < self.max_batch \
                    and self._queue[0].action is None \
                    and size + len(self._queue[0].contents) <= self.max_batch_bytes:
                batch.append(self._queue.popleft())
                size += len(batch[-1].contents)
        self._queue_bytes -= size
        return batch

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take_batch()
            started = time.monotonic()
            try:
                outcomes = await self._commit_making_room(batch)
            except ChronicleError as exc:
                self._progress = time.monotonic()
                self._fail(batch, exc)
            except Exception as exc:
                log.exception("append batch of %d failed", len(batch))
                self._fail(batch, StorageError(f"{type(exc).__name__}: {exc}"))
            except asyncio.CancelledError:
                self._fail(batch, OverloadedError("Server is shutting down, retry later"))
                raise
            else:
                self.batches += 1
                self._progress = time.monotonic()
                self.write_error = None
                self.disk_full = False
                if self.observer is not None:
                    self.observer(self.instance,
                                  sum(isinstance(o, Entry) for o in outcomes),
                                  self._progress - started)
                for req, outcome in zip(batch, outcomes, strict=True):
                    if req.future.done():
                        continue
                    if isinstance(outcome, Entry):
                        req.future.set_result(outcome)
                    else:
                        req.future.set_exception(outcome)

    async def _commit_making_room(self, batch: list[AppendRequest]) -> list[Outcome]:
        """:meth:`_commit`; refused for a full disk, once more if the store made room (the
        refused transaction was rolled back: nothing of it is stored)."""
        try:
            return await self._commit(batch)
        except StorageFull as exc:
            if await self.store.db.make_room() is not True:
                raise
            log.warning("append batch of %d refused for a full disk (%s); the store made "
                        "room, retrying it", len(batch), exc.message)
        return await self._commit(batch)

    async def make_room(self) -> bool:
        """While writes are refused for a full disk: try to make room (for /readyz, which
        must not keep failing after space was freed only because nobody published since).
        True when the refusal is forgotten: the store made room, or it cannot tell (a
        database server) and ``RECHECK_S`` passed since the last refusal, so publishes
        are let through to find out (a refused one marks the disk full again)."""
        if not self.disk_full:
            return False
        room = await self.store.db.make_room()
        if room is False or (room is None and
                             time.monotonic() - self.refused_at < self.RECHECK_S):
            return False
        self.write_error = None
        self.disk_full = False
        return True

    def _fail(self, batch: list[AppendRequest], exc: ChronicleError) -> None:
        # A storage failure is ours. The details go to the log, not to clients; the client
        # is told whether anything may have been stored. Retrying a publish is safe either
        # way: the same signed body is idempotent.
        if isinstance(exc, StorageDenied):
            self.disk_full = isinstance(exc, StorageFull)
            self.refused_at = time.monotonic()
            self.write_error = ("the disk is full: " if self.disk_full else "") + exc.message
            log.error("append batch of %d refused by the database (an operator must act): "
                      "%s", len(batch), exc.message)
            exc = StorageError("The ledger cannot write to its database at the moment; "
                               "nothing was stored (its operator is told)", status=503,
                               headers={"Retry-After": "60"})
        elif isinstance(exc, StorageError):
            log.error("append batch of %d failed: %s", len(batch), exc.message)
            message = ("The outcome is unknown (the commit failed); retrying the same signed "
                       "request is safe" if isinstance(exc, CommitOutcomeUnknown)
                       else "Nothing was stored, retry later")
            exc = StorageError(message, status=503, headers={"Retry-After": "1"})
        for req in batch:
            if not req.future.done():
                req.future.set_exception(exc)

    def _created(self, head: ChainHead | None) -> str:
        now = self.clock()
        stamp = atom(now)
        if head is not None and head.created != stamp:
            # Parsed only when the head's time differs from now's (measured: parsing once
            # per batch was a third of the sequencer's own CPU).
            with contextlib.suppress(EncodingError):
                if parse_timestamp(head.created) > now:
                    return head.created  # the clock went backwards: never let created do so
        return stamp

    def _plan(self, batch: list[AppendRequest], view: BatchView,
              hooks: Sequence[HookBatch] = ()) -> tuple[list[Entry], list[Outcome]]:
        """Decide each request's fate and hash the new entries (runs under the head lock).

        A hook may refuse an entry before it is appended (the release gate), judged
        against the state after the entries admitted before it; each appended entry is
        then handed to every hook (the tree)."""
        builder = ChainBuilder(view.head)
        created = self._created(view.head)
        outcomes: list[Outcome] = []
        fresh: list[Entry] = []
        by_sig: dict[bytes, Entry] = dict(view.existing)
        # Only hooks that may refuse are asked (the tree never does: no candidate hashed).
        judges = [hook for hook in hooks if type(hook).admit is not HookBatch.admit]
        for req in batch:
            refusal = self._refusal(req, view, by_sig, builder, created, judges)
            if refusal is not None:
                outcomes.append(refusal)
                continue
            entry = builder.append(req.contents, req.publickey, req.signature, created)
            for hook in hooks:
                hook.appended(entry)
            fresh.append(entry)
            by_sig[entry.signature] = entry
            outcomes.append(entry)
        return fresh, outcomes

    @staticmethod
    def _refusal(req: AppendRequest, view: BatchView, by_sig: dict[bytes, Entry],
                 builder: ChainBuilder, created: str, judges: Sequence[HookBatch]
                 ) -> Outcome | None:
        """Why ``req`` is not appended (an error, or the stored entry of an idempotent
        retry); None when it is."""
        if req.client_id is not None:
            client = view.clients.get(req.client_id)
            if client is None or client.publickey != req.publickey:
                return AuthError(MSG_CLIENT_NOT_FOUND)
        stored = by_sig.get(req.signature)
        if stored is not None:
            if stored.contents == req.contents and stored.publickey == req.publickey:
                return stored
            return RequestError("This signature is already stored with a different entry",
                                status=409)
        if judges:
            candidate = Candidate(builder.next_index, currhash(
                builder.prevhash, created, req.publickey, req.signature, req.contents),
                created, req.publickey, req.signature, req.contents)
            for hook in judges:
                error = hook.admit(candidate)
                if error is not None:
                    return error
        return None

    async def _commit(self, batch: list[AppendRequest]) -> list[Outcome]:
        """One group commit: lock, read the batch's view and the hooks' state, plan,
        insert, write the hooks' state, commit durably. A client change (``action``)
        travels alone and commits together with its chain entry."""
        signatures = [r.signature for r in batch]
        client_ids = [r.client_id for r in batch if r.client_id is not None]
        async with self.store.write(self.instance) as tx:
            view = await tx.view(signatures, client_ids)
            hooks = await self._hooks(tx, [r.contents for r in batch])
            action = batch[0].action
            if action is not None:
                await action(tx)
            fresh, outcomes = self._plan(batch, view, hooks)
            await tx.insert_entries(fresh)
            for hook in hooks:
                await hook.commit(tx)
        self.committed += len(fresh)
        return outcomes

    async def _hooks(self, tx: WriteTx, contents: Sequence[bytes]) -> list[HookBatch]:
        runs = []
        for hook in self.store.hooks:
            run = await hook.begin(tx, contents)
            if run is not None:
                runs.append(run)
        return runs

    async def import_chain(self, batches: AsyncIterator[Sequence[Entry]],
                           clients: Sequence[Client] = ()) -> int:
        """Append an already verified chain (an import) to this *empty* chain, atomically.

        One transaction: the clients and every entry commit together or not at all. Each
        batch must continue exactly where the previous one ended (index and link).
        """
        count = 0
        async with self.store.write(self.instance) as tx:
            head = await tx.head()
            if head is not None:
                raise RequestError(f"chain {self.instance or '(default)'} already holds "
                                   f"{head.index + 1} entries; import needs an empty chain",
                                   status=409)
            for client in clients:
                await tx.add_client(client)
            prev: bytes | None = None
            async for batch in batches:
                hooks = await self._hooks(tx, [e.contents for e in batch])
                for entry in batch:
                    if entry.index != count or entry.prevhash != prev:
                        raise RequestError(f"import batch out of order at entry {count}")
                    prev = entry.currhash
                    count += 1
                    for hook in hooks:
                        hook.appended(entry)
                await tx.insert_entries(batch)
                for hook in hooks:
                    await hook.commit(tx)
        self.committed += count
        return count
