"""The agent that runs on every NATed machine: WireGuard backends, discovery and reconcile."""
