"""Consumes a BPF ring buffer in bulk through its mmap, one copy per poll instead of one callback per record.

libbpf's consumer (what bcc's ring_buffer_poll wraps) calls back into Python once per record:
~1.5 µs of ctypes per record, a third of a core at 200k records/s. Here the committed
records between the consumer and producer positions are copied out in one slice and the
consumer position is advanced once; the records are split out of the chunk later, by
whoever assembles them (``records(chunk)``), off the drain path.

Layout (linux/bpf.h, kernel/bpf/ringbuf.c): page 0 is the consumer position (read-write);
page 1 the producer position; then the data area, mapped twice in a row so that a record
that wraps around the end reads as one contiguous slice. Every record has an 8-byte header:
a u32 length whose top bits say BUSY (reserved, not committed yet) and DISCARD, and a u32
page offset; records are 8-byte aligned.
"""

from __future__ import annotations

import mmap
import os
import select
import struct
from typing import Callable, Iterator

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
LEN_MASK = ~(BUSY_BIT | DISCARD_BIT) & 0xFFFFFFFF
HDR_SIZE = 8
COMMITTED_TRIES = 4  # reads of the committed counters before a run's headers are walked

_U32 = struct.Struct("<I").unpack_from  # for copied chunks only: see RingReader


class RingReader:
    """Reader of one BPF_MAP_TYPE_RINGBUF map: ``chunk = reader.take()``, or
    ``view, cut = reader.peek()``, copy, ``reader.release(len(view))``.

    ``committed``, if given, returns how many ring bytes the producers have finished with
    (committed or discarded), counted as the producer position counts them (each record's
    length plus its header, 8-aligned) and never ahead of the truth: see ``peek``."""

    def __init__(self, map_fd: int, data_size: int, committed: Callable[[], int] | None = None) -> None:
        page = mmap.PAGESIZE
        if data_size <= 0 or data_size % page or data_size & (data_size - 1):
            raise ValueError(f"ring-buffer size must be a power-of-two number of pages, got {data_size}")
        self.size = data_size
        self._mask = data_size - 1
        self._committed = committed
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._producer = mmap.mmap(map_fd, page + 2 * data_size, mmap.MAP_SHARED, mmap.PROT_READ,
                                       offset=page)
        except BaseException:
            self._consumer.close()
            raise
        # The shared positions and headers are read and written through native-format
        # memoryviews: one aligned 4- or 8-byte access each. struct's "<Q" goes byte by
        # byte, and a torn consumer position read by the kernel made it refuse records as
        # if the ring were full; a torn header would be misread here.
        self._cons = memoryview(self._consumer).cast("Q")
        self._prod = memoryview(self._producer)[:8].cast("Q")
        self._data = memoryview(self._producer)[page:]
        self._hdrs = self._data.cast("I")
        self._fd = os.dup(map_fd)  # our own: the map outlives bcc's fd until we close this one
        self._epoll = select.epoll()
        # Edge-triggered: a ring polls readable while any record is pending, so a level-
        # triggered wait returns at once under load and the reader spins on small takes.
        # Edge-triggered, it returns on the kernel's forced wake-ups (every WAKEUP_BYTES
        # written per CPU; agent/kernel/probes.py) or at the timeout.
        self._epoll.register(self._fd, select.EPOLLIN | select.EPOLLET)
        self._pos = self._cons[0]
        self.fill_peak = 0  # the most bytes found waiting in the ring: how close it came to full
        self.peeks = self.unwalked = 0  # runs found, and those released on the counters alone

    def wait(self, timeout_s: float) -> None:
        """Block until the kernel forces a wake-up (records waiting; one that came since the
        last wait counts) or ``timeout_s`` passes."""
        self._epoll.poll(timeout_s)

    def pending(self) -> int:
        """Bytes written by producers and not consumed yet (committed or not)."""
        return self._prod[0] - self._pos

    @property
    def consumed(self) -> int:
        """Bytes released to the kernel since the ring was made (the consumer position)."""
        return self._pos

    def peek(self, max_bytes: int | None = None) -> tuple[memoryview, bool]:
        """The committed records from the consumer position on, not released yet.

        Returns a view of them in the ring (headers included; see ``records``) and whether
        ``max_bytes`` cut the run short (more committed records follow). Stops at the first
        record still being written: records are committed out of order across CPUs but
        consumed in order. The view is valid until ``release``."""
        start, committed = self._pos, self._committed
        # The counters are read before the producer position (x86-64 keeps loads in program
        # order). If the bytes committed when the counters were read equal the bytes reserved
        # when the position was read, every record of the run is committed and its headers
        # need no walk (~150 ns a record here). A producer busy at that moment makes them
        # differ by a record or two, so a few more reads are tried (each ~0.2 µs).
        if committed is None:
            done, end = -1, self._prod[0]
        else:
            for _ in range(COMMITTED_TRIES):
                done, end = committed(), self._prod[0]
                if done == end:
                    break
        self.fill_peak = max(self.fill_peak, end - start)
        if end == start:
            return self._data[:0], False
        self.peeks += 1
        off = start & self._mask
        if done == end and (max_bytes is None or end - start <= max_bytes):
            self.unwalked += 1
            return self._data[off:off + end - start], False
        room = end - start if max_bytes is None else min(end - start, max_bytes)
        # Walked in 4-byte words from the slice's offset, never wrapped: the data area is
        # mapped twice, so every header of the slice lies within it (~30 % faster a record
        # than masking each position).
        hdrs, i, stop, cut = self._hdrs, off >> 2, (off + room) >> 2, False
        last = (off + end - start) >> 2
        while i < last:
            hdr = hdrs[i]
            if hdr & BUSY_BIT:
                break
            nxt = i + ((((hdr & LEN_MASK) + HDR_SIZE + 7) >> 3) << 1)
            if nxt > stop:
                cut = True
                break
            i = nxt
        return self._data[off:i << 2], cut

    def release(self, nbytes: int) -> None:
        """Give ``nbytes`` (a peeked run, once copied) back to the kernel."""
        if nbytes:
            # Only after the copy (program order; x86-64 does not reorder a store before
            # earlier loads). The kernel may reuse the space from here on.
            self._pos += nbytes
            self._cons[0] = self._pos

    def take(self, max_bytes: int | None = None) -> bytes:
        """Copy out the committed records (up to ``max_bytes``) and release their space."""
        view, _ = self.peek(max_bytes)
        chunk = bytes(view)
        view.release()
        self.release(len(chunk))
        return chunk

    def close(self) -> None:
        """Unmap and close; idempotent."""
        if self._epoll is None:
            return
        self._epoll.close()
        self._epoll = None
        os.close(self._fd)
        for view in (self._hdrs, self._data, self._prod, self._cons):
            view.release()
        self._producer.close()
        self._consumer.close()

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SlotSum:
    """The sum of every ``stride``-th u64 of a BPF_F_MMAPABLE array map (per-CPU counters
    kept a cache line apart), read through a shared mapping: no syscall per read."""

    def __init__(self, map_fd: int, entries: int, stride: int) -> None:
        size = -(-entries * 8 // mmap.PAGESIZE) * mmap.PAGESIZE
        self._map = mmap.mmap(map_fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        self._words = memoryview(self._map).cast("Q")
        self._slots = self._words[:entries:stride]  # aligned 8-byte loads, never torn

    def __call__(self) -> int:
        return sum(self._slots)

    @property
    def closed(self) -> bool:
        return self._map.closed

    def close(self) -> None:
        if self._map.closed:
            return
        self._slots.release()
        self._words.release()
        self._map.close()


def records(chunk: bytes) -> Iterator[memoryview]:
    """The records of a chunk from ``RingReader.take``, discarded ones skipped."""
    view, pos, end = memoryview(chunk), 0, len(chunk)
    while pos < end:
        hdr = _U32(view, pos)[0]
        length = hdr & LEN_MASK
        if not hdr & DISCARD_BIT:
            yield view[pos + HDR_SIZE:pos + HDR_SIZE + length]
        pos += (length + HDR_SIZE + 7) & ~7
