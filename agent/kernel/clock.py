"""Monotonic (bpf_ktime_get_ns) to Unix time: a measured offset and its uncertainty."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

SAMPLES = 25
# NTP may slew the realtime clock by at most 500 ppm; a larger change of the offset
# between two measurements is a step (settimeofday, a VM resume, a manual change).
MAX_SLEW_PPM = 500
STEP_SLACK_NS = 100_000


@dataclass(frozen=True)
class ClockSample:
    """realtime - monotonic at ``mono_ns``, known to within ±``uncertainty_ns``."""

    offset_ns: int
    uncertainty_ns: int
    mono_ns: int


def measure(samples: int = SAMPLES) -> ClockSample:
    """Bracket a CLOCK_MONOTONIC read between two CLOCK_REALTIME reads; keep the tightest."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    real, mono = time.CLOCK_REALTIME, time.CLOCK_MONOTONIC
    get = time.clock_gettime_ns
    best: tuple[int, int, int] | None = None
    for _ in range(samples):
        r1 = get(real)
        m = get(mono)
        r2 = get(real)
        width = r2 - r1
        if width < 0:  # the realtime clock stepped back between the two reads
            continue
        if best is None or width < best[0]:
            best = (width, r1 + width // 2 - m, m)
    if best is None:  # every sample straddled a step: take one more, unbracketed
        m = get(mono)
        return ClockSample(get(real) - m, 1_000_000, m)
    width, offset, m = best
    return ClockSample(offset, (width + 1) // 2, m)


class ClockMap:
    """Converts monotonic ns to Unix ns from a start (and, once known, an end) sample.

    Between two samples the offset is interpolated linearly (NTP slew). If the offset
    moved more than slew can explain, the wall clock stepped at an unknown moment: the
    start offset is kept, ``stepped`` is set and the uncertainty covers the step.
    """

    def __init__(self, start: ClockSample) -> None:
        self.start = start
        self.end: ClockSample | None = None

    def close(self, end: ClockSample) -> None:
        self.end = end

    @property
    def stepped(self) -> bool:
        if self.end is None:
            return False
        elapsed = max(0, self.end.mono_ns - self.start.mono_ns)
        allowed = (elapsed * MAX_SLEW_PPM // 1_000_000 + self.start.uncertainty_ns
                   + self.end.uncertainty_ns + STEP_SLACK_NS)
        return abs(self.end.offset_ns - self.start.offset_ns) > allowed

    def offset_at(self, mono_ns: int) -> int:
        s, e = self.start, self.end
        if e is None or self.stepped or e.mono_ns <= s.mono_ns:
            return s.offset_ns
        frac = min(1.0, max(0.0, (mono_ns - s.mono_ns) / (e.mono_ns - s.mono_ns)))
        return s.offset_ns + round((e.offset_ns - s.offset_ns) * frac)

    def to_unix(self, mono_ns: int | None) -> int | None:
        if mono_ns is None:
            return None
        return mono_ns + self.offset_at(mono_ns)

    @property
    def uncertainty_ns(self) -> int:
        unc = self.start.uncertainty_ns
        if self.end is not None:
            unc = max(unc, self.end.uncertainty_ns)
            if self.stepped:
                unc = max(unc, abs(self.end.offset_ns - self.start.offset_ns))
        return unc

    def info(self) -> dict:
        """For RunMeta.clock: offsets, uncertainty, drift and whether the clock stepped."""
        out = {
            "source": "CLOCK_MONOTONIC (bpf_ktime_get_ns) -> CLOCK_REALTIME",
            "offset_ns": self.start.offset_ns,
            "uncertainty_ns": self.uncertainty_ns,
            "start": asdict(self.start),
            "end": asdict(self.end) if self.end else None,
            "drift_ns": (self.end.offset_ns - self.start.offset_ns) if self.end else None,
            "stepped": self.stepped,
        }
        return out
