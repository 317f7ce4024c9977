"""Records copied out of the ring and not assembled yet, held in reused, pre-touched arenas.

Records wait in memory while requests flow (agent/kernel/pacing.py). A saturated nginx makes
~35 MB of them a second, and on the VMs this runs on a page touched for the first time costs
1.5-5 ns a byte (a guest fault, zeroing, and the host backing the page; the balloon driver
hands freed pages back to the host), ten times the copy itself: a fresh ``bytes`` per ring
slice cost the agent ~0.7 µs per nginx request, on the cores the target needed. So the
backlog lives in arenas that are touched once, before load, in the poll loop's idle time
(``top_up``), and reused once their records are assembled. A load longer than the reserve
takes fresh arenas, paying the faults as before; those above the reserve are unmapped when
their records are done.
"""

from __future__ import annotations

import mmap
from collections import deque

from agent.kernel.ringbuf import RingReader

ARENA_BYTES = 4 << 20  # far above a record (header + at most 4 KiB captured)
# Touched arenas kept for reuse: a saturated nginx's first ~200k requests (~300 B each).
RESERVE_BYTES = 64 << 20


class _Arena:
    __slots__ = ("map", "view", "used", "live")

    def __init__(self, size: int) -> None:
        # MAP_POPULATE faults every page in now, in one call, rather than on first copy.
        self.map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
        self.view = memoryview(self.map)
        self.used = 0  # bytes written
        self.live = 0  # chunks in it not assembled yet

    def close(self) -> None:
        self.view.release()
        try:
            self.map.close()
        except BufferError:  # a record view is still held somewhere: unmapped when it goes
            pass


class Backlog:
    """FIFO of chunks of records; ``copy_from(ring)`` appends, ``first``/``pop`` consume."""

    def __init__(self, arena_bytes: int = ARENA_BYTES, reserve_bytes: int = RESERVE_BYTES) -> None:
        if arena_bytes < 64 << 10:
            raise ValueError(f"an arena must hold the largest record: at least 64 KiB, got {arena_bytes}")
        self.arena_bytes = arena_bytes
        self.reserve = max(reserve_bytes // arena_bytes, 0)  # free arenas kept
        self._chunks: deque[tuple[memoryview, _Arena]] = deque()
        self._free: list[_Arena] = []
        self._writing: _Arena | None = None
        self.bytes = 0  # waiting
        self.arenas_made = 0  # arenas mapped so far (reuse keeps this low)

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def copy_from(self, ring: RingReader) -> int:
        """Copy the ring's committed records into the arenas and release them; returns how
        many bytes (records are counted when they are split out: ``ringbuf.records``)."""
        total = 0
        while True:
            arena = self._writing
            if arena is None or arena.used == self.arena_bytes:
                arena = self._next_arena()
            view, cut = ring.peek(self.arena_bytes - arena.used)
            try:
                size = len(view)
                if not size:
                    if cut and arena.used:  # the next record does not fit in what is left
                        self._retire(arena)
                        continue
                    return total
                chunk = arena.view[arena.used:arena.used + size]
                chunk[:] = view
            finally:
                view.release()
            ring.release(size)
            arena.used += size
            arena.live += 1
            self._chunks.append((chunk, arena))
            self.bytes += size
            total += size
            if not cut:
                return total

    def first(self) -> memoryview:
        return self._chunks[0][0]

    def pop(self) -> None:
        """Drop the first chunk (assembled); its arena is reused once it holds no other."""
        chunk, arena = self._chunks.popleft()
        self.bytes -= len(chunk)
        chunk.release()
        arena.live -= 1
        if not arena.live and arena is not self._writing:
            self._recycle(arena)

    def top_up(self) -> bool:
        """Touch one more arena for the reserve if it is short; True if one was made.
        Called when the agent is idle: each costs a few ms of page faults."""
        if len(self._free) >= self.reserve:
            return False
        self._free.append(self._new())
        return True

    def close(self) -> None:
        """Unmap every arena; the backlog is empty afterwards."""
        for chunk, _ in self._chunks:
            chunk.release()
        arenas = {id(a): a for _, a in self._chunks}
        for a in self._free + ([self._writing] if self._writing else []):
            arenas[id(a)] = a
        self._chunks.clear()
        self._free.clear()
        self._writing = None
        self.bytes = 0
        for a in arenas.values():
            a.close()

    def _new(self) -> _Arena:
        self.arenas_made += 1
        return _Arena(self.arena_bytes)

    def _next_arena(self) -> _Arena:
        if self._writing is not None:
            self._retire(self._writing)
        self._writing = self._free.pop() if self._free else self._new()
        return self._writing

    def _retire(self, arena: _Arena) -> None:
        """``arena`` takes no more chunks; reuse it now if none of its chunks wait."""
        if self._writing is arena:
            self._writing = None
        if not arena.live:
            self._recycle(arena)

    def _recycle(self, arena: _Arena) -> None:
        arena.used = 0
        if len(self._free) < self.reserve:
            self._free.append(arena)
        else:
            arena.close()
