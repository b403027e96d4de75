"""One peer's path, between rounds of the mesh core: its punch turns, the relay's part (going
through the rendezvous, and trying the direct path again from there), and a live path's move to
the LAN (which sightings it may try, and the try). Pure: the state and `now` in, the WireGuard
peer to write (or None) out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from meshpeer.common.endpoints import Endpoint, format_endpoint

from . import timers
from .discovery import RemotePeer
from .hints import Candidate
from .uapi import PeerConfig, PeerStatus

Path = Literal["direct", "lan", "relay", "none"]


@dataclass(slots=True)
class PathState:
    path: Path = "none"
    turn_started: float | None = None  # when the endpoint below was punched
    endpoint: Endpoint | None = None
    public: Endpoint | None = None  # the API's endpoint when that turn started
    next_hint: int = 0  # the hints take their turns in order
    direct_try: tuple[float, int] | None = None  # a try of a better path: (when, rx)
    try_back: Endpoint | None = None  # where a LAN try goes back to (None: a relay's try)
    last_lan_try: float | None = None  # when a live path (direct or relayed) last tried the LAN
    last_direct_try: float | None = None
    lan_tried: Endpoint | None = None  # the LAN endpoint a path tried last
    try_answered: bool = False  # the try above was reached and answered at once (try_over)
    try_set_again: bool = False  # ... or WireGuard roamed back from it, and it was set again
    echoed: Endpoint | None = None  # the direct endpoint we answered on, once
    fresh: bool = False  # write the WireGuard peer anew this round (a new session at once)
    punched_again: float | None = None  # the turn (its start) whose second initiation went
    roamed: bool = False  # this host changed networks: set the endpoint again (`after_roaming`)
    moved_at: float | None = None  # ... at this time, and the peer has not answered since
    reason: str = ""  # why the path is about to change, for its log line


def note(
    state: PathState, name: str, path: Path, relay: Endpoint | None, events: list[str]
) -> None:
    """The path as this round saw it, and a log line when it changed or is about to (with
    why: `state.reason`, said once)."""
    if path != state.path:
        reason = "handshake completed" if path != "none" else state.reason or "no live handshake"
        if path == "relay" and relay is not None:
            reason = f"handshake through the relay at {format_endpoint(relay)}"
        if state.path == "relay" and path in ("direct", "lan"):
            reason = "a direct path answers"
        events.append(f"path to {name} {state.path} -> {path} ({reason})")
        state.path = path
    elif state.reason:
        events.append(f"path to {name}: {state.reason}")
    state.reason = ""


def next_turn(
    state: PathState,
    public: Endpoint | None,
    candidates: tuple[Candidate, ...],
    now: float,
    *,
    public_first: bool,
) -> Endpoint | None:
    """Down: the endpoint whose punch turn starts now, or None while the current turn runs.

    Each candidate is tried for a turn of timers.REPUNCH_S. The API's endpoint (`public`) takes
    every other turn, so it is tried at most one turn after any hint however many hints arrive
    (30 spoofed mDNS sightings once held it back 300 s), and only news from the API, which is
    authenticated, cuts a turn short; the first turn goes to the LAN, as DESIGN.md asks."""
    hints = [candidate.endpoint for candidate in candidates if candidate.source != "api"]
    if state.turn_started is None or public != state.public:  # the first turn, or news
        state.public, state.next_hint = public, 0
        lan_first = candidates[0].source == "lan" and not public_first
        return public if public is not None and not lan_first else _hint(state, hints)
    if now - state.turn_started < timers.REPUNCH_S:
        return None
    if public is not None and (state.endpoint != public or not hints):
        return public
    return _hint(state, hints)


def _hint(state: PathState, hints: list[Endpoint]) -> Endpoint:
    endpoint = hints[state.next_hint % len(hints)]
    state.next_hint += 1
    return endpoint


def off_a_silent_lan(
    state: PathState, public: Endpoint | None, stalled: bool, config: PeerConfig, now: float
) -> PeerConfig | None:
    """Up on the LAN, and our traffic there unanswered for STALL_S: back to the peer's public
    mapping, and the LAN again only after LAN_TRY_EVERY_S. Whoever holds the LAN address (a
    neighbour that relayed the try and now drops the data, or a peer gone off the LAN) can
    cost the pair a stall a minute, never the path."""
    if state.path != "lan" or not stalled or public is None:
        return None
    state.last_lan_try = now
    state.reason = f"no answer on the LAN for {timers.STALL_S:g} s: back to its public mapping"
    return punched(replace(config, endpoint=public), state, now)


def punched(config: PeerConfig, state: PathState, now: float) -> PeerConfig:
    """Point the peer at its endpoint and send at once (both sides do: the hole punch)."""
    state.turn_started, state.endpoint = now, config.endpoint
    return replace(config, kick=True)


def after_roaming(
    state: PathState,
    public: Endpoint | None,
    relay: Endpoint | None,
    config: PeerConfig,
    now: float,
) -> PeerConfig | None:
    """This host moved to another network: a new turn, whatever the path was, since WireGuard
    sends from the old source address until its endpoint is set again. A relayed path stays on
    the relay; anything else, a LAN path too, punches the peer's published mapping from our new
    one. The LAN is not kept even when the new one has the same subnet (most homes and cafés
    use 192.168.1.0/24): its address there may be anyone's. mDNS finds the peer again if it is
    on this LAN as well."""
    state.roamed, state.direct_try, state.moved_at = False, None, now
    target = relay if state.path == "relay" and relay is not None else public or state.endpoint
    if target is None:
        return None
    state.public = public
    state.reason = state.reason or "this host's network changed: punching again"
    return punched(replace(config, endpoint=target), state, now)


def punch_again(state: PathState, public: Endpoint | None, now: float) -> bool:
    """PUNCH_AGAIN_S into a turn of the API's endpoint, still down: write the peer anew (its
    second initiation goes now, not REKEY_TIMEOUT after the first). Once a turn; the turn and
    the relay's clock (RELAY_AFTER_S) go on from where they were."""
    started = state.turn_started
    if started is None or public is None or state.endpoint != public:
        return False
    if state.punched_again == started or now - started < timers.PUNCH_AGAIN_S:
        return False
    state.punched_again, state.fresh = started, True
    return True


