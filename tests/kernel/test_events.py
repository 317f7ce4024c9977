"""agent/kernel/events.py mirrors bpf/http_event.h: layout as clang lays it out, and constants."""

from __future__ import annotations

import ctypes
import os
import re

import pytest

from agent.kernel import events
from agent.kernel.probes import BPF_DIR, HEADER_FILE, PROGRAM_FILE, SLOT_STRIDE, possible_cpus

# A program that only declares a map of the record: bcc builds the map's value type from
# clang's own layout of the struct (explicit __pad fields wherever clang pads).
PROBE_PROGRAM = '#include "http_event.h"\nBPF_ARRAY(layout, struct http_event, 1);\n'


def clang_layout() -> tuple[int, dict[str, tuple[int, int]]]:
    from bcc import BPF

    b = BPF(text=PROBE_PROGRAM.encode(), cflags=[f"-I{BPF_DIR}"])
    try:
        leaf = b[b"layout"].Leaf
        fields = {name: (getattr(leaf, name).offset, getattr(leaf, name).size)
                  for name, *_ in leaf._fields_ if not name.startswith("__pad")}
        return ctypes.sizeof(leaf), fields
    finally:
        b.cleanup()


@pytest.mark.kernel
def test_ctypes_mirror_matches_the_compiled_header(kernel_ok):
    size, fields = clang_layout()
    mirror = {name: (getattr(events.HttpEvent, name).offset, getattr(events.HttpEvent, name).size)
              for name, _ in events.HttpEvent._fields_}
    assert mirror == fields
    assert ctypes.sizeof(events.HttpEvent) == size == events.HEADER_SIZE
    assert size % 8 == 0, "captured bytes must start 8-byte aligned"


def header_defines() -> dict[str, int]:
    text = HEADER_FILE.read_text()
    return {m[1]: int(m[2], 0) for m in re.finditer(r"^#define\s+(HTTP_\w+)\s+(0x[0-9a-fA-F]+|\d+)", text, re.M)}


def test_every_header_constant_has_the_same_value_in_python():
    defines = header_defines()
    assert len(defines) > 30  # the regex really read the header
    for name, value in defines.items():
        py = name.removeprefix("HTTP_")
        assert getattr(events, py) == value, f"{name} = {value} in the header, {getattr(events, py, None)} in events.py"


def test_committed_slot_stride_is_the_same_in_the_program_and_the_reader():
    # A stride that differs would sum the wrong words: the reader would never see the
    # counters equal the producer position (and walk every run), or sum stray words.
    stride = re.search(r"^#define SLOT_STRIDE (\d+)$", PROGRAM_FILE.read_text(), re.M)
    assert stride and int(stride[1]) == SLOT_STRIDE


@pytest.mark.parametrize("text, cpus", [("0\n", 1), ("0-1\n", 2), ("0-3,8-11\n", 12), ("0,2\n", 3)])
def test_possible_cpus_counts_cpu_numbers_not_cpus(tmp_path, text, cpus):
    (tmp_path / "possible").write_text(text)
    assert possible_cpus(str(tmp_path / "possible")) == cpus


def test_possible_cpus_falls_back_to_the_cpu_count(tmp_path):
    assert possible_cpus(str(tmp_path / "absent")) == (os.cpu_count() or 1)


def test_counter_names_cover_every_counter_index():
    assert sorted(events.COUNTER_NAMES) == list(range(events.CTR_NUM))


@pytest.mark.parametrize("cut", [0, events.HEADER_SIZE - 1, events.HEADER_SIZE + 2],
                         ids=["empty", "short-header", "short-capture"])
def test_decode_rejects_short_records(cut):
    head = events.HttpEvent(cap_len=4, kind=events.EV_REQ_START)
    raw = (bytes(head) + b"GET ")[:cut]
    with pytest.raises(events.RecordError, match="bytes"):
        events.decode(raw)


def test_decode_reads_header_and_exactly_cap_len_bytes():
    head = events.HttpEvent(ts_ns=7, tgid=11, tid=12, fd=-1, cap_len=4, cap_off=3,
                            kind=events.EV_REQ_CONT, role=events.ROLE_CLIENT, flags=events.F_HDR_DONE,
                            syscall=events.SC_SENDTO, ret=99, wr_bytes=5)
    ev = events.decode(bytes(head) + b"abcdEXTRA")
    assert (ev.ts_ns, ev.tgid, ev.tid, ev.fd, ev.cap_off, ev.kind, ev.role, ev.flags, ev.syscall,
            ev.ret, ev.wr_bytes, ev.data) == (7, 11, 12, -1, 3, 2, 2, 1, 7, 99, 5, b"abcd")


