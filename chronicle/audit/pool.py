"""Entry signatures checked in parallel, failures reported in chain order.

Hashing a chain is sequential (each currhash keys the next); Ed25519 verification of the
entries is not, and it is ~90 % of an audit's CPU. The auditor hands every entry's
``(publickey, signature, contents)`` to :class:`SignaturePool`, which verifies batches in
worker processes (or inline for small chains) and reports the *lowest* failing index, so
the diagnosis is the same whatever the scheduling.

Why processes: PyNaCl releases the GIL inside libsodium, but the hashing thread holds it
for everything else (~13 µs per entry), and a verifier thread returning from C waits for
it, up to the 5 ms switch interval. Forked worker processes have their own interpreter;
batches of 2048 entries keep the pickling overhead at ~1 µs per entry. Fork is used only
while the process runs a single thread (the CLI's export audit); otherwise (threads
exist, e.g. inside an application) the pool falls back to threads, which still overlap
with libsodium.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

from chronicle.core.encoding import b64u_encode
from chronicle.core.verify import EntrySignatureError, SignedContents, verify_batch

log = logging.getLogger(__name__)

Item = tuple[bytes, bytes, bytes]
MODES = ("auto", "inline", "process", "thread")


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class SignaturePool:
    """Verify entry signatures off the hashing path; raise the first failure by index.

    ``mode``: ``inline`` (no parallelism), ``process``, ``thread``, or ``auto``: inline
    until ``threshold`` entries were submitted, then worker processes (a small chain is
    not worth starting them). ``workers`` defaults to the CPUs available.
    """

    def __init__(self, *, workers: int | None = None, mode: str = "auto",
                 batch_size: int = 2048, threshold: int = 16384) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.workers = workers if workers is not None else default_workers()
        if self.workers <= 1 and mode == "auto":
            mode = "inline"
        self.mode = mode
        self.batch_size = batch_size
        self.threshold = threshold
        self.submitted = 0
        self.checked = 0
        self._indices: list[int] = []
        self._items: list[Item] = []
        self._pending: deque[tuple[list[int], list[Item], Future[list[int]]]] = deque()
        self._executor: Executor | None = None
        self._failure: EntrySignatureError | None = None
        self._max_pending = max(2, self.workers * 3)
        self.on_checked: Callable[[int], None] | None = None

    # --- submission -----------------------------------------------------------------------

    def submit(self, signed: SignedContents) -> None:
        self._indices.append(signed.index)
        self._items.append((signed.publickey, signed.signature, signed.contents))
        if len(self._items) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._items:
            return
        indices, items = self._indices, self._items
        self._indices, self._items = [], []
        self.submitted += len(items)
        if self._use_inline():
            self._record(indices, items, verify_batch(items))
            return
        executor = self._executor or self._start()
        self._pending.append((indices, items, executor.submit(verify_batch, items)))
        while len(self._pending) > self._max_pending:
            self._collect_one()

    def _use_inline(self) -> bool:
        if self._executor is not None:
            return False
        return self.mode == "inline" or (self.mode == "auto" and self.submitted < self.threshold)

    def _start(self) -> Executor:
        mode = self.mode
        if mode in ("auto", "process") and not _can_fork():
            # Forking a process that runs other threads is unsafe (and deprecated); the
            # spawn/forkserver methods would re-import the caller's __main__. Threads
            # still overlap with libsodium, which runs without the GIL.
            mode = "thread"
        if mode == "thread":
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="verify")
        else:
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("fork"))
        log.debug("signature pool: %d %s workers", self.workers, mode)
        return self._executor

    # --- results --------------------------------------------------------------------------

    def _record(self, indices: list[int], items: list[Item], bad: list[int]) -> None:
        self.checked += len(items)
        if self.on_checked is not None:
            self.on_checked(self.checked)
        if bad and self._failure is None:
            pos = min(bad)
            publickey, signature, _ = items[pos]
            self._failure = EntrySignatureError(
                "entry signature does not verify", index=indices[pos], field="signature",
                expected=f"a valid Ed25519 signature by {b64u_encode(publickey)}",
                found=b64u_encode(signature))

    def _collect_one(self) -> None:
        indices, items, future = self._pending.popleft()
        self._record(indices, items, future.result())

    def poll(self) -> None:
        """Collect finished batches (in order); raise the first failure found so far."""
        while self._pending and self._pending[0][2].done():
            self._collect_one()
        if self._failure is not None:
            raise self._failure

    def failure_upto(self, index: int) -> EntrySignatureError | None:
        """After a fault at ``index``: the first signature failure at or before it, if
        any (waits for the batches that hold earlier entries)."""
        self._flush()
        while self._pending and self._pending[0][0][0] <= index:
            self._collect_one()
        failure = self._failure
        return failure if failure is not None and (failure.index or 0) <= index else None

    def finish(self) -> None:
        """Check everything submitted; raise the first failure."""
        self._flush()
        while self._pending:
            self._collect_one()
        if self._failure is not None:
            raise self._failure

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._pending.clear()

    def __enter__(self) -> SignaturePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
