"""Entry signatures verified in parallel with the hashing, off the event loop.

Ed25519 verification is most of a replica's CPU (libsodium, ~55-100 µs per entry) while
the chain checks are sequential Python. Small syncs verify their batches in a thread
(PyNaCl releases the GIL inside libsodium, so the event loop stays responsive). Once a
sync turns out large, batches go to worker processes (``sigworker.py``, plain
subprocesses fed raw bytes over pipes): they do not compete with the hashing and storing
thread for the GIL, and unlike ``multiprocessing`` they neither fork a process that runs
threads nor re-import its ``__main__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from chronicle.core.errors import ChronicleError
from chronicle.core.verify import verify_batch
from chronicle.replication.sigworker import Item, encode

log = logging.getLogger(__name__)

MODES = ("auto", "thread", "process")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class WorkerError(ChronicleError):
    """A signature worker process died: our fault, the sync is retried later."""


class _Worker:
    """One ``sigworker`` subprocess; one batch at a time on its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lock = asyncio.Lock()
        self.queued = 0
        self.dead = False

    async def check(self, payload: bytes) -> list[int]:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None
        assert stdout is not None
        self.queued += 1
        try:
            async with self.lock:
                stdin.write(payload)
                await stdin.drain()
                count = int.from_bytes(await stdout.readexactly(4), "big")
                raw = await stdout.readexactly(4 * count)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.dead = True
            raise WorkerError(f"signature worker process {self.proc.pid} died "
                              f"({type(exc).__name__})") from exc
        finally:
            self.queued -= 1
        return [int.from_bytes(raw[i:i + 4], "big") for i in range(0, len(raw), 4)]

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class SignatureChecker:
    """``await check(items)`` -> positions whose signature fails (``(publickey, signature,
    message)`` items). ``auto``: a thread until ``threshold`` entries were checked, then
    ``workers`` worker processes."""

    def __init__(self, *, mode: str = "auto", workers: int | None = None,
                 threshold: int = 20_000) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.workers = workers or default_workers()
        self.threshold = threshold
        self.checked = 0
        self._procs: list[_Worker] = []
        self._starting: asyncio.Lock | None = None

    def _use_processes(self) -> bool:
        return self.mode == "process" or (self.mode == "auto" and self.workers > 1
                                           and self.checked >= self.threshold)

    async def _pool(self) -> list[_Worker]:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            for dead in [w for w in self._procs if w.dead]:
                self._procs.remove(dead)
                with contextlib.suppress(ProcessLookupError, OSError):
                    await dead.close()
            while len(self._procs) < self.workers:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "chronicle.replication.sigworker",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    limit=1 << 20)
                self._procs.append(_Worker(proc))
                log.debug("signature checks: worker process %d started", proc.pid)
        return self._procs

    async def check(self, items: Sequence[Item]) -> list[int]:
        self.checked += len(items)
        if not self._use_processes():
            bad: list[int] = await asyncio.to_thread(verify_batch, list(items))
            return bad
        payload = encode(items)
        worker = min(await self._pool(), key=lambda w: w.queued)
        return await worker.check(payload)

    async def aclose(self) -> None:
        procs, self._procs = self._procs, []
        for worker in procs:
            with contextlib.suppress(ProcessLookupError, OSError):
                await worker.close()

    async def __aenter__(self) -> SignatureChecker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
