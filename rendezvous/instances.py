"""The rendezvous instances serving one database, as members learn of them (issue 18): each
serving instance stamps its row in the database every few seconds, and lists the live ones,
itself first, in the join answer and the watch, so an agent knows where else to go when this
one stops answering. On SQLite the list is this instance alone, through the same table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from meshpeer.common.endpoints import format_endpoint

from . import settings as config
from .storage import ServingInstance, Store, StoreFailure
from .timers import INSTANCE_HEARTBEAT_S, INSTANCE_LIVE_S, MAX_LISTED_INSTANCES
from .watchlog import WatchLog

logger = logging.getLogger("meshpeer.rendezvous.registry")


def own_instance(instance_id: str, settings: config.Settings) -> ServingInstance:
    """How members reach this instance: what its settings publish, not where it listens."""
    return ServingInstance(
        instance_id,
        settings.public_api_url,
        format_endpoint(settings.public_endpoint),
        format_endpoint(settings.dns_address),
    )


class InstanceList:
    """This instance's heartbeat, and the live instances it lists (its own first)."""

    def __init__(self, store: Store, own: ServingInstance, log: WatchLog) -> None:
        self._store = store
        self.own = own
        self._log = log
        self.listed: tuple[ServingInstance, ...] = (own,)  # until the first heartbeat answers
        self._beating = False

    def to_json(self) -> list[dict[str, str]]:
        return [instance.to_json() for instance in self.listed]

    async def run(self) -> None:
        """Until cancelled: stamp and read the list every heartbeat."""
        self._beating = True
        while True:
            try:
                await self.beat()
            except StoreFailure as error:
                # Serving goes on; the stamp ages, and the others drop us until the next one.
                logger.warning("could not stamp this instance's heartbeat (%s); retrying", error)
            await asyncio.sleep(INSTANCE_HEARTBEAT_S)

    async def beat(self) -> None:
        found = await self._store.beat_instance(self.own, INSTANCE_LIVE_S, MAX_LISTED_INSTANCES)
        listed = tuple(found) or (self.own,)
        if listed != self.listed:
            self.listed = listed
            self._log.record_instances()  # watchers hear of it, as of a peer's change

    async def retire(self) -> None:
        """A serving instance that stops leaves the list now. Only one that beat: an admin
        command in the same data folder shares the id of the instance that serves from it."""
        if self._beating:
            with contextlib.suppress(StoreFailure):
                await self._store.retire_instance(self.own.instance_id)
