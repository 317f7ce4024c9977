"""One HTTP/1.1 exchange over loopback TCP inside one process, with a chosen syscall family.

Usage: io_exchange.py FAMILY TRACEPARENT. Waits for a line on stdin (the test adds this
process as a target meanwhile), then connects to its own listener, sends a POST as the
client, answers it as the server and reads the answer back; prints the request and
response sizes. Both ends run in this one thread, so every syscall boundary is exact.

Families:
  rw        read/write
  vec       readv/writev, head and body in separate iovecs
  msg       recvmsg/sendmsg, likewise
  sock      recv/send
  sendfile  response body by sendfile
  iovs      writev with the request line and each header in its own iovec; readv into
            3- and 9-byte iovecs first, so the request line spans iovecs (status line too)
  msgiovs   sendmsg with one iovec per line; recvmsg_into small buffers
  split     the request line split after 2 bytes ("PO" + "ST /..."), read in two reads
  pieces    status line, headers and body each in their own send() (request likewise)
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile

from loopback import tcp_pair

family, traceparent = sys.argv[1], sys.argv[2]
req_lines = [f"POST /io/{family} HTTP/1.1\r\n", "Host: x\r\n", f"traceparent: {traceparent}\r\n",
             "Content-Length: 4\r\n", "\r\n"]
req_head = "".join(req_lines).encode()
req_body = b"ping"
resp_lines = ["HTTP/1.1 200 OK\r\n", "Content-Length: 5\r\n", "\r\n"]
resp_head = "".join(resp_lines).encode()
resp_body = b"pong!"


def pieces(head: bytes, body: bytes) -> list[bytes]:
    """The message one line per piece; in iovs the first line is cut inside too."""
    lines = [line.encode() for line in (req_lines if head == req_head else resp_lines)]
    if family == "iovs":
        lines = [lines[0][:3], lines[0][3:8], lines[0][8:]] + lines[1:]
    return lines + [body]


def send(sock: socket.socket, head: bytes, body: bytes, *, with_file: bool = False) -> None:
    fd = sock.fileno()
    if family == "rw":
        os.write(fd, head + body)
    elif family == "vec":
        os.writev(fd, [head, body])
    elif family == "iovs":
        assert os.writev(fd, pieces(head, body)) == len(head) + len(body)
    elif family == "msg":
        sock.sendmsg([head, body])
    elif family == "msgiovs":
        assert sock.sendmsg(pieces(head, body)) == len(head) + len(body)
    elif family == "sendfile" and with_file:
        sock.sendall(head)
        with tempfile.TemporaryFile() as f:
            f.write(body)
            f.flush()
            os.sendfile(fd, f.fileno(), 0, len(body))
    elif family == "pieces":
        lines = pieces(head, body)
        head_lines, body_part = lines[:-1], lines[-1]
        sock.sendall(head_lines[0])  # the status / request line alone
        sock.sendall(b"".join(head_lines[1:]))  # then the header fields
        sock.sendall(body_part)  # then the body
    elif family == "split" and head == req_head:
        sock.sendall(head[:2])  # "PO": the peer reads these two bytes on their own
        split_ready.append(head[2:] + body)
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
        elif family == "iovs":
            bufs = [bytearray(3), bytearray(9), bytearray(4096)]
            got = os.readv(fd, bufs)
            chunk = b"".join(bufs)[:got]
        elif family == "msg":
            chunk = sock.recvmsg(4096)[0]
        elif family == "msgiovs":
            bufs = [bytearray(5), bytearray(4096)]
            got = sock.recvmsg_into(bufs)[0]
            chunk = b"".join(bufs)[:got]
        else:
            chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
        if family == "split" and split_ready:
            sock_peer = client if sock is server else server
            sock_peer.sendall(split_ready.pop())  # the rest, after the first two bytes were read
    return data


split_ready: list[bytes] = []
sys.stdin.readline()
client, server = tcp_pair()
send(client, req_head, req_body)
assert recv_exactly(server, len(req_head) + len(req_body)).endswith(req_body)
send(server, resp_head, resp_body, with_file=True)
assert recv_exactly(client, len(resp_head) + len(resp_body)).endswith(resp_body)
for s in (client, server):
    s.close()
print(len(req_head) + len(req_body), len(resp_head) + len(resp_body), flush=True)
