"""WireGuard message layouts (whitepaper section 5.4): parse hostile datagrams, build ours.

`parse` checks the size for the declared type before touching any field and raises only
`MalformedMessage`, whatever the bytes.
"""

from __future__ import annotations

import enum
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass


class MalformedMessage(Exception):
    """The datagram is not a WireGuard message of a known type and exact size."""


class MessageType(enum.IntEnum):
    INITIATION = 1
    RESPONSE = 2
    COOKIE_REPLY = 3
    TRANSPORT = 4


# The type is a little-endian u32 whose upper three bytes must be zero.
_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE_REPLY = struct.Struct("<II24s32s")
_TRANSPORT_HEADER = struct.Struct("<IIQ")
INITIATION_SIZE = _INITIATION.size  # 148
RESPONSE_SIZE = _RESPONSE.size  # 92
COOKIE_REPLY_SIZE = _COOKIE_REPLY.size  # 64
TRANSPORT_MIN_SIZE = _TRANSPORT_HEADER.size + 16  # 32: a keepalive, the Poly1305 tag alone
INITIATION_MAC1_END = 116  # mac1 covers bytes [0, 116), mac2 covers [0, 132)
INITIATION_MAC2_END = 132
RESPONSE_MAC1_END = 60
RESPONSE_MAC2_END = 76


@dataclass(frozen=True, slots=True)
class Initiation:
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes


@dataclass(frozen=True, slots=True)
class Transport:
    receiver: int
    counter: int
    ciphertext: bytes


Message = Initiation | Response | CookieReply | Transport
_EXACT_SIZES = {
    MessageType.INITIATION: INITIATION_SIZE,
    MessageType.RESPONSE: RESPONSE_SIZE,
    MessageType.COOKIE_REPLY: COOKIE_REPLY_SIZE,
}
# The largest datagram either UDP port takes. Handshake messages are at most 148 bytes, a
# keepalive 32, a transport message of a 1420-byte tunnel MTU 1452, and a DNS query from an agent
# or dig a few hundred: anything larger is not for us, and the socket drops it (MSG_TRUNC).
MAX_DATAGRAM = 2048


def parse(datagram: bytes) -> Message:
    if not 4 <= len(datagram) <= MAX_DATAGRAM:
        raise MalformedMessage(f"a datagram of {len(datagram)} bytes")
    type_word = int.from_bytes(datagram[:4], "little")
    if type_word not in MessageType.__members__.values():
        raise MalformedMessage(f"unknown message type word {type_word:#x}")
    message_type = MessageType(type_word)
    expected = _EXACT_SIZES.get(message_type)
    if expected is not None and len(datagram) != expected:
        raise MalformedMessage(f"{message_type.name} of {len(datagram)} bytes, not {expected}")
    # Transport plaintext is padded to a multiple of 16 but never past the tunnel's MTU, so a
    # full-size packet (1420 bytes of a 1420 MTU) is not a multiple of 16: only the minimum holds.
    if message_type is MessageType.TRANSPORT and len(datagram) < TRANSPORT_MIN_SIZE:
        raise MalformedMessage(f"transport message of {len(datagram)} bytes")
    return _DECODERS[message_type](datagram)


def parse_counted(datagram: bytes, drops: Counter[str]) -> Message | None:
    """`parse`, for a core that drops what is malformed and counts it."""
    try:
        return parse(datagram)
    except MalformedMessage:
        drops["malformed"] += 1
        return None


def _initiation(datagram: bytes) -> Initiation:
    _, sender, ephemeral, static, timestamp, mac1, mac2 = _INITIATION.unpack(datagram)
    return Initiation(sender, ephemeral, static, timestamp, mac1, mac2, datagram)


def _response(datagram: bytes) -> Response:
    _, sender, receiver, ephemeral, nothing, mac1, mac2 = _RESPONSE.unpack(datagram)
    return Response(sender, receiver, ephemeral, nothing, mac1, mac2, datagram)


def _cookie_reply(datagram: bytes) -> CookieReply:
    _, receiver, nonce, cookie = _COOKIE_REPLY.unpack(datagram)
    return CookieReply(receiver, nonce, cookie)


def _transport(datagram: bytes) -> Transport:
    _, receiver, counter = _TRANSPORT_HEADER.unpack_from(datagram)
    return Transport(receiver, counter, datagram[_TRANSPORT_HEADER.size :])


_DECODERS: dict[MessageType, Callable[[bytes], Message]] = {
    MessageType.INITIATION: _initiation,
    MessageType.RESPONSE: _response,
    MessageType.COOKIE_REPLY: _cookie_reply,
    MessageType.TRANSPORT: _transport,
}


def initiation_body(sender: int, ephemeral: bytes, static: bytes, timestamp: bytes) -> bytes:
    """Bytes [0, 116) of an initiation: everything mac1 covers."""
    packed = _INITIATION.pack(
        MessageType.INITIATION, sender, ephemeral, static, timestamp, b"", b""
    )
    return packed[:INITIATION_MAC1_END]


def response_body(sender: int, receiver: int, ephemeral: bytes, nothing: bytes) -> bytes:
    """Bytes [0, 60) of a response: everything mac1 covers."""
    packed = _RESPONSE.pack(MessageType.RESPONSE, sender, receiver, ephemeral, nothing, b"", b"")
    return packed[:RESPONSE_MAC1_END]


def cookie_reply(receiver: int, nonce: bytes, encrypted_cookie: bytes) -> bytes:
    return _COOKIE_REPLY.pack(MessageType.COOKIE_REPLY, receiver, nonce, encrypted_cookie)


def transport(receiver: int, counter: int, ciphertext: bytes) -> bytes:
    return _TRANSPORT_HEADER.pack(MessageType.TRANSPORT, receiver, counter) + ciphertext
