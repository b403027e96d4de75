"""Every time the agent keeps, with where its value comes from (beside rendezvous/timers.py).

WireGuard's own times are from the whitepaper, section 6, and agree with the kernel and
wireguard-go (shared/reference/wireguard-protocol.md); the rest are ours, and say why.
"""

from __future__ import annotations

# -- WireGuard's, which ours are derived from ---------------------------------------------------

REJECT_AFTER_TIME_S = 180.0  # a session's keys are refused this long after its handshake
REKEY_TIMEOUT_S = 5.0  # an unanswered initiation is sent again after this long

# -- paths between peers (mesh.py) --------------------------------------------------------------

# The rendezvous sees a NAT rebinding at the next keepalive. Ten seconds keeps "a moved peer is
# found again" near 10 s, and at one 32-byte packet per 10 s per peer it costs nothing. (The 25 s
# WireGuard suggests only keeps mappings open; it would make rebinding news 25 s late.)
RENDEZVOUS_KEEPALIVE_S = 10
# Between peers, the usual 25 s keeps every common NAT's UDP mapping alive (the shortest seen in
# the wild is 30 s).
PEER_KEEPALIVE_S = 25
# A session is dead REJECT_AFTER_TIME after its handshake; with keepalives flowing a live path
# rehandshakes every 120 s (REKEY_AFTER_TIME), so a younger handshake means the path is up.
PATH_FRESH_S = REJECT_AFTER_TIME_S
# While a path is down, its endpoint is set again this often: both sides keep sending to each
# other's current mapping, which is what opens the NATs. It is also the length of a candidate's
# turn: at least REKEY_TIMEOUT, the interval at which WireGuard sends initiations, so every turn
# gets at least one packet to its endpoint.
REPUNCH_S = 2 * REKEY_TIMEOUT_S
# A punch between NATs that allow it completes within a round trip of both sides sending, or
# with the next initiation when the first reached a NAT the other side had not opened yet, as a
# symmetric NAT's first packet to an address-restricted one often does. WireGuard sends that one
# REKEY_TIMEOUT (5 s) later, and refuses to send one sooner: the agent writes the peer anew this
# long into the first turn of the API's endpoint, which sends it now.
PUNCH_AGAIN_S = 2.0
# Punching that has not produced a handshake within this long goes through the relay: past the
# second initiation, with time for it to cross the NATs and for a round (SETTLING_TICK_S) to
# see its handshake, and for the other side's (it may have learned of us a second later). A
# pair that can punch does; one that cannot (a symmetric NAT never lets a port-restricted peer
# in) is on the relay ~5.5 s after both agents start. A pair that loses this race is found by
# the relayed path's first direct try (DIRECT_FIRST_TRY_S).
RELAY_AFTER_S = PUNCH_AGAIN_S + 1.5
# A relayed path tries the direct one when a side's published mapping moves, and otherwise this
# often; a try that nothing answers from the direct endpoint within DIRECT_TRY_S goes back to
# the relay, so a working relayed path is broken for at most that long.
DIRECT_RETRY_S = 300.0
DIRECT_TRY_S = 2.0
# The first try comes this soon after the path went through the relay: a pair whose punch lost
# the race with RELAY_AFTER_S (one side busy with a LAN hint's turn, a lost packet) gets its
# direct path back soon. Each side's try opens its NAT to the other's mapping, so the second
# side's try gets through even when the first side's did not.
DIRECT_FIRST_TRY_S = 2 * REKEY_TIMEOUT_S
# A live path tries a peer's LAN sighting (mDNS) at most this often: sightings are not
# authenticated (only those at an endpoint the peer reported over the API count, paths.py),
# and one that does not answer costs the path up to DIRECT_TRY_S each time.
LAN_TRY_EVERY_S = 60.0
# A peer sends at least a keepalive every PEER_KEEPALIVE_S: one whose received bytes have not
# grown for a keepalive's interval and 3 s more has gone (`meshpeer status`: offline within 30 s).
ONLINE_WINDOW_S = PEER_KEEPALIVE_S + 3.0

# A refused or failed PUT /v1/relay is asked again after this: the rendezvous allows a change
# per RELAY_CHANGE_HOLD_S (5 s) after a burst, and a down one answers nothing anyway.
RELAY_RETRY_S = 5.0
# ... and a refused or failed PUT /v1/lan: the rendezvous rations those as it does relay
# partners. An unchanged report is checked this often (no request: lanreport.py compares).
LAN_REPORT_RETRY_S = 5.0
LAN_REPORT_CHECK_S = 1.0

# Data sent to a peer and nothing back for STALL_S: a mapping may have moved (a NAT reboot, a
# new network). The agent then sends the rendezvous a keepalive at once, so it publishes our new
# mapping now rather than at the next RENDEZVOUS_KEEPALIVE_S, and the peer punches it: most
# traffic (TCP, ping, DNS) is answered within a round trip, and a second is many of them.
# KEEPALIVE_BYTES of sending do not count: WireGuard's own keepalives are not answered.
STALL_S = 1.0
KEEPALIVE_BYTES = 32
# ... at most once per this, however many peers stall: one packet, but not a stream of them.
RENDEZVOUS_KICK_EVERY_S = 3.0

