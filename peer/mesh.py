"""The agent's sans-I/O core: what the mesh should look like, what each path is, what to change.

Every discovery source hands `Mesh.merge` its typed values (discovery.py): the watch API
(authenticated) says who the other peers are; DNS-SD and mDNS only add endpoint hints (hints.py)
for a peer the API lists. The device and the host's routing table come in with each round, and
`plan()` answers with everything to apply (plan.py): the WireGuard peers to set or remove, the
routes to add or remove (routes.py), the status document, and the events worth a log line.
Nothing here does I/O or reads a clock: `now` comes in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from meshpeer.common.endpoints import Endpoint, format_endpoint
from meshpeer.common.keys import short_key
from meshpeer.common.limits import MAX_RELAY_PARTNERS

from . import paths, pathview, timers
from .discovery import Discovery, RemotePeer
from .hints import Candidate, Hints
from .liveness import Liveness
from .paths import Path, PathState, punched
from .plan import Plan, Surroundings
from .routes import Claim, Decision, RoutePlan, decide, protected_addresses, refuse_all
from .status import document
from .uapi import DeviceStatus, PeerConfig


@dataclass(slots=True)
class Mesh:
    own_key: bytes
    accept_routes: bool = False  # install the routes the API grants other peers (--accept-routes)
    peers: dict[bytes, RemotePeer] = field(default_factory=dict)  # from the API only
    hints: Hints = field(default_factory=Hints)
    liveness: Liveness = field(default_factory=Liveness)
    # The last decision on the peers' routes (routes.py): what is accepted goes into AllowedIPs.
    _routes: Decision = field(default_factory=lambda: Decision((), ()))
    _applied: dict[bytes, PeerConfig] = field(default_factory=dict)
    _paths: dict[bytes, PathState] = field(default_factory=dict)
    relay_endpoint: Endpoint | None = None  # the rendezvous's WireGuard endpoint: its relay
    own_public: Endpoint | None = None  # our NAT mapping, as the rendezvous observed it
    _asked: set[bytes] = field(default_factory=set)  # peers we want to relay with
    _stored: frozenset[bytes] = frozenset()  # what the rendezvous holds for us
    _kicked_at: float = float("-inf")  # when the rendezvous was last sent a keepalive at once
    _roaming: bool = False  # the host moved: tell the rendezvous at the next round (`roamed`)

    # -- discovery ----------------------------------------------------------------------------

    def merge(self, found: Discovery) -> None:
        """What one source says now, the one way into the core. The API's peers replace or
        update the mesh's list (never with ourselves); a hint source's endpoints replace its
        earlier ones, checked and bounded (hints.py): they count only for peers the API lists,
        and only as endpoints to try, each remembered with its source (`candidates`)."""
        if found.source != "api":
            self.hints.replace(found.source, found.endpoints, self.peers)
            return
        if found.complete:
            self.peers = {}
        for peer in found.peers:
            if peer.public_key != self.own_key:
                self.peers[peer.public_key] = peer
            else:  # a full list names us, a delta when our mapping moved
                self.own_public = peer.endpoint
        for key in found.removed:
            self.peers.pop(key, None)

    def set_own_lan(self, interfaces: Iterable[ipaddress.IPv4Interface]) -> None:
        """Our LAN addresses: mDNS hints must lie on one of these subnets."""
        self.hints.set_own_lan(interfaces)

    def roamed(self) -> None:
        """This host's addresses or gateway changed (a new network, netlink says): every
        endpoint is set again at the next round, the rendezvous's first. wireguard-go keeps
        sending from the old source address until then, and every NAT mapping of ours is new:
        the rendezvous publishes the new one, and the peers punch it (their
        `pathview.mapping_moved`)."""
        self._roaming = True
        self.own_public = None  # until the rendezvous sees the new one (no LAN try meanwhile)
        self.hints.replace("lan", {}, self.peers)  # what the old LAN said points nowhere now
        for state in self._paths.values():
            state.roamed = True

    def allowed_ips(self, peer: RemotePeer) -> tuple[str, ...]:
        """The one place a peer's AllowedIPs are decided: its mesh address as a host route, and
        only the routes the agent accepted from it, never all it advertises. AllowedIPs is also
        WireGuard's source filter, so a route allowed there but not installed would still let
        the peer send packets from any address in it (a spoofed LAN or internet source, which
        this host would take in and, forwarding, pass on)."""
        return (host_route(peer.address), *self._routes.routes_of(peer.public_key))

    def forget_device(self) -> None:
        """The device was made anew: every peer must be written again."""
        self._applied.clear()
        self._paths.clear()

    def candidates(self, peer: RemotePeer) -> tuple[Candidate, ...]:
        """Where to reach a peer, best first, each endpoint once: its LAN addresses (mDNS, and
        only those the peer reported itself, paths.lan_to_try says why), its mapping as the API
        observed it, then as DNS-SD published it."""
        key, found = peer.public_key, []
        lan = paths.reported_sightings(peer, self.hints.endpoints("lan", key))
        found += [Candidate(endpoint, "lan") for endpoint in lan]
        found += [Candidate(peer.endpoint, "api")] if peer.endpoint is not None else []
        found += [Candidate(endpoint, "dns-sd") for endpoint in self.hints.endpoints("dns-sd", key)]
        unique: dict[Endpoint, Candidate] = {}
        for candidate in found:
            unique.setdefault(candidate.endpoint, candidate)
        return tuple(unique.values())

    # -- planning -----------------------------------------------------------------------------

    def plan(
        self, device: DeviceStatus, now: float, surroundings: Surroundings | None = None
    ) -> Plan:
        """Everything this round must change. Without `surroundings` (a test of paths alone):
        no status document, and the routes stay as last decided."""
        self.liveness.observe(device, now)
        routes = self._plan_routes(device, surroundings)
        events: list[str] = []
        wanted: list[PeerConfig] = []
        for key, peer in self.peers.items():
            state = self._paths.setdefault(key, PathState())
            config = self._config(peer, device, state, now)
            base = config or self._applied.get(key)
            if state.fresh and config is None and base is not None and self.relay_endpoint:
                # Relayed, and the rendezvous restarted: a new session through it.
                config = punched(replace(base, endpoint=self.relay_endpoint), state, now)
            if config is not None:
                wanted.append(config)
                self._applied[key] = config
                if key not in device.peers:
                    events.append(f"peer {peer.name} added ({peer.address})")
            self._note_path(peer, device, state, now, events)
        remove = [key for key in self._applied if key not in self.peers]
        for key in remove:
            del self._applied[key]
            self._paths.pop(key, None)
            events.append(f"peer {short_key(key)} removed")
        renewed = sorted(key for key, state in self._paths.items() if state.fresh)
        for state in self._paths.values():
            state.fresh = False
        remove += renewed  # removed, then set again: WireGuard starts a new session
        self._asked &= self.peers.keys()
        status = self._status(device, now, surroundings) if surroundings else None
        partners = frozenset(sorted(self._asked)[:MAX_RELAY_PARTNERS])
        tell = partners if partners != self._stored else None
        kick = self._roaming or self._stalled(device, now, events)
        self._roaming, self._kicked_at = False, now if kick else self._kicked_at
        next_round = timers.SETTLING_TICK_S if self._settling(now) else timers.RECONCILE_S
        return Plan(wanted, remove, events, routes, status, tell, kick, next_round)

    def _settling(self, now: float) -> bool:
        """Whether a path is being made: a punch, a relay turn or a direct try just started."""
        return any(
            state.turn_started is not None and now - state.turn_started < timers.SETTLING_S
            for state in self._paths.values()
        )

    def _stalled(self, device: DeviceStatus, now: float, events: list[str]) -> bool:
        """A live path whose traffic goes unanswered: tell the rendezvous our mapping now."""
        if now - self._kicked_at < timers.RENDEZVOUS_KICK_EVERY_S:
            return False
        for key, state in self._paths.items():
            if state.path != "none" and self.liveness.stalled(key, now):
                self._kicked_at = now
                self.liveness.told(key, device.peers[key].tx_bytes)
                name = self.peers[key].name if key in self.peers else short_key(key)
                silent = f"{timers.STALL_S:g} s"
                events.append(f"no answer from {name} for {silent}: telling the rendezvous")
                return True
        return False

    def rendezvous_restarted(self) -> None:
        """A new rendezvous process knows no relayed session's indices: the relayed peers we
        lead (paths.relay_turn) are written anew (a fresh WireGuard peer handshakes at once,
        through the relay), and the other side answers."""
        for key, state in self._paths.items():
            leads = self.own_key < key
            state.fresh = state.fresh or (state.path == "relay" and leads)

    def relay_moved(self, relay: Endpoint) -> None:
        """The agent moved to another rendezvous instance (watching.py): relayed paths move to
        its relay as after a roam (paths.after_roaming), each up again once the peer answers."""
        self.relay_endpoint = relay
        for state in self._paths.values():
            if state.path == "relay":
                state.roamed, state.reason = True, "the rendezvous moved: relaying there"

    def relay_stored(self, partners: frozenset[bytes]) -> None:
        """The rendezvous holds these as the peers we relay with (its answer to PUT /v1/relay)."""
        self._stored = partners

    def _relays_with(self, peer: RemotePeer) -> bool:
        """Either side asked, and the rendezvous holds it: the pair goes through the relay."""
        asked = peer.public_key in self._stored or self.own_key in peer.relay_partners
        return self.relay_endpoint is not None and asked

    # -- routes and status --------------------------------------------------------------------

    def route_claims(self) -> list[Claim]:
        """Every route every peer advertises, in a stable order (by name, then key)."""
        return [
            Claim(peer.public_key, peer.name, ipaddress.ip_network(route))
            for peer in self._sorted_peers()
            for route in peer.routes
        ]

    def wants_route_table(self) -> bool:
        """Whether this round's plan needs the main table: only when accepting routes, and
        only with a route to decide on or one of ours to remove."""
        return self.accept_routes and bool(self.route_claims() or self._routes.accepted)

    def _plan_routes(self, device: DeviceStatus, surroundings: Surroundings | None) -> RoutePlan:
        claims = self.route_claims()
        table = surroundings.route_table if surroundings else None
        if not self.accept_routes:
            self._routes = refuse_all(claims)
        elif surroundings is not None and table is not None:
            protected = protected_addresses(
                table,
                surroundings.rendezvous_addresses,
                self._candidate_endpoints(),
                [status.endpoint for status in device.peers.values() if status.endpoint],
            )
            previous = self._routes.accepted
            self._routes = decide(claims, table.foreign, protected, surroundings.network, previous)
        owned = table.owned if table is not None else None
        return RoutePlan(self._routes.accepted, self._routes.refused, owned)

    def _candidate_endpoints(self) -> Iterator[tuple[str, Endpoint]]:
        for peer in self._sorted_peers():
            for candidate in self.candidates(peer):
                yield peer.name, candidate.endpoint

    def _sorted_peers(self) -> list[RemotePeer]:
        return sorted(self.peers.values(), key=lambda peer: (peer.name, peer.public_key))

    def _status(
        self, device: DeviceStatus, now: float, surroundings: Surroundings
    ) -> dict[str, Any]:
        identity, rendezvous = surroundings.identity, surroundings.rendezvous
        return document(identity, self, device, self.liveness, rendezvous, now)

    # -- paths --------------------------------------------------------------------------------

    def _config(
        self, peer: RemotePeer, device: DeviceStatus, state: PathState, now: float
    ) -> PeerConfig | None:
        """The peer's configuration, if something must be (re)written."""
        candidates = self.candidates(peer)
        relayed = self._relays_with(peer)
        # No endpoint yet: nothing to keep alive. The interval goes from 0 when one arrives,
        # and that makes WireGuard send at once: the punch starts without waiting for a timer.
        keepalive = timers.PEER_KEEPALIVE_S if candidates or relayed else 0
        config = PeerConfig(peer.public_key, self.allowed_ips(peer), None, keepalive)
        applied = self._applied.get(peer.public_key)
        reshaped = (
            peer.public_key not in device.peers
            or applied is None
            or applied.allowed_ips != config.allowed_ips
        )
        up = self._is_up(peer.public_key, device, state, now)
        moved = pathview.mapping_moved(peer, device.peers.get(peer.public_key), state)
        if state.roamed:
            relay = self.relay_endpoint
            return paths.after_roaming(state, peer.endpoint, relay, config, now)
        if up:
            status = device.peers[peer.public_key]
            relayed_now = pathview.through_relay(status, self.relay_endpoint)
            sightings = self.hints.endpoints("lan", peer.public_key)
            lans = paths.lan_to_try(peer, sightings, self.own_public, relayed=relayed_now)
            if relayed_now:
                self._asked.add(peer.public_key)  # name it back, as below
                lan = lans[0] if lans else None
                return paths.while_relayed(state, peer.endpoint, lan, status, config, now) or (
                    config if reshaped else None
                )
            if state.direct_try is not None:  # trying a better path: wait, or go back
                back = paths.try_over(state, status, self.relay_endpoint, config, now)
                return back or (config if reshaped else None)
            self._asked.discard(peer.public_key)  # direct (or LAN) works: no relay needed
            stalled = self.liveness.stalled(peer.public_key, now)
            back = paths.off_a_silent_lan(state, peer.endpoint, stalled, config, now)
            if back is not None:
                return back
            # A moved mapping is punched first (below); the LAN can wait for the next round.
            better = paths.while_direct(state, () if moved else lans, status, config, now)
            if better is not None:
                return better
        elif relayed:
            # Name it back while we relay: the relay matches our initiations only against the
            # peers we named. Not once direct works, or two sides would keep each other named.
            self._asked.add(peer.public_key)
            # After our move the other side's session still looks up to it: it will not start
            # one through the relay, so we do, whichever key is lower.
            leads = self.own_key < peer.public_key or state.moved_at is not None
            relay = self.relay_endpoint
            return paths.relay_turn(state, relay, peer.name, config, now, leads=leads) or (
                replace(config, endpoint=state.endpoint) if reshaped else None
            )
        if not candidates or (up and not moved):
            return config if reshaped else None  # an up path keeps the endpoint WireGuard has
        lan_turn = self._give_up_punching(peer, candidates, state, now)
        if lan_turn is not None:
            return punched(replace(config, endpoint=lan_turn), state, now)
        if paths.punch_again(state, peer.endpoint, now):
            return replace(config, endpoint=state.endpoint, kick=True)
        endpoint = paths.next_turn(state, peer.endpoint, candidates, now, public_first=moved)
        if endpoint is not None:
            return punched(replace(config, endpoint=endpoint), state, now)
        return replace(config, endpoint=state.endpoint) if reshaped else None

    # -- the relay ----------------------------------------------------------------------------

    def _give_up_punching(
        self, peer: RemotePeer, candidates: tuple[Candidate, ...], state: PathState, now: float
    ) -> Endpoint | None:
        """Punching for RELAY_AFTER_S without a handshake: a LAN sighting not tried yet gets a
        turn first (the returned endpoint); then ask the rendezvous to relay (the next rounds
        point the peer at it once it holds the pair)."""
        started = state.turn_started
        if started is None or peer.endpoint is None or state.endpoint != peer.endpoint:
            return None  # only a turn of the API's endpoint counts: hints may lie
        stuck = now - started
        if self.relay_endpoint is None or stuck < timers.RELAY_AFTER_S:
            return None
        lan = next((c.endpoint for c in candidates if c.source == "lan"), None)
        if lan is not None and lan != state.lan_tried and state.endpoint != lan:
            state.lan_tried = lan
            return lan
        if peer.public_key not in self._asked:
            self._asked.add(peer.public_key)
            relay = format_endpoint(self.relay_endpoint)
            state.reason = f"punch failed for {stuck:.0f} s: relaying via {relay}"
        return None

    def _is_up(self, key: bytes, device: DeviceStatus, state: PathState, now: float) -> bool:
        return pathview.is_up(device.peers.get(key), state, self.liveness.last_seen(key), now)

    def _note_path(
        self,
        peer: RemotePeer,
        device: DeviceStatus,
        state: PathState,
        now: float,
        events: list[str],
    ) -> None:
        key, relay = peer.public_key, self.relay_endpoint
        up = self._is_up(key, device, state, now)
        sightings = self.hints.endpoints("lan", key)
        path = pathview.seen_path(
            peer, device.peers.get(key), state, sightings, relay, up=up, now=now
        )
        paths.note(state, peer.name, path, relay, events)

    def path(self, key: bytes) -> Path:
        state = self._paths.get(key)
        return state.path if state else "none"

    def any_path_down(self) -> bool:
        """Whether a listed peer has no live path: all that DNS-SD's endpoints can help with."""
        return any(self.path(key) == "none" for key in self.peers)


def host_route(address: str) -> str:
    """A mesh address as the one-address route WireGuard's AllowedIPs and the kernel take."""
    host = ipaddress.ip_address(address)
    return f"{host}/{host.max_prefixlen}"
