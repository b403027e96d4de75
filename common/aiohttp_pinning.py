"""The TLS pin for aiohttp's client, which `rendezvous health` and the lab's tools use (the agent
has its own client, peer/http.py)."""

from __future__ import annotations

import asyncio
import hmac

import aiohttp

from .pinning import PIN_PREFIX, parse_pin, pin_of_certificate


class PinnedKey(aiohttp.Fingerprint):
    """For aiohttp's `ssl=`: accept the server whose certificate holds the pinned public key.

    aiohttp checks a Fingerprint right after the TLS handshake, before it sends a byte of the
    request: a server without the key never sees a token or a credential. (aiohttp's own
    Fingerprint pins the whole certificate, which a renewal would change.)"""

    def __init__(self, pin: str) -> None:
        super().__init__(parse_pin(pin))
        self.pin = pin

    def check(self, transport: asyncio.Transport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        got = pin_of_certificate(der) if der else "none"
        if not hmac.compare_digest(got, self.pin):
            host, port, *_ = transport.get_extra_info("peername")
            raise aiohttp.ServerFingerprintMismatch(
                self.fingerprint, bytes.fromhex(got[len(PIN_PREFIX) :] or "00"), host, port
            )


def client_ssl(pin: str | None) -> PinnedKey | bool:
    """aiohttp's `ssl=` for a token's pin, or the system's CAs for an API behind a TLS proxy."""
    return PinnedKey(pin) if pin else True
