"""Everything a request handler needs, built once per server process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chronicle.admin import new_client_id
from chronicle.config import Settings
from chronicle.core.encoding import utcnow
from chronicle.core.sapient import SigningKey
from chronicle.ledger import Clock, Ledger
from chronicle.store.base import Store


@dataclass
class ServerContext:
    settings: Settings
    key: SigningKey
    store: Store
    cache_dir: Path
    clock: Clock = utcnow
    ledger_clock: Clock | None = None
    new_client_id: Callable[[], str] = new_client_id
    ledgers: dict[str, Ledger] = field(default_factory=dict)

    def ledger(self, instance: str) -> Ledger:
        ledger = self.ledgers.get(instance)
        if ledger is None:
            ledger = Ledger(self.store, instance, clock=self.ledger_clock or self.clock,
                            max_batch=self.settings.max_batch,
                            max_queue=self.settings.max_queue)
            self.ledgers[instance] = ledger
            ledger.start()
        return ledger

    async def start(self) -> None:
        for name in self.settings.instances:
            await self.store.ensure_instance(name)
            self.ledger(name)

    async def stop(self) -> None:
        for ledger in self.ledgers.values():
            await ledger.stop()
