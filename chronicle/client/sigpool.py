"""Entry signatures verified in parallel with the chain checks, for every verifier we have
(the auditor, the replica follower, the release verifier).

Hashing a chain is sequential (each currhash keys the next); Ed25519 verification of its
entries is not, and it is most of a verifier's CPU (libsodium, ~55–100 µs per entry). A
:class:`SignaturePool` takes batches of ``(publickey, signature, message)`` and answers the
positions that fail, from worker *processes* once the work is large: PyNaCl releases the
GIL inside libsodium, but the thread that hashes and stores the chain holds it for
everything else, and a verifier thread returning from C would wait for it (up to the 5 ms
switch interval). Workers are plain subprocesses (``python -m
chronicle.client.sigworker``) fed raw bytes over pipes: no pickle, no fork of a process
that runs threads, no re-import of the caller's ``__main__``. Small workloads (below
``threshold`` entries) stay in one thread, where starting processes would cost more.

``submit`` is thread-safe and returns a :class:`concurrent.futures.Future`, so the pool
serves synchronous callers (the auditor) and asynchronous ones (``await pool.check``)
alike. :class:`InOrder` adds what a verifier reports: the *lowest* failing entry, the
same whatever the scheduling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO

from chronicle.client.sigworker import Item, decode_answer, encode
from chronicle.core.encoding import b64u_encode
from chronicle.core.errors import ChronicleError
from chronicle.core.verify import EntrySignatureError, SignedContents, verify_batch

log = logging.getLogger(__name__)

MODES = ("auto", "inline", "thread", "process")
#: A lower bound of one entry's size in an export or ``since`` answer (hashes, key,
#: signature and timestamp alone take ~330 bytes of JSON): bytes / ROW_BYTES bounds how
#: many entries a document of that size can hold, for :meth:`SignaturePool.expect_bytes`.
ROW_BYTES = 300


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class WorkerError(ChronicleError):
    """A signature worker process died: our fault, not the data's; retry later."""


class _Worker:
    """One ``sigworker`` subprocess and the thread that feeds it, one batch at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "chronicle.client.sigworker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.jobs: queue.SimpleQueue[tuple[bytes, Future[list[int]]] | None] = \
            queue.SimpleQueue()
        self.queued = 0
        self.dead = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"sigworker-{self.proc.pid}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None
        assert stdout is not None
        while (job := self.jobs.get()) is not None:
            payload, future = job
            try:
                stdin.write(payload)
                stdin.flush()
                bad = decode_answer(_read_exactly(stdout, 4), stdout)
            except (OSError, EOFError, ValueError) as exc:
                future.set_exception(WorkerError(
                    f"signature worker process {self.proc.pid} died ({type(exc).__name__})"))
                with self._lock:
                    self.dead = True
                    self._fail_rest()
                return
            finally:
                self.queued -= 1
            future.set_result(bad)

    def _fail_rest(self) -> None:
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job[1].set_exception(WorkerError("signature worker process died"))

    def submit(self, payload: bytes) -> Future[list[int]]:
        future: Future[list[int]] = Future()
        with self._lock:
            if self.dead:
                future.set_exception(WorkerError("signature worker process died"))
                return future
            self.queued += 1
            self.jobs.put((payload, future))
        return future

    def close(self) -> None:
        self.jobs.put(None)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._thread.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise EOFError("short read from a signature worker")
    return data


class SignaturePool:
    """Verify batches of entry signatures; answer the positions that fail.

    ``mode``: ``inline`` (in the caller's thread), ``thread`` (one background thread),
    ``process`` (``workers`` worker processes), or ``auto``: a thread until ``threshold``
    entries were submitted, then processes (when more than one CPU is available).
    """

    def __init__(self, *, workers: int | None = None, mode: str = "auto",
                 threshold: int = 16384) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.workers = workers if workers is not None else default_workers()
        self.mode = mode
        self.threshold = threshold
        self.submitted = 0
        self.expected = 0
        self._thread: ThreadPoolExecutor | None = None
        self._procs: list[_Worker] = []
        self._lock = threading.Lock()

    def expect_bytes(self, size: int) -> None:
        """The caller is about to check the entries of a ``size``-byte document (an export
        file, an upstream's answer). In ``auto`` mode, when that many bytes may hold
        ``threshold`` entries, the worker processes start with the first batch instead of
        after ``threshold`` entries checked in a thread of this process, where every
        libsodium call hands the GIL back and forth with the thread that hashes and
        stores the chain (measured: 7 µs of this process's CPU per entry, its bottleneck
        when replicating)."""
        with self._lock:
            self.expected = max(self.expected, size // ROW_BYTES)

    def _use_processes(self) -> bool:
        return self.mode == "process" or (
            self.mode == "auto" and self.workers > 1
            and max(self.submitted, self.expected) >= self.threshold)

    def submit(self, items: Sequence[Item]) -> Future[list[int]]:
        """Check ``items``; the future's result lists the positions that fail (sorted)."""
        with self._lock:
            processes = self._use_processes()
            self.submitted += len(items)
            if processes:
                for dead in [w for w in self._procs if w.dead]:
                    self._procs.remove(dead)
                    dead.close()
                while len(self._procs) < self.workers:
                    self._procs.append(_Worker())
                    log.debug("signature checks: worker process %d started",
                              self._procs[-1].proc.pid)
                worker = min(self._procs, key=lambda w: w.queued)
            elif self.mode != "inline" and self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="verify")
        if processes:
            return worker.submit(encode(items))
        if self._thread is None:
            done: Future[list[int]] = Future()
            done.set_result(verify_batch(list(items)))
            return done
        return self._thread.submit(verify_batch, list(items))

    async def check(self, items: Sequence[Item]) -> list[int]:
        """:meth:`submit` for coroutines."""
        return await asyncio.wrap_future(self.submit(items))

    def close(self) -> None:
        procs, self._procs = self._procs, []
        for worker in procs:
            worker.close()
        if self._thread is not None:
            self._thread.shutdown(wait=True, cancel_futures=True)
            self._thread = None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> SignaturePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> SignaturePool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class InOrder:
    """Entries submitted one by one, in chain order; the first failure *by index* wins.

    Batches of ``batch_size`` go to the pool; :meth:`poll` collects what finished and raises
    the lowest failure found so far; :meth:`failure_upto` (after a chain fault at an index)
    waits for every batch holding an earlier entry, so an earlier bad signature is the
    diagnosis rather than the later fault.
    """

    def __init__(self, pool: SignaturePool, *, batch_size: int = 2048) -> None:
        self.pool = pool
        self.batch_size = batch_size
        self.checked = 0
        self.on_checked: Callable[[int], None] | None = None
        self._indices: list[int] = []
        self._items: list[Item] = []
        self._pending: deque[tuple[list[int], list[Item], Future[list[int]]]] = deque()
        self._max_pending = max(2, pool.workers * 3)
        self._failure: EntrySignatureError | None = None

    @property
    def submitted(self) -> int:
        return self.checked + sum(len(items) for _, items, _ in self._pending) + \
            len(self._items)

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
        self._pending.append((indices, items, self.pool.submit(items)))
        while len(self._pending) > self._max_pending:
            self._collect_one()

    def _collect_one(self) -> None:
        indices, items, future = self._pending.popleft()
        bad = future.result()
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

    def poll(self) -> None:
        """Collect finished batches (in order); raise the first failure found so far."""
        while self._pending and self._pending[0][2].done():
            self._collect_one()
        if self._failure is not None:
            raise self._failure

    def failure_upto(self, index: int) -> EntrySignatureError | None:
        """After a fault at ``index``: the first signature failure at or before it, if any."""
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
