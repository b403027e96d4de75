"""One peer's path, between rounds of the mesh core: its punch turns, and the relay's part
(going through the rendezvous, and trying the direct path again from there). Pure: the state
and `now` in, the WireGuard peer to write (or None) out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from meshpeer.common.endpoints import Endpoint, format_endpoint

from . import timers
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
    last_lan_try: float | None = None  # when a live path (direct or relayed) last tried the LAN
    last_direct_try: float | None = None
    lan_tried: Endpoint | None = None  # the LAN endpoint a relayed path tried last
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
    state.public, state.reason = public, "this host's network changed: punching again"
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
    DIRECT_TRY_S goes back (direct_try_over)."""
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


def _lan_tried_lately(state: PathState, now: float) -> bool:
    """A relayed path tries a sighting at most once per LAN_TRY_EVERY_S:
    sightings are not authenticated, and a spoofer can change them as often as it likes."""
    return state.last_lan_try is not None and now - state.last_lan_try < timers.LAN_TRY_EVERY_S


def _try_direct(
    state: PathState, endpoint: Endpoint, status: PeerStatus, config: PeerConfig, now: float
) -> PeerConfig:
    state.direct_try = (now, status.rx_bytes)
    return punched(replace(config, endpoint=endpoint), state, now)


def direct_try_over(
    state: PathState, status: PeerStatus, relay: Endpoint | None, config: PeerConfig, now: float
) -> PeerConfig | None:
    """A try of the direct path that nothing answered: back to the relay."""
    if state.direct_try is None or now - state.direct_try[0] < timers.DIRECT_TRY_S:
        return None
    started, rx = state.direct_try
    state.direct_try = None
    if status.endpoint == relay or relay is None:
        return None  # WireGuard roamed back by itself
    if status.rx_bytes > rx:  # direct answered: answer back, the other side may be trying too
        state.echoed = status.endpoint
        return punched(replace(config, endpoint=status.endpoint), state, now)
    state.reason = f"direct try unanswered for {now - started:.0f} s"
    return punched(replace(config, endpoint=relay), state, now)
