"""One HTTP/1.1 exchange over loopback TCP inside one process, with a chosen syscall family.

Usage: io_exchange.py FAMILY TRACEPARENT. Waits for a line on stdin (the test adds this
process as a target meanwhile), then connects to its own listener, sends a POST as the
client, answers it as the server and reads the answer back; prints the request and
response sizes. Families: rw (read/write), vec (readv/writev, headers and body in separate
iovecs), msg (recvmsg/sendmsg, likewise), sock (recv/send), sendfile (response body by
sendfile).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile

family, traceparent = sys.argv[1], sys.argv[2]
req_head = (f"POST /io/{family} HTTP/1.1\r\nHost: x\r\ntraceparent: {traceparent}\r\n"
            "Content-Length: 4\r\n\r\n").encode()
req_body = b"ping"
resp_head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
resp_body = b"pong!"


def send(sock: socket.socket, head: bytes, body: bytes, *, with_file: bool = False) -> None:
    fd = sock.fileno()
    if family == "rw":
        os.write(fd, head + body)
    elif family == "vec":
        os.writev(fd, [head, body])
    elif family == "msg":
        sock.sendmsg([head, body])
    elif family == "sendfile" and with_file:
        sock.sendall(head)
        with tempfile.TemporaryFile() as f:
            f.write(body)
            f.flush()
            os.sendfile(fd, f.fileno(), 0, len(body))
    else:
        sock.sendall(head + body)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    fd, data = sock.fileno(), b""
    while len(data) < n:
        if family == "rw":
            chunk = os.read(fd, 4096)
        elif family == "vec":
            buf = bytearray(4096)
            chunk = bytes(buf[:os.readv(fd, [buf])])
        elif family == "msg":
            chunk = sock.recvmsg(4096)[0]
        else:
            chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


sys.stdin.readline()
listener = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(listener.getsockname())
server, _ = listener.accept()
send(client, req_head, req_body)
assert recv_exactly(server, len(req_head) + len(req_body)).endswith(req_body)
send(server, resp_head, resp_body, with_file=True)
assert recv_exactly(client, len(resp_head) + len(resp_body)).endswith(resp_body)
for s in (client, server, listener):
    s.close()
print(len(req_head) + len(req_body), len(resp_head) + len(resp_body), flush=True)
