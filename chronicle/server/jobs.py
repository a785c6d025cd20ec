"""Background jobs of ``chronicle serve``: the replica follower, cross-signing, the
scheduled attestation and witnessing (checkpoints of the Merkle tree submitted to the
configured witnesses) — run by exactly one process of a deployment.

Every server process starts :class:`BackgroundJobs`; it tries to take the store's leader
lock (SQLite: ``flock`` on a file in the data directory; PostgreSQL: an advisory lock on a
dedicated connection) and runs the loops only while it holds it. The others retry every
few seconds, so when the leader dies (or loses its database connection) another process
takes over. None of this runs inside a request: a slow upstream or peer never slows a
client's publish.

Scheduling: each source is pulled every ``replicate-interval``; after a failed attempt
the next one waits longer (doubling up to an hour) with ±25 % jitter, so many replicas of
one upstream do not retry in lockstep. Cross-sign targets are checked every
``cross-sign-interval`` against their policy (failures back off the same way). After
each follower pass, and at least hourly, the attestation is appended when due
(``scheduled-attestation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import aiohttp

from chronicle.client.sigpool import SignaturePool
from chronicle.config import Settings
from chronicle.core.blakechain import Entry
from chronicle.core.errors import ChronicleError
from chronicle.core.replica import STATUS_ACTIVE, backoff_delay
from chronicle.core.sapient import SigningKey
from chronicle.ledger import Clock, Ledger
from chronicle.replication.attest import attest
from chronicle.replication.crosssign import PushResult, PushStatus, push
from chronicle.replication.follower import Replicator, SyncResult, SyncStatus
from chronicle.replication.upstream import SyncOptions
from chronicle.replication.witnessing import (
    JobSizes,
    PassResult,
    WitnessingState,
    witness_pass,
)
from chronicle.server.metrics import Metrics
from chronicle.store import LeaderLock, Store
from chronicle.treelog import TreeLog

log = logging.getLogger(__name__)

MAX_BACKOFF = 3600.0
WITNESS_POLL = 5.0
ATTESTATION_CHECK = 3600.0


def _seconds(interval: timedelta | None) -> float | None:
    return None if interval is None else max(1.0, interval.total_seconds())


class BackgroundJobs:
    """The loops, the leader election around them, and one-shot entry points (tests and
    operators can run a pass now: :meth:`follow_once`, :meth:`cross_sign_once`,
    :meth:`attest_once`)."""

    LEADER_RETRY = 5.0
    LEADER_CHECK = 5.0

    def __init__(self, store: Store, key: SigningKey, settings: Settings,
                 ledger: Callable[[str], Ledger], *, clock: Clock, spool_dir: Path,
                 evidence_dir: Path, metrics: Metrics | None = None,
                 tlog: TreeLog | None = None,
                 rand: Callable[[], float] = random.random) -> None:
        self.store = store
        self.key = key
        self.settings = settings
        self.ledger = ledger
        self.clock = clock
        self.spool_dir = spool_dir
        self.evidence_dir = evidence_dir
        self.metrics = metrics
        self.tlog = tlog
        self.rand = rand
        self.witnessing: dict[str, WitnessingState] = {}
        self.witnessed: dict[str, PassResult] = {}
        self._session: aiohttp.ClientSession | None = None
        self.is_leader = False
        self.results: dict[str, SyncResult] = {}
        self.pushes: dict[str, PushResult] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock: LeaderLock | None = None
        self._wake = asyncio.Event()
        self._leading = asyncio.Event()
        self._next_sync: dict[int, float] = {}
        self._next_push: dict[int, float] = {}
        self._pool = SignaturePool()
        self._pass_lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        s = self.settings
        return not s.read_only and (bool(s.witnesses) or any(x is not None for x in (
            s.replicate_interval, s.cross_sign_interval, s.scheduled_attestation)))

    def options(self) -> SyncOptions:
        return SyncOptions(spool_dir=self.spool_dir, evidence_dir=self.evidence_dir,
                           clock=self.clock)

    async def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._supervise(),
                                                               name="background-jobs")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._pool.aclose()
        if self._session is not None:
            await self._session.close()

    def wake(self) -> None:
        """Run the follower now instead of at its next scheduled time."""
        self._next_sync.clear()
        self._wake.set()

    async def wait_leader(self, within: float = 10.0) -> bool:
        try:
            await asyncio.wait_for(self._leading.wait(), within)
        except TimeoutError:
            return False
        return True

    # --- leader election ------------------------------------------------------------------

    async def _supervise(self) -> None:
        lock = self._lock = self.store.jobs.leader_lock()
        try:
            while True:
                try:
                    held = await lock.acquire()
                except ChronicleError as exc:
                    log.warning("cannot try the leader lock: %s", exc.diagnostics())
                    held = False
                if held:
                    self.is_leader = True
                    self._leading.set()
                    log.info("this process runs the background jobs (leader)")
                    try:
                        await self._lead(lock)
                    finally:
                        self.is_leader = False
                        self._leading.clear()
                await asyncio.sleep(self.LEADER_RETRY)
        finally:
            with contextlib.suppress(Exception):
                await lock.release()

    async def _lead(self, lock: LeaderLock) -> None:
        s = self.settings
        loops = []
        if s.replicate_interval is not None:
            loops.append(self._loop("follower", self._follow_pass))
        if s.cross_sign_interval is not None:
            loops.append(self._loop("cross-sign", self._cross_sign_pass))
        if s.scheduled_attestation is not None:
            loops.append(self._loop("attestation", self._attestation_pass))
        if s.witnesses and self.tlog is not None:
            loops.append(self._loop("witnessing", self.witness_once))
        tasks = [asyncio.get_running_loop().create_task(loop) for loop in loops]
        try:
            while True:
                await asyncio.sleep(self.LEADER_CHECK)
                if not await lock.still_held():
                    log.warning("lost the leader lock: stopping the background jobs")
                    return
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _loop(self, name: str, one_pass: Callable[[], Awaitable[float]]) -> None:
        while True:
            try:
                delay = await one_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background job %s failed; retrying in a minute", name)
                delay = 60.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.05, float(delay)))

    # --- the passes ---------------------------------------------------------------------------

    async def _follow_pass(self) -> float:
        interval = _seconds(self.settings.replicate_interval) or 60.0
        await self.follow_once()
        await self.attest_once()
        now = time.monotonic()
        due = [t - now for t in self._next_sync.values()]
        return min([interval, *due]) if due else interval

    async def _cross_sign_pass(self) -> float:
        interval = _seconds(self.settings.cross_sign_interval) or 60.0
        await self.cross_sign_once()
        return interval

    async def _attestation_pass(self) -> float:
        await self.attest_once()
        every = _seconds(self.settings.scheduled_attestation) or ATTESTATION_CHECK
        return min(every, ATTESTATION_CHECK)

    async def follow_once(self, *, everything: bool = False) -> list[SyncResult]:
        """Sync every active source that is due (``everything``: all of them, now)."""
        interval = _seconds(self.settings.replicate_interval) or 60.0
        results = []
        async with self._pass_lock:
            for source in await self.store.replication.sources(None):
                if source.instance not in self.settings.instances \
                        or source.status != STATUS_ACTIVE:
                    continue
                if not everything and self._next_sync.get(source.id, 0.0) > time.monotonic():
                    continue
                result = await Replicator(self.store, source, self.options(),
                                          self._pool).sync()
                failures = source.failures + 1 if result.status == SyncStatus.ERROR else 0
                self._next_sync[source.id] = time.monotonic() + backoff_delay(
                    interval, failures, maximum=max(MAX_BACKOFF, interval), rand=self.rand())
                self.results[source.uniqueid] = result
                if self.metrics is not None:
                    self.metrics.syncs.labels(source.name, str(result.status)).inc()
                results.append(result)
        return results

    async def cross_sign_once(self, *, force: bool = False) -> list[PushResult]:
        """Push our head to every target whose policy says so (``force``: all, now)."""
        interval = _seconds(self.settings.cross_sign_interval) or 60.0
        results = []
        for target in await self.store.xsign.targets(None):
            if target.instance not in self.settings.instances:
                continue
            if not force and self._next_push.get(target.id, 0.0) > time.monotonic():
                continue
            result = await push(self.store, self.key, target, clock=self.clock, force=force)
            if result.status in (PushStatus.ERROR, PushStatus.REFUSED, PushStatus.FAILED):
                self._next_push[target.id] = time.monotonic() + backoff_delay(
                    interval, target.failures + 1, maximum=max(MAX_BACKOFF, interval),
                    rand=self.rand())
            else:
                self._next_push.pop(target.id, None)
            self.pushes[target.name] = result
            if self.metrics is not None:
                self.metrics.cross_signs.labels(target.name, str(result.status)).inc()
            results.append(result)
        return results

    async def attest_once(self, *, force: bool = False) -> list[Entry]:
        """Append the attestation of replicated heads to each chain where it is due."""
        entries = []
        for instance in self.settings.instances:
            entry = await attest(self.store, self.ledger(instance), self.key,
                                 every=self.settings.scheduled_attestation,
                                 clock=self.clock, force=force)
            if entry is not None:
                entries.append(entry)
        return entries

    async def witness_once(self) -> float:
        """Submit each chain's newest checkpoint to the witnesses where due; publish it
        once ``witness-quorum`` of them cosigned. Seconds until the next pass is due."""
        s = self.settings
        assert self.tlog is not None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        delays = []
        for instance in s.instances:
            state = self.witnessing.setdefault(instance, WitnessingState())
            result = await witness_pass(
                self.tlog.witnessing(instance), s.witnesses, s.witness_policy(),
                JobSizes(self.store.jobs, instance), state, session=self._session,
                now=time.monotonic(), republish=_seconds(s.witness_republish),
                rand=self.rand)
            self.witnessed[instance] = result
            if self.metrics is not None:
                for submission in result.submissions:
                    self.metrics.witness.labels(submission.witness, "cosigned").inc()
                for name in result.errors:
                    self.metrics.witness.labels(name, "error").inc()
            delays.append(result.delay)
        # The tree grows through every process of the deployment: look for a new
        # checkpoint every few seconds (a pass with nothing due asks no witness).
        return min([WITNESS_POLL, *delays])
