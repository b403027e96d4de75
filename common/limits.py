"""Limits of the API's contract that both sides hold: the rendezvous refuses more, and the
agent treats more in an answer as not the API's."""

from __future__ import annotations

MAX_ROUTES = 64  # routes one peer may ask for, or carry
# Peers one peer may name as its relay partners: the relay tries an initiation's mac1 against
# each partner of its sender, so this bounds that work per datagram.
MAX_RELAY_PARTNERS = 64
# LAN endpoints one peer reports (PUT /v1/lan): the addresses it announces on mDNS, a host on
# wire and Wi-Fi (as hints.py keeps per key from mDNS).
MAX_LAN_ENDPOINTS = 2
