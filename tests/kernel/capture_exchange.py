"""One HTTP/1.1 exchange in one thread whose header blocks have an exact length (kernel copy bounds).

Usage: capture_exchange.py SHAPE TOTAL BODY. Waits for a line on stdin (the test adds this
process as a target meanwhile), connects to its own listener and sends a request whose
bytes in one syscall number exactly TOTAL: the header block, plus a 4-byte body in the
same write when BODY is 1. The server side reads it in one syscall and answers with a
response of the same shape; the client reads that. Prints the X-Pad value used, then the
request and response sizes.

The kernel copies the first 64 bytes of every read and write, then what lies beyond them;
SHAPE picks how the bytes cross that bound:
  buf  write / read of one buffer
  iov  writev / readv with iovecs of 60, 8 and the rest bytes (the bound inside the 2nd)
  msg  sendmsg / recvmsg_into with iovecs of 64 and the rest (the bound between them)
"""

from __future__ import annotations

import os
import socket
import string
import sys

from loopback import tcp_pair

shape, total, with_body = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
BODY = b"ping" if with_body else b""
CUTS = {"buf": [], "iov": [60, 8], "msg": [64]}[shape]


def message(first_line: str, extra: str) -> tuple[bytes, str]:
    """``first_line`` and headers padded with X-Pad so that head + body is ``total`` bytes."""
    fixed = f"{first_line}\r\n{extra}X-Pad: \r\n\r\n".encode()
    # no two neighbouring bytes alike: a copy that lands a few bytes off cannot look right
    pad = "".join(string.ascii_letters[i % 52] for i in range(total - len(BODY) - len(fixed)))
    if not pad:
        raise SystemExit(f"{total} bytes is too short for {first_line!r}")
    return f"{first_line}\r\n{extra}X-Pad: {pad}\r\n\r\n".encode() + BODY, pad


def pieces(data: bytes) -> list[bytes]:
    out, pos = [], 0
    for cut in CUTS:
        out.append(data[pos:pos + cut])
        pos += cut
    return [p for p in out + [data[pos:]] if p]


def send_one(sock: socket.socket, data: bytes) -> None:
    if shape == "buf":
        sent = os.write(sock.fileno(), data)
    elif shape == "iov":
        sent = os.writev(sock.fileno(), pieces(data))
    else:
        sent = sock.sendmsg(pieces(data))
    assert sent == len(data), f"one syscall moved {sent} of {len(data)} bytes"


def recv_one(sock: socket.socket, n: int) -> bytes:
    bufs = [bytearray(c) for c in CUTS] + [bytearray(65536)]
    if shape == "buf":
        data = os.read(sock.fileno(), 65536)
    else:
        got = os.readv(sock.fileno(), bufs) if shape == "iov" else sock.recvmsg_into(bufs)[0]
        data = b"".join(bufs)[:got]
    assert len(data) == n, f"one syscall read {len(data)} of {n} bytes"
    return data


method, extra = ("POST", "Host: x\r\nContent-Length: 4\r\n") if with_body else ("GET", "Host: x\r\n")
request, pad = message(f"{method} /c HTTP/1.1", extra)
response, _ = message("HTTP/1.1 200 OK", f"Content-Length: {len(BODY)}\r\n")
sys.stdin.readline()
client, server = tcp_pair()
send_one(client, request)
assert recv_one(server, len(request)) == request
send_one(server, response)
assert recv_one(client, len(response)) == response
for s in (client, server):
    s.close()
print(pad, len(request), len(response), flush=True)
