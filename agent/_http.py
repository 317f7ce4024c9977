"""HTTP plumbing shared by the intake: a threaded background server, body reading, user agents."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
import zlib
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from urllib.parse import SplitResult, urlsplit

from agent.errors import InputError, ObsconformError

log = logging.getLogger(__name__)

# An idle keep-alive connection is dropped after this long, so exporters that vanish
# do not pin a handler thread forever.
IDLE_TIMEOUT_S = 60.0


@lru_cache(maxsize=1)
def tool_version() -> str:
    try:
        return metadata.version("obsconform")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def user_agent(prefix: str) -> str:
    """``prefix/<version>``, e.g. ``obsconform-agent/0.1.0``."""
    return f"{prefix}/{tool_version()}"


def parse_listen(value: str, option: str, example: str = "127.0.0.1:4318") -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` with an IP literal (or ``localhost``) → (host, port);
    port 0 means any free port. InputError names ``option`` when the value is malformed."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise InputError(f"{option} {value!r}: give HOST:PORT, e.g. {example}")
    host = host.strip("[]")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError as e:
        raise InputError(f"{option} {value!r}: the host must be an IP address, e.g. {example}") from e
    return host, int(port_s)


def client_target(url: str, timeout_s: float, param: str = "url") -> SplitResult:
    """Check a client's target URL and timeout (ValueError naming the parameter); the parts."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{param} must be an http:// or https:// URL, got {url!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    return parts


class BodyError(ValueError):
    """A request body could not be read: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_body(handler: BaseHTTPRequestHandler, limit: int) -> bytes:
    """Read the request body (Content-Length or chunked), refusing more than ``limit`` bytes."""
    te = (handler.headers.get("Transfer-Encoding") or "").lower()
    if "chunked" in te:
        return _read_chunked(handler, limit)
    length_s = handler.headers.get("Content-Length")
    if not length_s:
        return b""
    try:
        length = int(length_s)
    except ValueError:
        raise BodyError(400, f"bad Content-Length {length_s!r}") from None
    if length < 0:
        raise BodyError(400, f"bad Content-Length {length_s!r}")
    if length > limit:
        raise BodyError(413, f"body of {length} bytes exceeds the {limit}-byte limit")
    body = handler.rfile.read(length)
    if len(body) != length:
        raise BodyError(400, f"body truncated: {len(body)} of {length} bytes")
    return body


def _read_chunked(handler: BaseHTTPRequestHandler, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = handler.rfile.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BodyError(400, f"bad chunk size line {line[:40]!r}") from None
        if size < 0:
            raise BodyError(400, f"bad chunk size line {line[:40]!r}")
        if size == 0:
            # Skip trailers up to the empty line that ends the message.
            while handler.rfile.readline(1024).strip():
                pass
            return b"".join(parts)
        total += size
        if total > limit:
            raise BodyError(413, f"chunked body exceeds the {limit}-byte limit")
        chunk = handler.rfile.read(size)
        if len(chunk) != size or handler.rfile.readline(4) not in (b"\r\n", b"\n"):
            raise BodyError(400, "chunked body truncated")
        parts.append(chunk)


def decode_content(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo a Content-Encoding (identity or gzip), bounding the inflated size (gzip bombs)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise BodyError(415, f"unsupported Content-Encoding {encoding!r} (identity or gzip)")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise BodyError(400, f"bad gzip body: {e}") from e
    if len(out) > limit:
        raise BodyError(413, f"inflated body exceeds the {limit}-byte limit")
    if not inflater.eof:
        raise BodyError(400, "bad gzip body: truncated")
    return out


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler that does not print a line per request to stderr."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    # Buffered, so status line, headers and body leave in one write: two small writes
    # meet Nagle + delayed ACK on keep-alive connections (40 ms stalls).
    wbufsize = 64 * 1024
    server_version = "obsconform"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass

    def log_error(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s: " + format, self.server.server_address, *args)

    def reply(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()


LINGER_S = 1.0  # how long a closing connection reads away what its client still sends
LINGER_BYTES = 16 << 20


def lingering_close(sock: socket.socket) -> None:
    """Close after reading away what the client still sends. A request refused before its
    body was read (413) leaves bytes unread; close() would then answer them with a reset,
    which can destroy the refusal before the client reads it (it saw EPIPE instead)."""
    try:
        sock.shutdown(socket.SHUT_WR)  # the response is complete: FIN after it
        deadline, total = time.monotonic() + LINGER_S, 0
        while total < LINGER_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:  # the client closed too
                break
            total += len(data)
    except OSError:
        pass
    finally:
        sock.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # bursts of new exporter/driver connections

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(addr, handler)

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):  # type: ignore[no-untyped-def]
        with self._conns_lock:
            self._conns.discard(request)
        lingering_close(request)

    def close_connections(self) -> None:
        # Keep-alive handler threads would otherwise keep serving after stop().
        with self._conns_lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Server6(_Server):
    address_family = socket.AF_INET6


class BackgroundServer:
    """A ThreadingHTTPServer on its own thread; ``handler`` reaches ``owner`` via ``self.server.owner``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], owner: object, host: str, port: int, name: str) -> None:
        self._handler = handler
        self._owner = owner
        self._addr = (host, port)
        self._name = name
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        cls = _Server6 if ":" in self._addr[0] else _Server
        try:
            server = cls(self._addr, self._handler)
        except OSError as e:
            host, port = self._addr
            raise ObsconformError(
                f"the {self._name} cannot listen on {host}:{port} ({e.strerror or e}): choose another address or port"
            ) from e
        server.owner = self._owner  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=self._name, daemon=True
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{self._name} is not started: call start() first")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        # A wildcard listen is reached through loopback.
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self._addr[0], self._addr[0])
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
