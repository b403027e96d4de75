"""The agent's client against a real rendezvous API over TLS on loopback: the pin decides."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common import pinning, tokens
from meshpeer.common.errors import InvalidInput
from meshpeer.peer import client, joining
from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous import tls
from meshpeer.rendezvous.api import create_app
from meshpeer.rendezvous.noise import public_bytes
from meshpeer.rendezvous.registry import Registry
from meshpeer.rendezvous.service import Rendezvous


@asynccontextmanager
async def served(data_dir: Path) -> AsyncIterator[Rendezvous]:
    """The API on 127.0.0.1, on a port the kernel chose, with the data folder's certificate."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    given = config.Overrides(
        public_endpoint="127.0.0.1:51820", public_api_url=f"https://127.0.0.1:{port}"
    )
    service = Rendezvous(await Registry.open(data_dir, given))
    assert service.registry.tls_files is not None
    runner = web.AppRunner(create_app(service.registry, service.snapshot, service.counters))
    await runner.setup()
    context = tls.server_context(service.registry.tls_files)
    await web.SockSite(runner, listener, ssl_context=context).start()
    try:
        yield service
    finally:
        await runner.cleanup()
        await service.registry.close()


def now_ms() -> int:
    return int(time.time() * 1000)


def test_the_agent_joins_and_watches_over_pinned_tls(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with served(tmp_path) as service:
            token = tokens.decode(await service.registry.create_token(1, 60))
            assert token.tls_pin == service.registry.tls_pin
            key = X25519PrivateKey.generate()
            membership, _ = await joining.join(token, key, "laptop", (), now_ms())
            assert membership.tls_pin == token.tls_pin
            assert service.registry.authenticate(membership.credential) is not None
            answer = await client.watch(membership, None, None, 0)
            assert [peer.name for peer in answer.peers] == ["laptop"]
            nas = await service.registry.add_peer(public_bytes(X25519PrivateKey.generate()), "nas")
            stranger = public_bytes(X25519PrivateKey.generate())
            held = await client.set_relay(membership, frozenset({nas.public_key, stranger}))
            assert held == frozenset({nas.public_key})  # registered peers only
            await service.registry.remove_peer("laptop")
            with pytest.raises(client.Removed):
                await client.set_relay(membership, frozenset())

    asyncio.run(scenario())


def test_a_token_pinning_another_key_sends_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with served(tmp_path) as service:
            real = tokens.decode(await service.registry.create_token(1, 60))
            (tmp_path / "other").mkdir()
            other = tls.read_pin(tls.ensure_self_signed(tmp_path / "other", "127.0.0.1"))
            forged = replace(real, tls_pin=other)
            with pytest.raises(client.JoinRefused, match=r"does not pin.*nothing was sent"):
                await joining.join(forged, X25519PrivateKey.generate(), "pc", (), now_ms())
            assert sum(service.counters.requests.values()) == 0  # no request reached the API
            assert [t.uses_left for t in await service.registry.list_tokens()] == [1]

    asyncio.run(scenario())


def test_tokens_from_before_tls_and_stray_spaces() -> None:
    with pytest.raises(InvalidInput, match="before the API used TLS"):
        tokens.decode("mp1_eyJhcGkiOiJodHRwOi8veCJ9")
    token = tokens.JoinToken("https://192.0.2.1:51821", bytes(32), bytes(32), None)
    assert tokens.decode(f"  {token.encode()}\n") == token
    plain = tokens.JoinToken("http://192.0.2.1:51821", bytes(32), bytes(32), None)
    with pytest.raises(InvalidInput, match="not https"):
        tokens.decode(plain.encode())
    with pytest.raises(InvalidInput, match="sha256"):
        tokens.decode(replace(token, tls_pin="sha256:zz").encode())


def test_the_pin_is_the_certificates_key_so_a_renewal_keeps_it(tmp_path: Path) -> None:
    files = tls.ensure_self_signed(tmp_path, "192.0.2.1")
    pin = tls.read_pin(files)
    assert tls.ensure_self_signed(tmp_path, "192.0.2.1") == files  # made once, then kept
    assert tls.read_pin(files) == pin
    assert (files.key.stat().st_mode & 0o777) == 0o600
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    renewed = tls._self_signed(key, "rendezvous.example")  # another name, the same key
    assert pinning.pin_of_certificate(renewed.public_bytes(serialization.Encoding.DER)) == pin


def test_a_captive_portals_answer_is_unreachable_not_fatal(tmp_path: Path) -> None:
    """A 200 that is not the API's (HTML, or JSON of another shape): retry later."""

    async def portal(request: web.Request) -> web.Response:
        return web.Response(text="<html>Log in to the hotel Wi-Fi</html>", content_type="text/html")

    async def scenario() -> None:
        async with served(tmp_path) as service:
            token = tokens.decode(await service.registry.create_token(1, 60))
            membership, _ = await joining.join(
                token, X25519PrivateKey.generate(), "pc", (), now_ms()
            )
        files = tls.ensure_self_signed(tmp_path, "127.0.0.1")  # the same key: the same pin
        app = web.Application()
        app.router.add_get("/v1/watch", portal)
        runner = web.AppRunner(app)
        await runner.setup()
        port = int(membership.api_url.rsplit(":", 1)[1])
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls.server_context(files)).start()
        try:
            with pytest.raises(client.Unreachable, match="not as the API does"):
                await client.watch(membership, None, None, 0)
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
