"""The public coordinator: WireGuard handshake responder, registry, HTTP API and admin CLI."""
