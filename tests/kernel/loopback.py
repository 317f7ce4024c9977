"""A connected loopback TCP pair for the exchange scripts (imported from the script's own
directory, which Python puts first on sys.path when it runs a script)."""

from __future__ import annotations

import socket


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(client, server) ends of one loopback TCP connection, Nagle off on both so that every
    send is its own segment and each syscall boundary stays exact."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server
