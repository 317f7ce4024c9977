"""Blind spots with real eBPF: connections that speak TLS, HTTP/2 or another protocol are
counted once each, by role, with their first bytes; HTTP/1.x on the same server still counts."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from tests.kernel.conftest import send_load, wait_for, wait_requests
from tests.kernel.test_kernel_truth import counter_delta

pytestmark = pytest.mark.kernel

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def send_raw(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass


def tls_hello(port: int) -> None:
    """A real TLS handshake attempt (Python's ssl) against a plain HTTP server."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ssl.create_default_context().wrap_socket(raw, server_hostname="localhost"):
                pass
    except (OSError, ssl.SSLError):
        pass


CASES = [
    pytest.param(tls_hello, "tls", "1603", id="tls-client-hello"),
    pytest.param(lambda port: send_raw(port, H2_PREFACE), "http2", H2_PREFACE[:16].hex(), id="http2-preface"),
    pytest.param(lambda port: send_raw(port, b"\x00\x00\x00\x08\x04\xd2\x16\x2f"), "other_protocol", "00000008",
                 id="postgres-ssl-request"),
]


@pytest.mark.parametrize("speak,kind,first_bytes", CASES)
def test_a_non_http_connection_to_a_server_is_one_counted_blind_spot(collector, start_server, speak, kind,
                                                                       first_bytes):
    server = start_server()
    collector.add_target(server.pid)
    before = collector.stats()
    speak(server.port)
    sent = send_load(server.port, 5, 1)  # HTTP/1.1 next to it is still seen
    got = wait_requests(collector, server.pid, 5)
    assert {r.header("traceparent") for r in got} == {s.traceparent for s in sent}
    wait_for(lambda: collector.drain() >= 0 and counter_delta(collector, before, f"blind_server_{kind}") == 1,
             what=f"one {kind} blind spot")
    stats = collector.stats()
    others = {"tls", "http2", "other_protocol"} - {kind}
    assert all(counter_delta(collector, before, f"blind_server_{o}") == 0 for o in others)
    assert stats["blind_spots"][kind] - before["blind_spots"][kind] == 1
    sample = [x for x in stats["blind_spots"]["samples"] if x["tgid"] == server.pid]
    assert [(x["role"], x["kind"]) for x in sample] == [("server", kind)]
    assert sample[0]["first_bytes"].startswith(first_bytes)
    collector.remove_target(server.pid)


def test_an_outbound_tls_connection_is_a_client_side_blind_spot(collector, start_server):
    sut = start_server()
    collector.add_target(sut.pid)
    before = collector.stats()
    listener = socket.create_server(("127.0.0.1", 0))  # not TLS, not a target: takes the hello

    def accept_one() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)

    t = threading.Thread(target=accept_one, daemon=True)
    t.start()
    [sent] = send_load(sut.port, 1, 1, path=lambda i: f"/tls?port={listener.getsockname()[1]}")
    assert sent.status == 200
    t.join(10)
    listener.close()
    wait_requests(collector, sut.pid, 1)
    wait_for(lambda: collector.drain() >= 0 and counter_delta(collector, before, "blind_client_tls") == 1,
             what="the outbound TLS connection to be counted")
    assert counter_delta(collector, before, "client_requests") == 0, "no HTTP/1.x went out"
    collector.remove_target(sut.pid)