def test_io_args_shapes_used_for_priming_match_the_program():
    from agent.kernel import inflight

    text = (BPF_DIR / "http_data.h").read_text()
    shapes = {m[1]: int(m[2]) for m in re.finditer(r"^#define\s+SHAPE_(\w+)\s+(\d+)", text, re.M)}
    assert shapes == {name: getattr(inflight, f"SHAPE_{name}")
                      for name in ("BUF", "IOV", "MSG", "NONE", "CONNECT", "SKIP", "ACCEPT")}


@pytest.mark.parametrize("name,args,expected", [
    ("recvfrom", (5, 0x1000, 8192, 0, 0, 0), {"fd": 5, "ptr": 0x1000, "shape": 0, "dir": 0, "cnt": 0}),
    ("recvfrom", (5, 0x1000, 8192, 2, 0, 0), {"shape": 5}),  # MSG_PEEK: its exit is ignored
    ("readv", (7, 0x2000, 3, 0, 0, 0), {"fd": 7, "ptr": 0x2000, "shape": 1, "cnt": 3}),
    ("sendmsg", (9, 0x3000, 0, 0, 0, 0), {"shape": 2, "dir": 1}),
    ("sendfile64", (4, 3, 0, 100, 0, 0), {"fd": 4, "ptr": 0, "shape": 3}),
], ids=["recvfrom", "recvfrom-peek", "readv", "sendmsg", "sendfile"])
def test_a_blocked_syscall_becomes_the_io_args_its_enter_would_have_saved(name, args, expected):
    import platform

    from agent.kernel import inflight

    numbers = inflight.SYSCALL_NUMBERS.get(platform.machine())
    if numbers is None:
        pytest.skip(f"no syscall table for {platform.machine()}")
    fields = inflight.io_args_fields(inflight.InFlight(1, 2, numbers[name], args))
    assert fields["nr"] == numbers[name] and fields["primed"] == 1
    assert {k: fields[k] for k in expected} == expected


@pytest.mark.parametrize("flags, addr, port, expected", [
    (events.F_PEER_INET, bytes([127, 0, 0, 1]) + b"\xee" * 12, 41000, ("127.0.0.1", 41000)),
    (events.F_PEER_INET6, bytes(15) + b"\x01", 41001, ("::1", 41001)),
    (events.F_PEER_INET6, bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 7]), 80, ("::ffff:10.0.0.7", 80)),
    (events.F_BY_CONTENT, bytes([127, 0, 0, 1]) + bytes(12), 41002, ("", 0)),
], ids=["ipv4-ignores-the-other-12-bytes", "ipv6-without-brackets", "ipv4-mapped-stays-ipv6", "no-peer-flag-is-unknown"])
def test_decode_reads_the_peer_and_peer_of_prints_it(flags, addr, port, expected):
    head = events.HttpEvent(kind=events.EV_REQ_START, flags=flags, peer_port=port)
    head.peer_addr[:] = addr
    ev = events.decode(bytes(head))
    assert (ev.peer_port, ev.peer_addr) == (port, addr)
    assert events.peer_of(ev) == expected


@pytest.mark.parametrize("with_buffer, cnt", [(True, 28), (False, 0)], ids=["buffer-size-read-from-memory", "null-like-libuv"])
def test_a_blocked_accept_is_primed_with_its_buffer_and_the_size_in_user_memory(with_buffer, cnt):
    import platform

    from agent.kernel import inflight

    numbers = inflight.SYSCALL_NUMBERS.get(platform.machine())
    if numbers is None:
        pytest.skip(f"no syscall table for {platform.machine()}")
    size = ctypes.c_int(28)  # what a caller passes as *upeer_addrlen: read from /proc/PID/mem
    buf, lenp = (0x7000, ctypes.addressof(size)) if with_buffer else (0, 0)
    fields = inflight.io_args_fields(inflight.InFlight(os.getpid(), 2, numbers["accept4"], (5, buf, lenp, 0, 0, 0)))
    assert {k: fields[k] for k in ("fd", "ptr", "cnt", "shape", "primed")} == \
        {"fd": 5, "ptr": buf, "cnt": cnt, "shape": inflight.SHAPE_ACCEPT, "primed": 1}