def relay_turn(
    state: PathState,
    relay: Endpoint | None,
    name: str,
    config: PeerConfig,
    now: float,
    *,
    leads: bool,
) -> PeerConfig | None:
    """Down, and the pair relays: point the peer at the rendezvous, again every turn.

    Only one side of the pair (`leads`: the lower public key) starts the session through the
    relay. Two initiations that cross are both lost: each side's answer to the other's
    replaces the handshake its own initiation was waiting on, and WireGuard tries again only
    REKEY_TIMEOUT (5 s) later. The other side just points the peer at the relay and answers."""
    started = state.turn_started
    state.direct_try = None
    if relay is None or (state.endpoint == relay and started and now - started < timers.REPUNCH_S):
        return None
    if not state.reason:
        state.reason = f"{name} asked for the relay: through {format_endpoint(relay)}"
    if not leads:
        state.turn_started, state.endpoint = now, relay
        return replace(config, endpoint=relay)
    # The first turn through the relay writes the peer anew: WireGuard sends a new initiation
    # at once, instead of up to REKEY_TIMEOUT after its last one (unanswered) to the old endpoint.
    state.fresh = state.endpoint != relay
    return punched(replace(config, endpoint=relay), state, now)


def while_relayed(
    state: PathState,
    public: Endpoint | None,
    lan: Endpoint | None,
    status: PeerStatus,
    config: PeerConfig,
    now: float,
) -> PeerConfig | None:
    """Up through the relay: try a direct path when the peer appears on our LAN (`lan`, from
    mDNS; at most once per LAN_TRY_EVERY_S), when its mapping
    (`public`, from the API) moves, and every DIRECT_RETRY_S. WireGuard roams to whichever
    endpoint answers, so a try that works keeps itself; one that nothing answered within
    DIRECT_TRY_S goes back (try_over)."""
    if state.last_direct_try is None:  # just relayed: the first try is DIRECT_FIRST_TRY_S away
        state.public = public
        state.last_direct_try = now - timers.DIRECT_RETRY_S + timers.DIRECT_FIRST_TRY_S
    if lan is not None and lan != state.lan_tried and not _lan_tried_lately(state, now):
        state.lan_tried, state.last_lan_try, state.reason = lan, now, "it is on our LAN"
        return _try_direct(state, lan, status, config, now)
    news = public is not None and public != state.public
    due = now - state.last_direct_try >= timers.DIRECT_RETRY_S
    if public is None or not (news or due):
        return None
    state.public, state.last_direct_try = public, now
    state.reason = "its mapping moved" if news else "a periodic try"
    return _try_direct(state, public, status, config, now)


