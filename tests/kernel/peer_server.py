"""target_server.py's handler behind a chosen accept call: the process the peer tests trace.

--family 4|6 listens on 127.0.0.1 or ::1. --accept chooses how connections are accepted:
  python       socket.accept() (CPython calls accept4 with a sockaddr buffer)
  accept       libc accept(fd, &sockaddr_storage, &len)
  accept4-null libc accept4(fd, NULL, NULL, SOCK_CLOEXEC), as libuv (Node.js) does
  accept-short libc accept with a 28-byte buffer the call is told is 16 bytes long, the
               rest filled with 0xff (an IPv6 peer does not fit: the kernel truncates)
--blocking accepts in a loop of blocking calls instead of after select(), so that the main
thread sits inside accept while nothing connects. Prints "port <n>" once it listens.
"""

from __future__ import annotations

import argparse
import ctypes
import http.server
import os
import socket

from target_server import Handler  # the script's directory is first on sys.path

libc = ctypes.CDLL(None, use_errno=True)
libc.accept.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
libc.accept4.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]


def libc_accept(fd: int, mode: str) -> int:
    if mode == "accept4-null":
        return libc.accept4(fd, None, None, socket.SOCK_CLOEXEC)
    buf = ctypes.create_string_buffer(b"\xff" * 128, 128)
    size = ctypes.c_int(16 if mode == "accept-short" else 128)
    return libc.accept(fd, ctypes.addressof(buf), ctypes.addressof(size))


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    mode = "python"

    def get_request(self):
        if self.mode == "python":
            return super().get_request()
        fd = libc_accept(self.socket.fileno(), self.mode)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return socket.socket(fileno=fd), ("", 0)  # the address is what the kernel test judges


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=["4", "6"], default="4")
    ap.add_argument("--accept", choices=["python", "accept", "accept4-null", "accept-short"], default="python")
    ap.add_argument("--blocking", action="store_true")
    args = ap.parse_args()
    Server.address_family = socket.AF_INET6 if args.family == "6" else socket.AF_INET
    Server.mode = args.accept
    srv = Server(("::1" if args.family == "6" else "127.0.0.1", 0), Handler)
    print(f"port {srv.server_address[1]}", flush=True)
    if not args.blocking:
        srv.serve_forever()
    while True:
        srv.process_request(*srv.get_request())  # a thread per connection


if __name__ == "__main__":
    main()
