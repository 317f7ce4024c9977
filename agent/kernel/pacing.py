"""How much CPU the collector may spend assembling now: the host's idle time, not the target's.

Copying records out of the ring is cheap and always done at once. Assembling them (parsing
HTTP, joining requests to responses) costs ~10 µs per request in Python; done while the
target saturates the host, it takes that CPU from the target, and the agent then measures
a slower service than the one that runs without it. So assembly takes a share of the CPU
the host left idle since the last look (from /proc/stat), and the records wait in memory
meanwhile; a bounded load phase is assembled once it ends. Past a soft limit of buffered
bytes assembly runs regardless (disturbing beats losing), past a hard limit the ring is not
drained and the kernel counts what it drops (a loss, never silent).
"""

from __future__ import annotations

import os
import time

IDLE_SHARE = 0.8  # of the idle CPU seen since the last look; the rest stays idle
MAX_SLICE_S = 0.005  # longest assembly slice between two drains of the ring


def _idle_jiffies(f) -> int:
    f.seek(0)
    fields = f.readline().split()  # "cpu  user nice system idle iowait ..."
    return int(fields[4]) + int(fields[5])


class IdleBudget:
    """``budget()`` -> seconds of assembly allowed now; ``spent(s)`` after using them."""

    def __init__(self, soft_bytes: int, stat_path: str = "/proc/stat") -> None:
        self.soft_bytes = soft_bytes
        self._hz = os.sysconf("SC_CLK_TCK")
        try:
            self._stat = open(stat_path, "rb")  # noqa: SIM115 (kept open: read 50 times a second)
            self._idle = _idle_jiffies(self._stat)
        except (OSError, ValueError, IndexError):
            self._stat = None  # no /proc/stat: assemble as records come, as before
        self._banked = 0.0
        self._last = time.monotonic()
        self.deferred_s = 0.0  # wall time during which records waited for idle CPU
        self.forced = 0  # slices run past the soft limit

    def budget(self, backlog_bytes: int) -> float:
        """Assembly seconds allowed now, given how many bytes wait."""
        if backlog_bytes >= self.soft_bytes:
            self.forced += 1
            return MAX_SLICE_S
        if self._stat is None:
            return MAX_SLICE_S
        now = time.monotonic()
        try:
            idle = _idle_jiffies(self._stat)
        except (OSError, ValueError, IndexError):
            self._stat = None
            return MAX_SLICE_S
        elapsed, self._last = now - self._last, now
        # Idle CPU-seconds of the whole host (jiffies are coarse; the bank evens them out),
        # at most one CPU's worth: assembly runs on one thread.
        seen = min((idle - self._idle) / self._hz, elapsed)
        self._idle = idle
        self._banked = min(self._banked + IDLE_SHARE * max(seen, 0.0), 4 * MAX_SLICE_S)
        grant = min(self._banked, MAX_SLICE_S)
        if backlog_bytes and grant <= 0.0:
            self.deferred_s += elapsed
        return grant

    def spent(self, seconds: float) -> None:
        self._banked -= seconds

    def close(self) -> None:
        if self._stat is not None:
            self._stat.close()
            self._stat = None