def reported_sightings(peer: RemotePeer, sightings: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """The sightings of `peer` at an endpoint it reported itself over the API: the only LAN
    candidates any path may use (lan_to_try says why)."""
    return tuple(endpoint for endpoint in sightings if endpoint in peer.lan_endpoints)


def lan_to_try(
    peer: RemotePeer,
    sightings: tuple[Endpoint, ...],
    own_public: Endpoint | None,
    *,
    relayed: bool,
) -> tuple[Endpoint, ...]:
    """The mDNS sightings of `peer` that a live path may try: only endpoints the peer reported
    itself over the API. A neighbour may announce the peer's key at its own address and relay
    what reaches it to the peer's public mapping: the answers are the peer's own, authenticated,
    so a try of it would be kept, and the neighbour could then drop the data (the review of
    81323bf). A public (direct) path tries only when the peer's mapping has our own public
    address too (one NAT, where a LAN path can exist); a relayed one without that: a NAT with
    an address pool may give two hosts of one LAN two addresses, and there the LAN is the only
    way off the relay."""
    reported = reported_sightings(peer, sightings)
    return reported if relayed or behind_our_nat(peer, own_public) else ()


def behind_our_nat(peer: RemotePeer, own_public: Endpoint | None) -> bool:
    """The peer's mapping has our own public address: one NAT, where a LAN path can exist."""
    public = peer.endpoint
    return own_public is not None and public is not None and public[0] == own_public[0]


def while_direct(
    state: PathState,
    lans: tuple[Endpoint, ...],
    status: PeerStatus,
    config: PeerConfig,
    now: float,
) -> PeerConfig | None:
    """Up on a public (direct) path at `status.endpoint`: answer a peer that reached us by a
    better path than ours, once, and try the LAN when the peer is on it (`lans`: lan_to_try's).

    The try points WireGuard at the LAN endpoint and goes back to the public one unless
    something authenticated comes from the LAN within DIRECT_TRY_S (try_over); a live path
    tries at most once per LAN_TRY_EVERY_S. One side's try is enough: the other side's
    WireGuard roams to the LAN at its first packet, and answers there."""
    current = status.endpoint
    if current is None:
        return None
    reached = state.path == "relay" or (state.path == "direct" and current in lans)
    if reached and current != state.echoed:
        # The peer tried a better path and reached us: answer it there, once.
        how = "on the LAN" if current in lans else "directly"
        state.echoed, state.reason = current, f"it reached us {how}"
        return punched(replace(config, endpoint=current), state, now)
    if not lans or current in lans or _lan_tried_lately(state, now):
        return None
    lan = _next_lan(state, lans)
    state.lan_tried, state.last_lan_try, state.reason = lan, now, "it is on our LAN"
    return _try_direct(state, lan, status, config, now, back=current)


def _next_lan(state: PathState, lans: tuple[Endpoint, ...]) -> Endpoint:
    """The sighting after the one tried last: a host on wire and Wi-Fi gets both tried."""
    if state.lan_tried not in lans:
        return lans[0]
    return lans[(lans.index(state.lan_tried) + 1) % len(lans)]


def _lan_tried_lately(state: PathState, now: float) -> bool:
    """A live path tries a sighting at most once per LAN_TRY_EVERY_S: sightings are not
    authenticated, and a spoofer can change them as often as it likes."""
    return state.last_lan_try is not None and now - state.last_lan_try < timers.LAN_TRY_EVERY_S


def _try_direct(
    state: PathState,
    endpoint: Endpoint,
    status: PeerStatus,
    config: PeerConfig,
    now: float,
    *,
    back: Endpoint | None = None,
) -> PeerConfig:
    state.direct_try, state.try_back = (now, status.rx_bytes), back
    state.try_answered = state.try_set_again = False
    return punched(replace(config, endpoint=endpoint), state, now)


def _during_try(
    state: PathState, status: PeerStatus, started: float, rx: int, config: PeerConfig
) -> PeerConfig | None:
    """Once a try each: answer a peer that reached the tried endpoint, and set a LAN try again
    that WireGuard roamed back from. A packet the peer sent on the old path before our try
    reached it (a ping's reply in the NAT's hairpin) moves WireGuard back there; our next one
    then moves the peer back too, and the pair stays on the public path for LAN_TRY_EVERY_S."""
    tried = state.endpoint
    if status.endpoint == tried and status.rx_bytes > rx and not state.try_answered:
        state.try_answered = True  # the try's end answers again if it still must
        return replace(config, endpoint=tried, kick=True)
    if status.endpoint == state.try_back is not None and not state.try_set_again:
        # What came on the old path is no answer from the tried one: count from here, or the
        # next round answers it at once and the try's end keeps a LAN that never answered.
        state.try_set_again, state.direct_try = True, (started, status.rx_bytes)
        return replace(config, endpoint=tried, kick=True)
    return None


def try_over(
    state: PathState, status: PeerStatus, relay: Endpoint | None, config: PeerConfig, now: float
) -> PeerConfig | None:
    """A try of a better path that nothing answered within DIRECT_TRY_S: back to where it
    came from (the relay, or the public endpoint a LAN try left).

    A try that the peer reaches is answered at once, not at its end. A try sends a keepalive,
    which nothing answers, and both sides of a pair try at about the same time: the packet that
    went out first was dropped by the other NAT, whose pinhole the later one opens. The side
    that was reached must send back while the other side's try still runs."""
    if state.direct_try is None:
        return None
    started, rx = state.direct_try
    if now - started < timers.DIRECT_TRY_S:
        return _during_try(state, status, started, rx, config)
    back, what = (state.try_back, "LAN") if state.try_back else (relay, "direct")
    state.direct_try = state.try_back = None
    if status.endpoint == back or back is None:
        return None  # WireGuard roamed back by itself
    if status.rx_bytes > rx:  # it answered: answer back, the other side may be trying too
        state.echoed = status.endpoint
        return punched(replace(config, endpoint=status.endpoint), state, now)
    state.reason = f"{what} try unanswered for {now - started:.0f} s"
    return punched(replace(config, endpoint=back), state, now)
