"""Peers on the same LAN, found with mDNS (zeroconf): `_wireguard._udp.local.`

Each agent publishes its LAN addresses and WireGuard port, with its public key in TXT (`pub=`),
and browses for the others. Anyone on the LAN can announce anything, so a sighting only adds a
candidate endpoint for a peer the rendezvous already lists, on one of our own subnets (hints.py),
and the tables kept here are bounded: a LAN announcement can never add a peer to the mesh.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

import zeroconf
from zeroconf import IPVersion, ServiceStateChange, current_time_millis
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from meshpeer.common.endpoints import Endpoint
from meshpeer.common.errors import InvalidInput
from meshpeer.common.keys import encode_key, parse_key

from .timers import MDNS_RESOLVE_TIMEOUT_S

logger = logging.getLogger("meshpeer.peer.lan")

SERVICE_TYPE = "_wireguard._udp.local."
RESOLVE_TIMEOUT_MS = int(MDNS_RESOLVE_TIMEOUT_S * 1000)  # zeroconf counts in milliseconds
# What `ask_again` asks for: PTR records (RFC 1035 section 3.2.2) of class IN (section 3.2.4).
# Numbers, not dnspython's names for them: the agent loads dnspython only to read DNS-SD.
TYPE_PTR = 12
CLASS_IN = 1
# Every table here is keyed by what anyone on the LAN announces, so each has a bound. Service
# names are DNS names (at most 255 bytes, which zeroconf enforces), so the tables' memory is
# bounded by their entry counts:
# - sightings by service name: a LAN's worth of agents; beyond it new names are ignored (the
#   mesh core keeps as many unlisted keys, hints.py);
MAX_SERVICE_NAMES = 256
# - resolves in flight by service name: each takes up to MDNS_RESOLVE_TIMEOUT_S, and a flood
#   of names must not pile up tasks;
MAX_PENDING_RESOLVES = 16
# - endpoints per service name: a host's IPv4 addresses on its LANs (wire, Wi-Fi, a few VLANs);
#   what one publish hands the core is at most MAX_SERVICE_NAMES times this.
MAX_ADDRESSES_PER_NAME = 8
# - names of the peers we expect on the LAN (`expect`), and their entries a full table keeps:
#   at most half of it, so a neighbour announcing ever new renames of an expected name (see
#   `_is_expected`) can never hold the whole table.
MAX_PROTECTED_NAMES = MAX_SERVICE_NAMES // 2
Sightings = dict[bytes, list[Endpoint]]
_SERVICE_TYPE_LOWER = SERVICE_TYPE.lower()  # as names are kept: lower-cased
# zeroconf has no public call to ask once more; these are what its own browser asks with,
# importable from the package but left out of its __all__.
_Question = zeroconf.DNSQuestion  # type: ignore[attr-defined]
_Outgoing = zeroconf.DNSOutgoing  # type: ignore[attr-defined]


class _OneLine(logging.Filter):
    """zeroconf logs a failed send with its traceback: after the host moved to another network
    its old socket's address is gone ("Network is unreachable") until mDNS restarts on the new
    one (roaming.py). That is worth one line in the agent's log, never a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


_ONE_LINE = _OneLine()


