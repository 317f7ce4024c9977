"""When the collector may assemble records, and for how long: while the target rests.

Copying records out of the ring is cheap and always done at once. Assembling them (parsing
HTTP, joining requests to responses) costs ~15-25 µs per request in Python, and done beside
a target that is serving requests it lengthens them: nginx at 25k requests/s on two cores
kept its throughput but its p99 went from 0.3 ms to 2-3 ms while the agent assembled on the
"spare" core. So records wait in memory while requests flow, and are assembled once none
has arrived for QUIET_GAP_S and the host is quiet (at least QUIET of its CPU time idle since
the last look, from /proc/stat), with a share of that idle time: a load phase is assembled
when it ends, a trickle of requests in its gaps. Past a soft limit of buffered bytes
assembly runs regardless (disturbing beats losing); past a hard limit the ring is not
drained and the kernel counts what it drops (a loss, never silent).
"""

from __future__ import annotations

import os
import time
from typing import Callable

IDLE_SHARE = 0.8  # of the idle CPU seen since the last look; the rest stays idle
MAX_SLICE_S = 0.002  # longest assembly slice between two drains of the ring
QUIET = 0.75  # assemble only while at least this share of the host's CPU time was idle
QUIET_GAP_S = 0.05  # ... and no record has arrived for this long
STAT_EVERY_S = 0.01  # /proc/stat is read at most this often (~30 µs a read; it counts in 10 ms jiffies)


def _idle_jiffies(fd: int) -> int:
    # pread, not a buffered file: a buffered seek(0) is served from the buffer and would
    # return the first read's numbers for ever.
    fields = os.pread(fd, 256, 0).split(b"\n", 1)[0].split()  # "cpu  user nice system idle iowait ..."
    return int(fields[4]) + int(fields[5])


class IdleBudget:
    """``budget()`` -> seconds of assembly allowed now; ``spent(s)`` after using them."""

    def __init__(self, soft_bytes: int, stat_path: str = "/proc/stat",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.soft_bytes = soft_bytes
        self._clock = clock
        self._hz = os.sysconf("SC_CLK_TCK")
        self._ncpu = os.cpu_count() or 1
        self._stat: int | None = None  # fd, kept open: read up to 100 times a second
        try:
            self._stat = os.open(stat_path, os.O_RDONLY | os.O_CLOEXEC)
            self._idle = _idle_jiffies(self._stat)
        except (OSError, ValueError, IndexError):
            self.close()  # no /proc/stat: assemble as records come
        self._banked = 0.0
        self._last = clock()
        self.forced = 0  # slices run past the soft limit

    def budget(self, backlog_bytes: int, since_record_s: float = float("inf")) -> float:
        """Assembly seconds allowed now, given how many bytes wait and how long ago the
        last record arrived."""
        if backlog_bytes >= self.soft_bytes:
            self.forced += 1
            return MAX_SLICE_S
        if self._stat is None:
            return MAX_SLICE_S
        now = self._clock()
        if since_record_s < QUIET_GAP_S:  # requests are flowing: nothing now
            # (/proc/stat is not read here: the first look after the flow stops spans the
            # busy time, finds the host was not quiet and starts a fresh window)
            self._banked = 0.0
            return 0.0
        if now - self._last < STAT_EVERY_S:  # /proc/stat moves in jiffies: spend the bank
            return min(self._banked, MAX_SLICE_S)
        idle = self._read_idle(None)
        if idle is None:
            return MAX_SLICE_S
        elapsed, self._last = now - self._last, now
        # Idle CPU-seconds of the whole host (jiffies are coarse; the bank evens them out).
        # Assembly runs only while the host is quiet: assembling beside a busy target, even
        # on a spare core, measurably lengthened its requests (p99 x2-4 for nginx at 25k/s).
        seen = (idle - self._idle) / self._hz
        self._idle = idle
        if seen >= QUIET * self._ncpu * elapsed:  # at most one CPU's worth: one thread assembles
            self._banked = min(self._banked + IDLE_SHARE * min(seen, elapsed), 4 * MAX_SLICE_S)
        else:
            self._banked = 0.0
        return min(self._banked, MAX_SLICE_S)

    def _read_idle(self, default: int | None) -> int | None:
        try:
            return _idle_jiffies(self._stat)
        except (OSError, ValueError, IndexError, TypeError):
            self.close()  # /proc/stat went away: assemble as records come
            return default

    def spent(self, seconds: float) -> None:
        self._banked -= seconds

    def close(self) -> None:
        if self._stat is not None:
            os.close(self._stat)
            self._stat = None

