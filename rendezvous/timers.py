"""Every protocol time and limit of the rendezvous, with where its value comes from.

WireGuard's come from the whitepaper section 6 and agree with the kernel, wireguard-go and
boringtun (see shared/reference/wireguard-protocol.md).
"""

from __future__ import annotations

from meshpeer.common.limits import MAX_RELAY_PARTNERS

REJECT_AFTER_TIME_S = 180.0  # a session's keys are refused this long after the handshake
REKEY_AFTER_TIME_S = 120.0  # initiators rehandshake this often
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1  # counters at or past this are never accepted
REPLAY_WINDOW = 8128  # packets behind the newest still accepted once (kernel, wireguard-go)
INITIATION_MIN_INTERVAL_S = 0.02  # at most 50 initiations a second are processed per peer
COOKIE_SECRET_LIFETIME_S = 120.0  # the cookie secret Rm is replaced this often
UNDER_LOAD_HOLD_S = 1.0  # once under load, stay so this long (the kernel does too)
UNDER_LOAD_WINDOW_S = 1.0  # initiations are counted per window this long, to compare with:
# Initiations a second above which the responder asks for cookies. A full handshake costs about
# 0.4 ms of CPU here, so this keeps handshake work to about a fifth of one core under a flood.
UNDER_LOAD_INITIATIONS_PER_S = 500
COOKIE_LIFETIME_S = 120.0  # an initiator uses a received cookie this long (whitepaper 5.4.7)
SESSIONS_PER_PEER = 2  # the current session and the previous one, as WireGuard keeps them

# -- what the rendezvous does for its peers -------------------------------------------------------

# A peer's published endpoint may move twice at once, then once per 5 s: a NAT reboot (or two)
# is published at the next keepalive, while a member sending keepalives from 16 ports (1,229
# registry revisions a second, each waking every watcher, emptying DNS caches and making every
# agent punch again) gets one move per 5 s.
ENDPOINT_HOLD_S = 5.0
ENDPOINT_MOVES_BURST = 2.0
# A watcher that is woken waits this long for more changes, so a burst reaches it as one answer.
WATCH_COALESCE_S = 0.02
# Full snapshots of the peer list, per credential: one may come at once, then one per this long.
# An agent needs one at start and after a long disconnection; at 50,000 peers one is 10 MB.
FULL_SNAPSHOT_INTERVAL_S = 10.0
FULL_SNAPSHOT_BURST = 2.0
# A watch (long poll) waits this long for a change when the agent names no timeout, and never
# longer than the maximum: under the 60 s that proxies commonly allow an idle response, and
# above the agent's own 25 s (peer/client.py WATCH_TIMEOUT_S), which it sends explicitly.
DEFAULT_WATCH_S = 30.0
MAX_WATCH_S = 60.0

# -- what one client may cost ---------------------------------------------------------------------

# A request's headers must have arrived this long after its connection opened (or after the
# previous answer on it): a slowloris holds a descriptor 10 s, not for ever. Agents send a
# request in one write.
HTTP_HEADER_TIMEOUT_S = 10.0
HTTP_BODY_TIMEOUT_S = 10.0  # and its body (64 KiB at most) this long after the headers
TLS_HANDSHAKE_TIMEOUT_S = 10.0  # asyncio's default is 60 s
HTTP_CONNECTIONS_PER_CLIENT = 256  # an office behind one NAT: one watch per agent, plus joins
HTTP_SHUTDOWN_S = 1.0  # a stopping server waits this long for answers in flight
DNS_TCP_CONNECTIONS_PER_CLIENT = 8  # RFC 7766 6.2.2: a client needs one, pipelined
DNS_TCP_CONNECTIONS = 256
DNS_TCP_IDLE_S = 10.0  # RFC 7766 6.2.3: a few seconds between queries, then close
DNS_TCP_LIFETIME_S = 60.0  # and no connection for longer, whatever it asks (AXFR included)
HTTP_KEEPALIVE_S = 15.0  # an idle kept-alive connection closes after this (aiohttp: 1 hour)
# Out of descriptors (EMFILE and the like): stop accepting this long, so the loop serves the
# connections it has instead of spinning on accept (asyncio itself waits 1 s) ...
ACCEPT_PAUSE_S = 0.1
# ... and warn about it at most this often: a flood must not flood the log too.
RESOURCE_WARNING_EVERY_S = 60.0

# -- the admin CLI --------------------------------------------------------------------------------

# `rendezvous health` gives up on a server that has not answered by then: a live one answers
# in milliseconds, and a probe (systemd, compose) must not hang.
HEALTH_TIMEOUT_S = 3.0

# -- the registry ---------------------------------------------------------------------------------

