"""DNS-SD naming shared by the rendezvous and the agent.

This folder installs as ``meshpeer.dns`` and has no ``__init__.py`` on purpose: see pyproject.toml.
The service type follows wgsd's layout (``_wireguard._udp.<zone>``, RFC 6763 section 7).
"""

from __future__ import annotations

SERVICE_LABELS: tuple[str, str] = ("_wireguard", "_udp")
