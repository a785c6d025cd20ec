"""The document builder's limits, alone: read planning, the build gate, the spool budget."""

from __future__ import annotations

import asyncio

import pytest

from chronicle.config import DEFAULTS
from chronicle.core.errors import ChronicleError, OverloadedError
from chronicle.server.export import (
    MSG_BUSY,
    PAGE_ROWS,
    BuildGate,
    Limits,
    SpoolBudget,
    msg_spool_busy,
    msg_too_large,
    plan_read,
    row_cost,
)

LIMITS = Limits.from_settings(DEFAULTS)
MiB = 1 << 20


def _reads(start: int, stop: int, large: dict[int, int], limits: Limits = LIMITS
           ) -> list[tuple[int, int]]:
    rows = sorted(large.items())
    out, pos = [], start
    while pos < stop:
        end = plan_read(pos, stop, rows, limits)
        assert pos < end <= stop
        out.append((pos, end))
        pos = end
    return out


def _cost(start: int, end: int, large: dict[int, int], limits: Limits = LIMITS) -> int:
    return sum(row_cost(large.get(i, limits.small_row)) for i in range(start, end))


def test_defaults_are_the_settings() -> None:
    expected = Limits(builds=2, queue=16, page_bytes=48 * MiB, spool_bytes=4 << 30,
                      send_timeout=60.0)
    assert expected == LIMITS
    # small rows fill a whole read: a million-entry export keeps its 2,000-row reads
    assert PAGE_ROWS * row_cost(LIMITS.small_row) <= LIMITS.page_bytes
    assert LIMITS.small_row > 4000


def test_small_rows_are_read_in_full_pages() -> None:
    assert _reads(0, 5000, {}) == [(0, 2000), (2000, 4000), (4000, 5000)]


def test_huge_rows_are_read_one_at_a_time_whatever_comes_before() -> None:
    """The attack: small entries, then 8 MiB of control characters each (48 MiB escaped)."""
    large = {i: 8 * MiB for i in range(10, 26)}
    reads = _reads(0, 30, large)
    assert reads[0] == (0, 10)
    assert reads[1:17] == [(i, i + 1) for i in range(10, 26)]
    assert reads[17] == (26, 30)


def test_every_read_stays_within_the_budget_or_is_one_row() -> None:
    large = {3: 5 * MiB, 4: 1 * MiB, 5: 30 * MiB, 9: 10 * MiB, 10: 10 * MiB, 11: 100_000,
             2500: 7 * MiB}
    for start, end in _reads(0, 4000, large):
        assert end - start == 1 or _cost(start, end, large) <= LIMITS.page_bytes
        assert end - start <= PAGE_ROWS


def test_a_small_budget_still_makes_progress() -> None:
    tiny = Limits(builds=1, queue=0, page_bytes=MiB, spool_bytes=MiB, send_timeout=None)
    reads = _reads(0, 5000, {7: 3 * MiB}, tiny)
    assert (7, 8) in reads
    assert all(_cost(s, e, {7: 3 * MiB}, tiny) <= tiny.page_bytes for s, e in reads if e - s > 1)


async def test_the_gate_runs_slots_queues_then_refuses() -> None:
    gate = BuildGate(slots=2, queue=1)
    assert gate.reserve() is None and gate.reserve() is None  # two slots
    place = gate.reserve()
    assert place is not None
    with pytest.raises(OverloadedError) as refused:
        gate.reserve()
    assert refused.value.status == 503 and refused.value.message == MSG_BUSY
    assert refused.value.headers == {"Retry-After": "5"}
    waiter = asyncio.ensure_future(gate.acquire(place))
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.release()  # a slot passes to the queue
    await waiter
    assert gate.running == 2 and gate.waiting == 0
    gate.release()
    gate.release()
    assert gate.running == 0


async def test_a_cancelled_waiter_gives_up_its_place() -> None:
    gate = BuildGate(slots=1, queue=1)
    assert gate.reserve() is None
    place = gate.reserve()
    waiter = asyncio.ensure_future(gate.acquire(place))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting == 0
    assert gate.reserve() is not None  # the queue has room again
    gate.release()
    gate.release()


def test_the_spool_budget_says_who_is_at_fault() -> None:
    budget = SpoolBudget(100)
    budget.charge(60, 0)
    with pytest.raises(OverloadedError) as busy:  # fits alone: others hold the space
        budget.charge(50, 0)
    assert busy.value.status == 503 and busy.value.message == msg_spool_busy(100)
    with pytest.raises(ChronicleError) as alone:  # 60 held by this very file
        budget.charge(50, 60)
    assert alone.value.status == 507 and alone.value.message == msg_too_large(100)
    budget.give(60)
    assert budget.used == 0
    budget.charge(100, 0)
    assert budget.used == 100
