"""The server's token buckets: limits as configured, and a table strangers cannot grow."""

from __future__ import annotations

from chronicle.server.context import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_and_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(2, clock=clock)
    assert [limiter.retry_after("a") for _ in range(3)] == [0.0, 0.0, 0.5]
    assert limiter.waiting("a") == 0.5
    assert limiter.retry_after("b") == 0.0  # another key has its own bucket
    clock.now += 0.5
    assert limiter.retry_after("a") == 0.0
    assert RateLimiter(0).retry_after("a") == 0.0  # 0: unlimited


def test_one_request_from_each_of_many_addresses_does_not_grow_the_table() -> None:
    clock = Clock()
    limiter = RateLimiter(50, clock=clock)
    for n in range(25_000):
        limiter.retry_after(f"198.51.{n // 256}.{n % 256}")
    clock.now += 1.0  # every one of those buckets is full again: nothing to remember
    for n in range(20_000):
        limiter.retry_after(f"203.0.{n // 256}.{n % 256}")
    assert len(limiter) <= 20_000  # the 25,000 earlier ones are gone
    assert not any(limiter.waiting(f"198.51.{n // 256}.{n % 256}") for n in range(25_000))


def test_pruning_keeps_a_refused_address_refused() -> None:
    clock = Clock()
    limiter = RateLimiter(1, clock=clock)
    assert limiter.retry_after("flooder") == 0.0
    assert limiter.retry_after("flooder") == 1.0
    clock.now += 0.5
    for n in range(3 * RateLimiter.PRUNE_AT):
        limiter.retry_after(n)  # many others, several prunes meanwhile
    assert limiter.retry_after("flooder") > 0.0  # still held: its bucket was not dropped
