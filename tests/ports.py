"""Ports for servers the tests start.

A port the kernel handed out for bind(("127.0.0.1", 0)) and then released can be handed out
again to the next ephemeral bind or outgoing connection — e.g. the agent's own OTLP receiver
or the load driver's client sockets — before the server under test binds it. Picking ports
below the ephemeral range closes that race: nothing takes them by chance."""

from __future__ import annotations

import random
import socket


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port outside the ephemeral range that nothing listens on or has bound right now."""
    lo, _ = _ephemeral_range()
    top = max(lo - 1, 2048)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(max(1024, top - 12000), top)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below the ephemeral range on {host}")