class LanDiscovery:
    def __init__(
        self,
        public_key: bytes,
        name: str,
        port: int,
        addresses: list[str],
        on_change: Callable[[Sightings], None],
    ) -> None:
        self.public_key = public_key
        self.name = name
        self.port = port
        self.addresses = addresses
        self._on_change = on_change
        self._sightings: dict[str, tuple[bytes, list[Endpoint]]] = {}  # by service name
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        # Names announced and not resolved yet (bounded: MAX_SERVICE_NAMES). zeroconf tells of a
        # name once, when its PTR record is new; a resolve skipped in a flood or timed out would
        # not be tried again until that record expired (75 minutes), and asking again does not
        # help: the PTR goes with the question as a known answer. `ask_again` resolves them.
        # Each with the count of its resolves that timed out: a full table makes room by the
        # name that failed most (the oldest of those), so names announced once in a burst and
        # never answered cannot shut out a name announced after them.
        self._unresolved: dict[str, int] = {}
        # The names of the peers that should be on our LAN and are not sighted (the rendezvous
        # lists them: neighbours.py), lower-cased as mDNS compares names. Their services are
        # resolved again first, and a full table keeps them: names that keep coming after the
        # peer's cannot starve it. Bounded: MAX_PROTECTED_NAMES.
        self._expected: frozenset[str] = frozenset()
        # `_is_expected` by name, for this `_expected`: a full table asks it of every name at
        # every new name a neighbour announces. Bounded: emptied past 2 * MAX_SERVICE_NAMES.
        self._expected_memo: dict[str, bool] = {}
        self._warned_full = False
        self._stopped = False

    async def start(self) -> None:
        if not self.addresses:
            logger.info("no LAN address: mDNS discovery off")
            return
        logging.getLogger("zeroconf").addFilter(_ONE_LINE)  # once: the same filter is kept once
        self._zeroconf = AsyncZeroconf(interfaces=self.addresses, ip_version=IPVersion.V4Only)
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self.name}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(address) for address in self.addresses],
            port=self.port,
            properties={"txtvers": "1", "pub": encode_key(self.public_key)},
            server=f"{self.name}.local.",
        )
        await self._zeroconf.async_register_service(info, allow_name_change=True)
        self._browser = AsyncServiceBrowser(
            self._zeroconf.zeroconf, SERVICE_TYPE, handlers=[self._on_service_state_change]
        )
        logger.info("mDNS: announcing %s on %s", SERVICE_TYPE, ", ".join(self.addresses))

    async def stop(self) -> None:
        # Stopped first: an event zeroconf delivers while the browser is cancelled, or an
        # ask_again, starts no resolve on a closing zeroconf that nothing would cancel.
        zc, self._zeroconf, self._stopped = self._zeroconf, None, True
        for task in list(self._resolving.values()):
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if zc is not None:
            await zc.async_unregister_all_services()
            await zc.async_close()

    def expect(self, names: Iterable[str]) -> None:
        """The peers that should be on our LAN and are not sighted, by name (neighbours.py,
        each round): their services are resolved again first, and kept in a full table."""
        expected = frozenset([name.lower() for name in names][:MAX_PROTECTED_NAMES])
        if expected != self._expected:
            self._expected, self._expected_memo = expected, {}

    def ask_again(self) -> None:
        """One more multicast question for our service type (neighbours.py says when). The
        services we already know go with it as known answers (RFC 6762 §7.1): only the others
        answer. What answers reaches the browser as any announcement does. Names known and not
        resolved yet are resolved again (`_retries` says which), with a budget of their own:
        a neighbour that keeps the announcements' resolves in flight cannot stop these."""
        if self._zeroconf is None:
            return
        zc = self._zeroconf.zeroconf
        query = _Outgoing(0)  # flags 0: a standard query (mDNS's id is 0 as well)
        query.add_question(_Question(SERVICE_TYPE, TYPE_PTR, CLASS_IN))
        now = current_time_millis()
        for known in zc.cache.async_all_by_details(SERVICE_TYPE, TYPE_PTR, CLASS_IN):
            query.add_answer_at_time(known, now)
        try:
            zc.async_send(query)
        except (OSError, zeroconf.Error) as error:  # stopping, or the address just went
            logger.debug("mDNS: cannot ask again: %s", error)
        for name in self._retries():
            self._start_resolve(name, limit=2 * MAX_PENDING_RESOLVES)

    def _retries(self) -> list[str]:
        """What one question resolves again: MAX_PENDING_RESOLVES names, half of them kept
        for each group while it has names waiting. Renames anyone can make up of a single
        expected peer took every retry, and no other name was tried again."""
        expected: list[str] = []
        others: list[str] = []
        for name in self._retry_order():
            if name not in self._resolving:
                (expected if self._is_expected(name) else others).append(name)
        half = MAX_PENDING_RESOLVES // 2
        return (expected[:half] + others[:half] + expected[half:] + others[half:])[
            :MAX_PENDING_RESOLVES
        ]

    def _on_service_state_change(
        self, zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        # mDNS compares names without case, as zeroconf does, but hands a name over as a record
        # spelled it, and anyone can send a TXT record under any spelling: one entry for all
        # of them, or the spellings of an expected peer's name (each kept by a full table)
        # could fill the table for good.
        name = name.lower()
        if state_change is ServiceStateChange.Removed:
            self._unresolved.pop(name, None)
            resolving = self._resolving.get(name)
            if resolving is not None:
                resolving.cancel()  # its answer would be of a service gone: nothing removes it
            if self._sightings.pop(name, None) is not None:
                self._publish()
            return
        if name not in self._unresolved and len(self._unresolved) >= MAX_SERVICE_NAMES:
            self._make_room()
        if name in self._unresolved or len(self._unresolved) < MAX_SERVICE_NAMES:
            self._unresolved.setdefault(name, 0)
        self._start_resolve(name)

    def _make_room(self) -> None:
        """A full table drops the name retried last: of the other names, the one that failed
        most (the oldest of those). The expected peers' names are kept, unless there are more
        than MAX_PROTECTED_NAMES of them: then the made-up renames (failed most, the newest)
        go first."""
        # One pass, each name parsed once: a full table runs this at every new name a
        # neighbour announces (sorting the table with `_retry_order`, which parsed each name
        # three times, took 8 times as long as the rest of the event).
        entries = [
            (self._is_expected(name), failures, age, name)
            for age, (name, failures) in enumerate(self._unresolved.items())
        ]
        over = sum(entry[0] for entry in entries) > MAX_PROTECTED_NAMES
        drop = [
            (failures, age if over else -age, name)
            for expected, failures, age, name in entries
            if expected == over and name not in self._resolving
        ]
        if drop:
            del self._unresolved[max(drop)[2]]

    def _retry_order(self) -> list[str]:
        """The unresolved names, the expected peers' first. Other names: by fewest failed
        resolves, the newest first in a tie, so a burst announced before a name cannot keep
        it waiting. Expected names take turns: the oldest first, and one whose resolve timed
        out goes last (`_resolve`). Not by failures: a made-up rename has none until it is
        tried, and a neighbour announcing untried ones before every question kept a peer's
        rename that had timed out once from ever being tried again."""

        def key(entry: tuple[int, tuple[str, int]]) -> tuple[bool, int, int]:
            age, (name, failures) = entry
            if self._is_expected(name):
                return (False, 0, age)
            return (True, failures, -age)

        return [name for _, (name, _) in sorted(enumerate(self._unresolved.items()), key=key)]

    def _is_expected(self, name: str) -> bool:
        """Whether a (lower-cased) service name is an expected peer's, or one of zeroconf's
        renames of it: a service whose name is taken is announced as `nas-2`, `nas-3`, ...
        Anyone can take a peer's name first (answer its probe, or announce it before the
        peer's mDNS starts, as it does at every roam), and the peer then goes by a rename."""
        known = self._expected_memo.get(name)
        if known is not None:
            return known
        instance, _, service_type = name.partition(".")
        base, dash, number = instance.rpartition("-")
        renamed = bool(dash) and base in self._expected and number.isascii() and number.isdigit()
        expected = service_type == _SERVICE_TYPE_LOWER and (instance in self._expected or renamed)
        if len(self._expected_memo) >= 2 * MAX_SERVICE_NAMES:
            self._expected_memo = {}
        self._expected_memo[name] = expected
        return expected

    def _start_resolve(self, name: str, limit: int = MAX_PENDING_RESOLVES) -> None:
        if self._stopped:
            return
        if name in self._resolving or len(self._resolving) >= limit:
            return  # an update of a name being resolved, or a flood: `ask_again` retries
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._resolving[name] = task
        task.add_done_callback(lambda _: self._resolving.pop(name, None))

    async def _resolve(self, name: str) -> None:
        if self._zeroconf is None or not self._room_for(name):
            self._unresolved.pop(name, None)
            return
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(self._zeroconf.zeroconf, RESOLVE_TIMEOUT_MS):
                if name in self._unresolved:  # not answered: still unresolved
                    # Kept again as the newest: expected names take turns (`_retry_order`).
                    failures = self._unresolved.pop(name) + 1
                    self._unresolved[name] = failures
                return
        except zeroconf.Error as error:  # a name zeroconf itself will not ask about
            logger.debug("mDNS: cannot resolve %r: %s", name[:80], error)
            self._unresolved.pop(name, None)
            return
        self._unresolved.pop(name, None)  # answered: its updates come as events
        sighting = parse_sighting(info.properties, info.parsed_addresses(), info.port)
        if sighting is None or sighting[0] == self.public_key:
            return
        if self._sightings.get(name) != sighting and self._room_for(name):
            self._sightings[name] = sighting
            self._publish()

    def _room_for(self, name: str) -> bool:
        if name in self._sightings or len(self._sightings) < MAX_SERVICE_NAMES:
            return True
        if not self._warned_full:  # warn once: a flood must not flood the log too
            logger.warning("mDNS: %d services seen, ignoring new ones", MAX_SERVICE_NAMES)
            self._warned_full = True
        return False

    def _publish(self) -> None:
        merged: Sightings = {}
        for key, endpoints in self._sightings.values():
            merged.setdefault(key, []).extend(endpoints)
        self._on_change(merged)


def parse_sighting(
    properties: dict[bytes, bytes | None], addresses: list[str], port: int | None
) -> tuple[bytes, list[Endpoint]] | None:
    """A peer's key and LAN endpoints from an mDNS answer; None when anything is off."""
    pub = properties.get(b"pub")
    if not pub or port is None or not 0 < port < 65536:
        return None
    try:
        key = parse_key(pub.decode("ascii"))
    except (UnicodeDecodeError, InvalidInput):
        return None
    endpoints = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if ip.version == 4 and not ip.is_loopback and not ip.is_link_local:
            endpoints.append((str(ip), port))
            if len(endpoints) == MAX_ADDRESSES_PER_NAME:
                break
    return (key, endpoints) if endpoints else None