# -- the agent's loops (agent.py, supervise.py) -------------------------------------------------

# The reconcile loop's tick when nothing wakes it: a path's turn (REPUNCH_S) is then late by at
# most a second, and a second of idle rounds costs one UAPI get.
RECONCILE_S = 1.0
# ... and while a path is being made (a punch, a relay turn or a direct try started within
# SETTLING_S), this often: its handshake is seen, and the next step taken, within a quarter of
# a second, not a second. An offline peer
# costs a few UAPI gets a second for half of each REPUNCH_S turn.
SETTLING_TICK_S = 0.25
SETTLING_S = RELAY_AFTER_S + 1.0
# netlink's news of a moved host (netwatch.py) comes as a burst: a link going, an address and
# routes going, then coming on the new network, each an `ip` or DHCP step milliseconds apart.
# The view is read once the burst has been quiet this long, and at least this often while one
# goes on: a roam starts a fifth of a second after the network settles.
NETWORK_SETTLE_S = 0.2
NETWORK_SETTLE_MAX_S = 2.0
# Retries of an unreachable rendezvous double up to this: a rendezvous back after an outage is
# found within half a minute, while a hundred agents retrying cost it a few requests a second.
BACKOFF_MAX_S = 30.0
# What one step of stopping may wait for: four steps keep a stop under the 2 s systemd and the
# lab allow.
STOP_WAIT_S = 0.5
# The watch API brings news within 100 ms; DNS-SD is the slow safety net (wgsd polls as often).
DNS_SD_POLL_S = 30.0
# A failed loop is restarted after RESTART_FIRST_S, doubling up to RESTART_MAX_S; more than
# FAILURES_ALLOWED failures in FAILURE_WINDOW_S end the agent (exit 1) so systemd restarts it:
# a loop failing every 10 s for a minute is broken, not unlucky.
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 10.0
FAILURE_WINDOW_S = 60.0

# -- talking to others (client.py, dnssd.py, lan.py, resolved.py, the backends) -----------------

# One API request (join, leave), TLS handshake included, over a slow mobile link.
REQUEST_TIMEOUT_S = 15.0
# A silent rendezvous host: a connection to it fails within CONNECT_TIMEOUT_S, and an open one
# within DEAD_CONNECTION_S (keepalive probes after KEEPALIVE_IDLE_S of quiet, KEEPALIVE_PROBES
# of them KEEPALIVE_INTERVAL_S apart): the long poll would otherwise hold for 40 s.
CONNECT_TIMEOUT_S = 5.0
KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 3  # 14 s in all: a Wi-Fi handover's gap should not cost a move
KEEPALIVE_PROBES = 3
DEAD_CONNECTION_S = KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_PROBES
# The watch's long poll: the server answers by then even when nothing changed, and 25 s stays
# under the 30 s idle timeouts of common HTTP proxies and NATs' TCP mappings.
WATCH_TIMEOUT_S = 25.0
# The rendezvous instance in use failed every request for this long: move to the next one
# (instances.py). The watch retries after 1, 2 and 4 s, so the move comes at the 4th failure,
# about 7 s after the first; a silent host (no reset, no refusal) costs the long poll's timeout.
FAILOVER_AFTER_S = 5.0
# The first instance of the list (by URL), listed live this long, gets every agent back: a
# relayed pair needs both sides at one instance. Also the first wait before going back to an
# instance left for its silence (doubling to an hour).
FAILBACK_AFTER_S = 30.0
# A changed instance list is written to membership.json at most this often (a move writes at
# once): what a restart needs, without a disk write per answer of a churning list.
LIST_SAVE_EVERY_S = 60.0
# One DNS-SD query: a resolver's usual retry budget; the next poll tries again anyway.
DNS_QUERY_TIMEOUT_S = 3.0
# Resolving one mDNS service: RFC 6762 section 5.2 retries after 1 s, then 2 s; zeroconf takes
# milliseconds.
MDNS_RESOLVE_TIMEOUT_S = 3.0
# mDNS is asked again for a peer that should be on our LAN and is not sighted (neighbours.py):
# this long after one appears (never more often, however the API's list churns), then at
# doubling intervals up to RFC 6762 §5.2's cap of an hour.
MDNS_ASK_FIRST_S = 2.0
MDNS_ASK_MAX_S = 3600.0
# resolvectl answers in milliseconds; a hung systemd-resolved must not hold the start up.
RESOLVECTL_TIMEOUT_S = 5.0
# wireguard-go opens its UAPI socket within milliseconds; past 5 s it is not going to.
USERSPACE_SOCKET_WAIT_S = 5.0
USERSPACE_SOCKET_POLL_S = 0.02  # how often to look meanwhile: a start takes a few of them
# wireguard-go exits within milliseconds of SIGTERM; half of a stop's 2 s, then SIGKILL.
USERSPACE_TERMINATE_S = 1.0

# -- `meshpeer down` (cli.py) -------------------------------------------------------------------

# The agent stops within 2 s of SIGTERM (STOP_WAIT_S per step); more than 5 s means it is stuck.
DOWN_WAIT_S = 5.0
DOWN_POLL_S = 0.05  # how often `down` looks meanwhile: it answers within 50 ms of the stop
