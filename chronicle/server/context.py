"""Everything a request handler needs, built once per server process."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chronicle.admin import new_client_id
from chronicle.config import DataDir, Settings
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import utcnow
from chronicle.core.errors import ChronicleError, NotFoundError, StorageError
from chronicle.core.protocol import MSG_INSTANCE_NOT_FOUND
from chronicle.core.sapient import SigningKey
from chronicle.ledger import Clock, Ledger
from chronicle.server.admission import BodyLimits
from chronicle.server.jobs import BackgroundJobs
from chronicle.server.metrics import Metrics
from chronicle.server.sequencer_link import Forwarded, LinkClient, LinkDown, LinkLost
from chronicle.store import Client, Store
from chronicle.treelog import TreeLog


class ClientCache:
    """Active clients seen recently, to spare publishes a database read each.

    Only a hint: a revoked client still gets past it for up to ``ttl`` seconds, but the
    sequencer re-checks every client inside the write transaction, so nothing a revoked
    client sends is stored (it is answered 403 "Client not found"). Unknown ids are never
    cached, so a client added from the CLI can publish at once.
    """

    def __init__(self, store: Store, ttl: float = 2.0) -> None:
        self.store = store
        self.ttl = ttl
        self._entries: dict[tuple[str, str], tuple[float, Client]] = {}

    async def get(self, instance: str, publicid: str, *, fresh: bool = False) -> Client | None:
        key = (instance, publicid)
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and not fresh and now - hit[0] < self.ttl:
            return hit[1]
        client = await self.store.clients.get(instance, publicid)
        if client is None:
            self._entries.pop(key, None)
        else:
            if len(self._entries) > 100_000:
                self._entries.clear()
            self._entries[key] = (now, client)
        return client


class RateLimiter:
    """Token buckets: ``rate`` per second per key, bursts of one second's worth; rate 0
    means unlimited. Keys are anything hashable (a client of an instance, an address).

    Keys come from strangers (addresses), so the table is bounded: once it holds
    :attr:`PRUNE_AT` buckets, the full ones are dropped (a full bucket is what a new key
    gets anyway, so nothing changes for anyone); what stays are keys that spent tokens
    within the last second or so.
    """

    PRUNE_AT = 10_000

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(rate, 1.0)
        self._buckets: dict[object, tuple[float, float]] = {}
        self._clock = clock
        self._prune_at = self.PRUNE_AT

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: object, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def _prune(self, now: float) -> None:
        full = [k for k, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        # Keys busy right now stay; the next prune waits until the table doubles.
        self._prune_at = max(self.PRUNE_AT, 2 * len(self._buckets))

    def retry_after(self, *key: object) -> float:
        """0 if one more may go ahead now (and take a token), else seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens = self._tokens(key, now)
        if len(self._buckets) >= self._prune_at:
            self._prune(now)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def waiting(self, *key: object) -> float:
        """Seconds until ``key`` has a token again (0: it has one), taking nothing."""
        if self.rate <= 0:
            return 0.0
        tokens = self._tokens(key, self._clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate


@dataclass
class ServerContext:
    settings: Settings
    key: SigningKey
    store: Store
    data_dir: DataDir
    clock: Clock = utcnow
    ledger_clock: Clock | None = None
    new_client_id: Callable[[], str] = new_client_id
    ledgers: dict[str, Ledger] = field(default_factory=dict)
    clients: ClientCache = field(init=False)
    limiter: RateLimiter = field(init=False)
    ip_limiter: RateLimiter = field(init=False)
    failures: RateLimiter = field(init=False)
    body_limits: BodyLimits = field(init=False)
    metrics: Metrics = field(init=False)
    tlog: TreeLog = field(init=False)
    jobs: BackgroundJobs | None = field(default=None, init=False)
    #: ``serve --workers N``, every worker but 0: where publishes are sequenced.
    link: LinkClient | None = field(default=None, init=False)
    #: ``serve --workers N``, worker 0: every worker's publishes queue here.
    queue_share: int = field(default=1, init=False)

    def __post_init__(self) -> None:
        self.clients = ClientCache(self.store)
        s = self.settings
        self.metrics = Metrics()
        self.tlog = TreeLog(self.store, self.data_dir.tlog_key_path(s), self.clock)
        self.limiter = RateLimiter(s.rate_limit)
        self.ip_limiter = RateLimiter(s.rate_limit_ip)
        self.failures = RateLimiter(s.auth_failures_per_ip)
        self.body_limits = BodyLimits.of(s.max_body_size, s.body_timeout, s.body_memory)

    def ledger(self, instance: str) -> Ledger:
        ledger = self.ledgers.get(instance)
        if ledger is None:
            ledger = Ledger(self.store, instance, clock=self.ledger_clock or self.clock,
                            max_batch=self.settings.max_batch,
                            max_queue=self.settings.max_queue * self.queue_share)
            ledger.observer = self.metrics.batch
            self.ledgers[instance] = ledger
            ledger.start()
        return ledger

    async def publish(self, instance: str, contents: bytes, publickey: bytes,
                      signature: bytes, client_id: str) -> Entry:
        """Append an authenticated client's publish: through worker 0's sequencer when
        this worker forwards (``serve --workers N``), else, or when that link is down,
        through this process's own ledger (safe either way: appends are idempotent by
        signature)."""
        if self.link is not None:
            try:
                entry = await self.link.append(Forwarded(instance, client_id, publickey,
                                                         signature, contents))
            except LinkLost:
                # Worker 0 may have stored it: a refusal from here on would say more
                # than we know.
                self.metrics.forwarded.labels("fallback").inc()
                try:
                    return await self.ledger(instance).append(
                        contents, publickey, signature, client_id=client_id)
                except ChronicleError:
                    raise StorageError("The outcome is unknown (the link to the sequencer "
                                       "broke); retrying the same signed request is safe",
                                       status=503, headers={"Retry-After": "1"}) from None
            except LinkDown:
                self.metrics.forwarded.labels("fallback").inc()
            else:
                self.metrics.forwarded.labels("sequencer").inc()
                return entry
        return await self.ledger(instance).append(contents, publickey, signature,
                                                  client_id=client_id)

    async def sequence_forwarded(self, instance: str, contents: bytes, publickey: bytes,
                                 signature: bytes, client_id: str) -> Entry:
        """Worker 0: a publish another worker authenticated and forwarded."""
        if instance not in self.settings.instances:
            raise NotFoundError(MSG_INSTANCE_NOT_FOUND)
        return await self.ledger(instance).append(contents, publickey, signature,
                                                  client_id=client_id)

    async def start(self) -> None:
        for name in self.settings.instances:
            await self.store.ensure_instance(name)
            self.ledger(name)
        # Replica follower, cross-signing, attestation: run by the leader process only.
        self.jobs = BackgroundJobs(self.store, self.key, self.settings, self.ledger,
                                   clock=self.clock,
                                   spool_dir=self.data_dir.replication_spool_dir,
                                   evidence_dir=self.data_dir.evidence_dir,
                                   metrics=self.metrics, tlog=self.tlog)
        await self.jobs.start()

    async def stop(self) -> None:
        if self.jobs is not None:
            await self.jobs.stop()
        for ledger in self.ledgers.values():
            await ledger.stop()
