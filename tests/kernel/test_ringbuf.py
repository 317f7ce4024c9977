"""The bulk ring-buffer reader against a real BPF ring: every committed record once, in order,
across wrap-arounds, discarded records skipped; and the pacing of assembly by idle CPU."""

from __future__ import annotations

import ctypes
import os
import struct
import time

import pytest

from agent.kernel.backlog import Backlog
from agent.kernel.pacing import MAX_SLICE_S, IdleBudget
from agent.kernel.ringbuf import DISCARD_BIT, RingReader, SlotSum, records

# Each getppid() of the test process writes one 72-byte record (80 with its header: 4096 is
# no multiple of it, so records straddle the end of the 1-page data area) carrying a
# sequence number. Every 7th is reserved and then discarded.
PROGRAM = rb"""
BPF_RINGBUF_OUTPUT(ring, 1);
BPF_ARRAY(seq, u64, 1);
struct rec { u64 seq; u8 fill[64]; };
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != TGID) return 0;
    u32 zero = 0;
    u64 *n = seq.lookup(&zero);
    if (!n) return 0;
    u64 s = __sync_fetch_and_add(n, 1);
    struct rec *r = ring.ringbuf_reserve(sizeof(struct rec));
    if (!r) return 0;
    r->seq = s;
    if (s % 7 == 6) ring.ringbuf_discard(r, 0); else ring.ringbuf_submit(r, 0);
    return 0;
}
"""


def test_records_skips_discarded_and_honours_alignment():
    def rec(payload: bytes, discard: bool = False) -> bytes:
        hdr = struct.pack("<II", len(payload) | (DISCARD_BIT if discard else 0), 0)
        return hdr + payload + b"\0" * (-len(payload) % 8)

    chunk = rec(b"abc") + rec(b"gone", discard=True) + rec(b"12345678") + rec(b"")
    assert [bytes(r) for r in records(chunk)] == [b"abc", b"12345678", b""]


@pytest.mark.kernel
def test_reader_takes_every_committed_record_in_order_across_wraps(kernel_ok):
    from bcc import BPF

    bpf = BPF(text=PROGRAM, cflags=[f"-DTGID={os.getpid()}"])
    libc = ctypes.CDLL(None, use_errno=True)
    reader = RingReader(bpf[b"ring"].map_fd, os.sysconf("SC_PAGE_SIZE"))
    try:
        got = []
        for _ in range(40):  # 40 batches of 30 records: ~20 trips round a 4 KiB ring
            for _ in range(30):
                libc.syscall(110)  # getppid, through the syscall so no libc cache answers
            got += [struct.unpack_from("<Q", r)[0] for r in records(reader.take())]
        assert reader.take() == b""
        assert reader.pending() == 0
    finally:
        reader.close()
        bpf.cleanup()
    want = [s for s in range(40 * 30) if s % 7 != 6]
    assert got == want


@pytest.mark.kernel
def test_backlog_keeps_every_record_in_order_across_arenas_and_reuses_them(kernel_ok):
    from bcc import BPF

    bpf = BPF(text=PROGRAM, cflags=[f"-DTGID={os.getpid()}"])
    libc = ctypes.CDLL(None, use_errno=True)
    reader = RingReader(bpf[b"ring"].map_fd, os.sysconf("SC_PAGE_SIZE"))
    # 64 KiB arenas (~800 records each) and a reserve of two: 6,000 records fill several
    # arenas; assembling as we go lets the same few be reused.
    backlog = Backlog(arena_bytes=64 << 10, reserve_bytes=128 << 10)
    try:
        while backlog.top_up():
            pass
        assert backlog.arenas_made == 2
        got, waiting = [], 0
        for i in range(200):
            for _ in range(30):
                libc.syscall(110)  # getppid
            waiting += backlog.copy_from(reader)
            if i % 40 == 39:  # assemble everything waiting, as the collector does once load stops
                while backlog:
                    chunk = backlog.first()
                    got += [struct.unpack_from("<Q", r)[0] for r in records(chunk)]
                    waiting -= len(chunk)
                    backlog.pop()
                assert backlog.bytes == waiting == 0
        assert reader.pending() == 0
        # 40 rounds of 30 records (~96 KiB) at a time: at most a few arenas, not one per round
        assert backlog.arenas_made <= 4
    finally:
        backlog.close()
        reader.close()
        bpf.cleanup()
    assert got == [s for s in range(200 * 30) if s % 7 != 6]


# PROGRAM plus per-CPU counters of the ring bytes each CPU finished with, as
# bpf/http_trace.bpf.c keeps them: record + header, 8-aligned, added after the commit (or
# the discard). UNDER=1 leaves every 5th record out of the count: counters that lag.
COUNTED = PROGRAM.replace(rb"struct rec { u64 seq; u8 fill[64]; };", rb"""struct rec { u64 seq; u8 fill[64]; };
BPF_F_TABLE("array", u32, u64, done, 64 * 8, BPF_F_MMAPABLE);
static __always_inline void counted(u64 s) {
    u32 slot = bpf_get_smp_processor_id() * 8;
    u64 *d = done.lookup(&slot);
    if (d && !(UNDER && s % 5 == 4))
        __sync_fetch_and_add(d, (sizeof(struct rec) + 8 + 7) & ~7ULL);
}""").replace(rb"ring.ringbuf_discard(r, 0); else ring.ringbuf_submit(r, 0);",
              b"ring.ringbuf_discard(r, 0); else ring.ringbuf_submit(r, 0);\n    counted(s);")


