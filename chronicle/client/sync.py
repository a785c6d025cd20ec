"""A blocking facade over :class:`~chronicle.client.http.ChronicleClient`.

For code that is not async (a registry's upload hook, a cron job). It owns a private event
loop (``asyncio.Runner``); do not call it from inside a running event loop.

    with SyncChronicleClient(url, server_key, client_id=cid, key=key) as chronicle:
        receipt = chronicle.publish(b'{"package": "demo", "version": "1.0"}')
        for entry in chronicle.since(receipt.currhash):
            ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from chronicle.client.http import ChronicleClient, Head, Receipt, VerifiedEntry
from chronicle.core.verify import ChainState

T = TypeVar("T")


class SyncChronicleClient:
    """Same arguments and checks as :class:`ChronicleClient`; methods block."""

    def __init__(self, url: str, server_key: bytes, **options: Any) -> None:
        self._runner = asyncio.Runner()
        self._client = ChronicleClient(url, server_key, **options)
        self._open = False

    def __enter__(self) -> SyncChronicleClient:
        self._run(self._client.__aenter__())
        self._open = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._open:
            self._run(self._client.close())
            self._open = False
        self._runner.close()

    @property
    def client(self) -> ChronicleClient:
        return self._client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def _iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        async def step() -> tuple[bool, T | None]:
            try:
                return True, await agen.__anext__()
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self._run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                self._run(aclose())

    def publish(self, body: bytes, *, confirm: bool = True) -> Receipt:
        return self._run(self._client.publish(body, confirm=confirm))

    def head(self) -> Head | None:
        return self._run(self._client.head())

    def lasthash(self) -> VerifiedEntry | None:
        return self._run(self._client.lasthash())

    def lookup(self, hash_: str) -> list[VerifiedEntry]:
        return list(self._iterate(self._client.lookup(hash_)))

    def since(self, hash_: str, *, state: ChainState | None = None) -> Iterator[VerifiedEntry]:
        return self._iterate(self._client.since(hash_, state=state))

    def export(self) -> Iterator[VerifiedEntry]:
        return self._iterate(self._client.export())