# What the responder observes is written behind: an endpoint move within this (a burst of moves
# shares one commit; agents learn of moves from memory, not disk, so this only bounds what a
# crash loses) ...
ENDPOINT_FLUSH_S = 0.02
# ... and handshake times and replay floors within this (a lost second of them re-admits at most
# the initiations of that second, which the responder's 20 ms flood limit bounds).
LAZY_FLUSH_S = 1.0
# How soon a CLI write (peer remove, route grant) in another process reaches DNS and watchers:
# reading the store's commit marker once per poll is cheap, and agents poll every second or so.
FOREIGN_POLL_S = 0.05
# However another process's change is announced (following.py), the follower also looks this
# often: the bound on a change's delay should an announcement be lost.
FOLLOW_SAFETY_POLL_S = 1.0
# PostgreSQL: how soon a lost LISTEN connection (pglisten.py) is opened again; the safety poll
# above carries the changes meanwhile, so there is no hurry that would hammer a failing server.
PG_LISTEN_RETRY_S = 1.0
# Each serving instance stamps its row in the database's list of instances this often, and is
# listed to members while its stamp is younger than the second: three missed stamps (a paused
# or partitioned instance) take it off. Agents fail over in ~10 s (issue 18), so a dead instance
# lingers in the list about as long as one failover.
INSTANCE_HEARTBEAT_S = 5.0
INSTANCE_LIVE_S = 15.0
# How often a serving instance compacts the change log (one row per peer key) and forgets
# instances not stamped for FORGET_INSTANCE_AFTER_S (data folders no longer used).
TIDY_EVERY_S = 600.0
FORGET_INSTANCE_AFTER_S = 86400.0
# At most this many instances are listed: the join answer and every watch carry the list, and a
# mesh needs two or three (the agent tries them in turn).
MAX_LISTED_INSTANCES = 16
# How long a writer waits for another process's SQLite lock before failing: a CLI write while
# the server flushes waits, a wedged process is reported (SQLite's default is 0: fail at once).
SQLITE_BUSY_TIMEOUT_S = 10.0
# PostgreSQL (--database): at most this many connections per rendezvous. Its transactions run one
# at a time, as SQLite's; the others serve the follow loop's polls and the API's reads beside one.
PG_POOL_SIZE = 4
# How long connecting may take before the server counts as unreachable (asyncpg's own default is
# 60 s: too long for a `rendezvous token create` to sit silent).
PG_CONNECT_TIMEOUT_S = 10.0
# The longest one statement may wait (on another instance's row lock, say): as SQLite's busy
# timeout above.
PG_COMMAND_TIMEOUT_S = 10.0
# The longest a join token may live: long enough for a fleet's provisioning images, short enough
# that a forgotten token does not outlive the deployment.
MAX_TOKEN_LIFETIME_S = 10 * 365 * 86_400.0
# The longest duration a flag such as --expires parses at all (a typo's guard; the token's own
# limit is the one above).
MAX_DURATION_S = 100 * 365 * 86_400

# -- the relay -----------------------------------------------------------------------------------

# A relayed pair's bulk traffic: 100 Mbit/s per sending peer, a second of it at once. A site's
# relayed link is capped here, not the rendezvous's uplink shared by every pair.
RELAY_BYTES_PER_S = 12_500_000.0
RELAY_BURST_BYTES = 12_500_000.0
RELAY_PARTNERS_PER_PEER = MAX_RELAY_PARTNERS  # mac1 is tried against at most this many keys
# Initiations a member may send through us: WireGuard sends one per peer per 5 s at most while
# a handshake goes unanswered (REKEY_TIMEOUT), so every partner of a member (64 it named, 64 that
# named it) retrying at once is 26 a second, and all of them at once (a restart) fits the burst.
# Each initiation costs a mac1 per partner (a member with 128 partners and no limit held the
# loop with 8,000 junk initiations a second), and initiations are all a member can push to a
# partner that never answers it: this keeps that to 7 KB/s, not the 100 Mbit/s of bulk traffic.
RELAY_INITIATIONS_PER_S = 50.0
RELAY_INITIATIONS_BURST = 2 * RELAY_PARTNERS_PER_PEER
# A member's endpoint relays only while authenticated keepalives come from it: agents and
# `peer add --config` devices send one every 10 s, so six missed is a member gone, and its NAT
# may give the mapping to a stranger (who must not relay as it, nor receive its partners'
# traffic). Endpoints loaded from the store at start are trusted from the first datagram for
# as long as a member's WireGuard may take to rehandshake with a restarted rendezvous.
RELAY_ENDPOINT_FRESH_S = 60.0
RELAY_STORED_ENDPOINT_GRACE_S = 2 * REJECT_AFTER_TIME_S
# A peer may change its relay partners 4 times at once, then once per 5 s: an agent changes them
# when a pair falls back to the relay or finds a direct path (all its pairs in one request),
# while each change is a registry revision that wakes every watcher.
RELAY_CHANGES_BURST = 4.0
RELAY_CHANGE_HOLD_S = 5.0
# Index routes a member's handshakes may leave here: WireGuard keeps three sessions per peer
# (previous, current, next), so eight per partner is room to spare.
RELAY_ROUTES_PER_PEER = 8 * RELAY_PARTNERS_PER_PEER
# A device that cannot run the agent (`peer add --config`) keeps the rendezvous alive as agents
# do, so a NAT rebinding is news at the next keepalive; towards mesh peers, the 25 s WireGuard
# suggests for peers behind NATs.
CONFIG_RENDEZVOUS_KEEPALIVE_S = 10
CONFIG_PEER_KEEPALIVE_S = 25

# -- the WireGuard port's reader thread (udp.py) --------------------------------------------------

# The reader thread looks at its stop flag at least this often (its receive timeout): a stop
# waits no longer than this for it, well inside the 2 s a Ctrl-C may take.
READER_WAKE_S = 0.2