@pytest.mark.kernel
@pytest.mark.parametrize("under", [0, 1], ids=["exact-counters", "lagging-counters"])
def test_reader_skips_the_header_walk_only_when_the_counters_cover_the_run(kernel_ok, under):
    from bcc import BPF

    bpf = BPF(text=COUNTED, cflags=[f"-DTGID={os.getpid()}", f"-DUNDER={under}"])
    libc = ctypes.CDLL(None, use_errno=True)
    table = bpf[b"done"]
    committed = SlotSum(table.map_fd, len(table), 8)
    reader = RingReader(bpf[b"ring"].map_fd, os.sysconf("SC_PAGE_SIZE"), committed)
    try:
        got = []
        for _ in range(40):  # as above: ~20 trips round a 4 KiB ring
            for _ in range(30):
                libc.syscall(110)  # getppid
            got += [struct.unpack_from("<Q", r)[0] for r in records(reader.take())]
        assert reader.pending() == 0 and reader.peeks == 40
        if under:  # never equal to the producer position: every run is walked
            assert reader.unwalked == 0
        else:  # this thread wrote every record before each take: none was busy
            assert committed() == reader.consumed and reader.unwalked == 40
    finally:
        reader.close()
        committed.close()
        bpf.cleanup()
    assert got == [s for s in range(40 * 30) if s % 7 != 6]


def test_a_backlog_arena_must_hold_the_largest_record():
    with pytest.raises(ValueError, match="at least 64 KiB"):
        Backlog(arena_bytes=4096)


HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count()


@pytest.mark.parametrize("idle_share, backlog, granted", [
    (0.0, 1000, False),  # the host had no idle CPU: records wait
    (0.5, 1000, False),  # half busy (a target under load): records still wait
    (1.0, 1000, True),  # quiet: a slice
    (1.0, 0, True),  # nothing waits: still a grant, unused
], ids=["busy-host", "half-busy-host", "quiet-host", "no-backlog"])
def test_assembly_runs_only_while_the_host_is_quiet(tmp_path, idle_share, backlog, granted):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 5000 0 0 0 0 0 0\n")
    now = [100.0]
    pacing = IdleBudget(soft_bytes=1 << 20, stat_path=str(stat), clock=lambda: now[0])
    idle = round(idle_share * NCPU * 0.2 * HZ)  # jiffies idle over the next 200 ms
    stat.write_text(f"cpu  100 0 100 {5000 + idle} 0 0 0 0 0 0\n")
    now[0] += 0.2
    grant = pacing.budget(backlog)
    assert (grant == MAX_SLICE_S) if granted else grant == 0.0
    if not granted:
        assert pacing.forced == 0
    else:  # a look within 10 ms does not read /proc/stat again: it spends what is banked
        pacing.spent(4 * MAX_SLICE_S - 0.001)  # the bank is full after 200 quiet ms
        stat.write_text(f"cpu  100 0 100 {5000 + 2 * idle} 0 0 0 0 0 0\n")
        now[0] += 0.001
        assert pacing.budget(backlog) == pytest.approx(0.001)
    pacing.close()


def test_no_assembly_while_records_flow_even_on_a_quiet_host(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 5000 0 0 0 0 0 0\n")
    now = [100.0]
    pacing = IdleBudget(soft_bytes=1 << 20, stat_path=str(stat), clock=lambda: now[0])
    stat.write_text(f"cpu  100 0 100 {5000 + NCPU * HZ} 0 0 0 0 0 0\n")
    now[0] += 1.0
    assert pacing.budget(1000, since_record_s=0.01) == 0.0
    assert pacing.budget(1000, since_record_s=1.0) == MAX_SLICE_S  # the flow stopped
    pacing.close()


def test_past_the_soft_limit_assembly_runs_even_on_a_busy_host(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 5000 0 0 0 0 0 0\n")
    pacing = IdleBudget(soft_bytes=1 << 20, stat_path=str(stat))
    assert pacing.budget(1 << 20) == MAX_SLICE_S and pacing.forced == 1
    pacing.close()


def test_idle_time_is_read_afresh_from_proc_stat_each_time():
    from agent.kernel.pacing import _idle_jiffies

    def fresh() -> int:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
        return int(fields[4]) + int(fields[5])

    fd = os.open("/proc/stat", os.O_RDONLY)
    try:
        first = _idle_jiffies(fd)
        deadline = time.monotonic() + 5
        while (later := fresh()) == first:
            if time.monotonic() > deadline:
                pytest.skip("the host had no idle CPU for 5 s")
            time.sleep(0.01)
        assert _idle_jiffies(fd) >= later  # a cached first read would still say `first`
    finally:
        os.close(fd)
