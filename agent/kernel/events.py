"""The ring-buffer record of bpf/http_event.h, mirrored once in ctypes, and its decoder."""

from __future__ import annotations

import ctypes
import socket
import struct
from dataclasses import dataclass

# Constants of bpf/http_event.h (tests/kernel/test_events.py checks they agree).
EV_REQ_START = 1
EV_REQ_CONT = 2
EV_RESP_START = 3
EV_CLOSE = 4
EV_BLIND = 5
EV_EXIT = 6

BLIND_TLS = 1
BLIND_H2 = 2
BLIND_OTHER = 3
BLIND_KINDS = {BLIND_TLS: "tls", BLIND_H2: "http2", BLIND_OTHER: "other_protocol"}

ROLE_SERVER = 1
ROLE_CLIENT = 2

F_HDR_DONE = 0x01
F_TRUNCATED = 0x02
F_BY_CONTENT = 0x04
F_PEER_INET = 0x08
F_PEER_INET6 = 0x10

SC_READ = 1
SC_READV = 2
SC_RECVFROM = 3
SC_RECVMSG = 4
SC_WRITE = 5
SC_WRITEV = 6
SC_SENDTO = 7
SC_SENDMSG = 8
SC_SENDFILE = 9
SC_CLOSE = 10
# read/write/readv/writev also work on files and pipes; the others only on sockets.
SOCKET_ONLY_SYSCALLS = frozenset({SC_RECVFROM, SC_RECVMSG, SC_SENDTO, SC_SENDMSG})

CTR_RECORDS = 0
CTR_RINGBUF_DROPS = 1
CTR_TRUNCATED = 2
CTR_CONN_MAP_FULL = 3
CTR_IO_MAP_FULL = 4
CTR_TARGETS_FULL = 5
CTR_FORKS = 6
CTR_BY_CONTENT = 7
CTR_SENDFILE = 8
CTR_WAKEUPS = 9
CTR_NO_ENTER = 10
CTR_BLIND_TLS = 11
CTR_BLIND_H2 = 12
CTR_BLIND_OTHER = 13
CTR_SPLIT_LINE = 14
CTR_PRIMED = 15
CTR_TAIL_FAILED = 16
CTR_NUM = 17

# Names under which KernelCollector.stats() reports the in-kernel counters.
COUNTER_NAMES = {
    CTR_RECORDS: "records",
    CTR_RINGBUF_DROPS: "ring_drops",
    CTR_TRUNCATED: "truncated_captures",
    CTR_CONN_MAP_FULL: "map_full",
    CTR_IO_MAP_FULL: "io_map_full",
    CTR_TARGETS_FULL: "targets_full",
    CTR_FORKS: "children_followed",
    CTR_BY_CONTENT: "classified_by_content",
    CTR_SENDFILE: "sendfile_calls",
    CTR_WAKEUPS: "wakeups",
    CTR_NO_ENTER: "syscalls_unseen_at_entry",
    CTR_BLIND_TLS: "blind_tls",
    CTR_BLIND_H2: "blind_http2",
    CTR_BLIND_OTHER: "blind_other_protocol",
    CTR_SPLIT_LINE: "split_request_lines",
    CTR_PRIMED: "primed_syscalls",
    CTR_TAIL_FAILED: "unscanned_captures",
}

RESP_CAPTURE = 64
BLIND_CAPTURE = 16


class HttpEvent(ctypes.Structure):
    """ctypes mirror of ``struct http_event`` (the fixed header of each record)."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("conn_ns", ctypes.c_uint64),
        ("last_read_ns", ctypes.c_uint64),
        ("last_write_ns", ctypes.c_uint64),
        ("rd_bytes", ctypes.c_uint64),
        ("wr_bytes", ctypes.c_uint64),
        ("ret", ctypes.c_int64),
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("fd", ctypes.c_int32),
        ("cap_len", ctypes.c_uint16),
        ("cap_off", ctypes.c_uint16),
        ("kind", ctypes.c_uint8),
        ("role", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("syscall", ctypes.c_uint8),
        ("carried", ctypes.c_uint8),
        ("detail", ctypes.c_uint8),
        ("peer_port", ctypes.c_uint16),
        ("peer_addr", ctypes.c_uint8 * 16),
    ]


_CTYPE_FORMAT = {
    ctypes.c_uint64: "Q", ctypes.c_int64: "q", ctypes.c_uint32: "I", ctypes.c_int32: "i",
    ctypes.c_uint16: "H", ctypes.c_uint8: "B",
}


def _struct_format() -> struct.Struct:
    """A struct.Struct equal to HttpEvent, for decoding without a ctypes object per record."""
    fmt, pos = "<", 0
    for name, ctype in HttpEvent._fields_:
        off = getattr(HttpEvent, name).offset
        code = f"{ctype._length_}s" if issubclass(ctype, ctypes.Array) else _CTYPE_FORMAT[ctype]
        fmt += "x" * (off - pos) + code
        pos = off + ctypes.sizeof(ctype)
    fmt += "x" * (ctypes.sizeof(HttpEvent) - pos)
    return struct.Struct(fmt)


_HEADER = _struct_format()
HEADER_SIZE = _HEADER.size
assert HEADER_SIZE == ctypes.sizeof(HttpEvent)


@dataclass(slots=True)
class Event:
    """One decoded record: the header fields plus the captured bytes."""

    ts_ns: int
    conn_ns: int
    last_read_ns: int
    last_write_ns: int
    rd_bytes: int
    wr_bytes: int
    ret: int
    tgid: int
    tid: int
    fd: int
    cap_len: int
    cap_off: int
    kind: int
    role: int
    flags: int
    syscall: int
    data: bytes = b""
    carried: int = 0  # REQ_START: leading bytes of data that earlier syscalls moved
    detail: int = 0  # BLIND: BLIND_*
    peer_port: int = 0  # the connection's other end (see F_PEER_*): host order, 0 unknown
    peer_addr: bytes = b""  # 16 bytes, network order: IPv4 in the first 4


def peer_of(ev: Event) -> tuple[str, int]:
    """The printable peer address (IPv6 without brackets) and port of a record's connection,
    or ("", 0) when the kernel did not see it."""
    if ev.flags & F_PEER_INET:
        return socket.inet_ntop(socket.AF_INET, ev.peer_addr[:4]), ev.peer_port
    if ev.flags & F_PEER_INET6:
        return socket.inet_ntop(socket.AF_INET6, ev.peer_addr[:16]), ev.peer_port
    return "", 0


class RecordError(ValueError):
    """A ring-buffer record shorter than its header says."""


def decode(raw: bytes) -> Event:
    """Decode one ring-buffer record (header followed by ``cap_len`` captured bytes)."""
    if len(raw) < HEADER_SIZE:
        raise RecordError(f"record of {len(raw)} bytes is shorter than the {HEADER_SIZE}-byte header")
    fields = _HEADER.unpack_from(raw)
    ev = Event(*fields[:16])
    ev.carried, ev.detail, ev.peer_port, ev.peer_addr = fields[16:20]
    end = HEADER_SIZE + ev.cap_len
    if len(raw) < end:
        raise RecordError(f"record of {len(raw)} bytes announces {ev.cap_len} captured bytes")
    ev.data = bytes(raw[HEADER_SIZE:end])
    return ev
