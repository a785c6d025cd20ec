"""The store: one database holding our chains ("instances") and everything around them.

Each concern has its own object with a small interface, written once over the driver's
:class:`~chronicle.store.sql.Database`:

- ``store.chain(instance)``: reads of one of our chains; ``store.write``: the only way
  entries are added (the sequencer's group commit), with ``store.hooks`` (concerns kept
  with the entries, in the same transaction);
- ``store.clients``, ``store.mirrors``: who may publish, and the public mirror list;
- ``store.replication``: upstreams we copy, their verified copies, peers, faults;
- ``store.xsign``: peers we cross-sign our head onto;
- ``store.jobs``: background job state and the leader lock;
- ``store.replays``: signed admin requests already carried out (never twice);
- ``store.tlog``: the Merkle tree kept with a chain's entries (its hook is in
  ``store.hooks``), the checkpoints issued, the trees of upstreams we watch;
- ``store.release``: the release state of a release ledger (its gate is in
  ``store.hooks``).
- ``store.browse``: light, bounded reads of our chains for the web explorer.

A new concern is one more module and one more attribute here. Hashes, keys and signatures
cross this boundary as raw bytes; ``created`` as the exact string that was hashed.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from chronicle.core.errors import StorageError
from chronicle.store.browse import BrowseStore
from chronicle.store.chains import Chain, ChainHook, ChainStore, WriteTx
from chronicle.store.clients import ClientStore, MirrorStore
from chronicle.store.crosssign import CrossSignStore
from chronicle.store.jobs import JobStore
from chronicle.store.release import ReleaseStore
from chronicle.store.replays import ReplayGuard
from chronicle.store.replication import ReplicationStore
from chronicle.store.schema import SchemaStore
from chronicle.store.sql import Database
from chronicle.store.tlog import TlogStore


class Store(SchemaStore):
    """A database holding one or more chains, their clients, mirrors, replicas and jobs."""

    def __init__(self, db: Database, where: str) -> None:
        super().__init__(db, where)
        self._instances: dict[str, int] = {}
        self.chains = ChainStore(db, self.instance_id)
        self.clients = ClientStore(db, self.instance_id)
        self.mirrors = MirrorStore(db, self.instance_id)
        self.replication = ReplicationStore(db, self.instance_id)
        self.xsign = CrossSignStore(db, self.instance_id)
        self.jobs = JobStore(db)
        self.replays = ReplayGuard(db)
        self.tlog = TlogStore(db, self.instance_id)
        self.release = ReleaseStore(db, self.instance_id)
        self.browse = BrowseStore(db, self.instance_id)
        self._hooks: tuple[ChainHook, ...] = (self.release.hook, self.tlog.hook)

    async def _opened(self) -> None:
        await self._load_instances()

    # --- instances ----------------------------------------------------------------------

    async def _load_instances(self) -> None:
        self._instances = {name: int(iid) for iid, name in
                           await self.db.read("SELECT id, name FROM instances")}

    async def ensure_instance(self, name: str) -> None:
        if name in self._instances:
            return
        async with self.db.transaction() as s:
            await s.execute("INSERT INTO instances (name) VALUES (?) "
                            "ON CONFLICT (name) DO NOTHING", name)
        await self._load_instances()

    async def instance_id(self, name: str) -> int:
        iid = self._instances.get(name)
        if iid is None:
            await self._load_instances()
            iid = self._instances.get(name)
            if iid is None:
                raise StorageError(f"instance {name!r} does not exist in the database")
        return iid

    # --- our chains -----------------------------------------------------------------------

    def chain(self, instance: str) -> Chain:
        """Reads of one of our chains (``""``: the default one)."""
        return self.chains(instance)

    def write(self, instance: str) -> AbstractAsyncContextManager[WriteTx]:
        """A write transaction on ``instance`` holding its chain-head lock."""
        return self.chains.write(instance)

    @property
    def hooks(self) -> tuple[ChainHook, ...]:
        """The concerns written with our chains' entries, in every append (the sequencer
        and imports run them); each is a no-op on a chain where it is not enabled."""
        return self._hooks
