"""Monotonic (bpf_ktime_get_ns) to Unix time: measured offsets, their uncertainty, wall-clock steps."""

from __future__ import annotations

import bisect
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


def _is_step(a: ClockSample, b: ClockSample) -> bool:
    elapsed = max(0, b.mono_ns - a.mono_ns)
    allowed = elapsed * MAX_SLEW_PPM // 1_000_000 + a.uncertainty_ns + b.uncertainty_ns + STEP_SLACK_NS
    return abs(b.offset_ns - a.offset_ns) > allowed


class ClockMap:
    """Converts monotonic ns to Unix ns from samples taken at the start, during and at the end.

    Between two consecutive samples the offset is interpolated linearly (NTP slew). If it
    moved more than slew can explain, the wall clock stepped at an unknown moment between
    them: times there keep the earlier offset, the step is listed and the uncertainty
    covers it. Sampling every second or so (the collector does) pins a step to that second.
    """

    def __init__(self, start: ClockSample) -> None:
        self.samples: list[ClockSample] = [start]
        self._monos = [start.mono_ns]
        self.closed = False
        self.steps: list[dict[str, int]] = []  # {after_mono_ns, before_mono_ns, delta_ns}

    @property
    def start(self) -> ClockSample:
        return self.samples[0]

    @property
    def end(self) -> ClockSample | None:
        return self.samples[-1] if self.closed else None

    def add(self, sample: ClockSample) -> bool:
        """Record a sample taken later than the last one; True when the clock stepped between."""
        prev = self.samples[-1]
        if sample.mono_ns <= prev.mono_ns:
            return False
        self.samples.append(sample)
        self._monos.append(sample.mono_ns)
        if _is_step(prev, sample):
            self.steps.append({"after_mono_ns": prev.mono_ns, "before_mono_ns": sample.mono_ns,
                               "delta_ns": sample.offset_ns - prev.offset_ns})
            return True
        return False

    def close(self, end: ClockSample) -> None:
        self.add(end)
        self.closed = True

    @property
    def stepped(self) -> bool:
        return bool(self.steps) or (len(self.samples) > 1 and _is_step(self.samples[0], self.samples[-1]))

    def offset_at(self, mono_ns: int) -> int:
        s = self.samples
        i = bisect.bisect_right(self._monos, mono_ns) - 1
        if i < 0:
            return s[0].offset_ns
        if i >= len(s) - 1:  # after the last sample: its offset is the latest known
            return s[-1].offset_ns
        a, b = s[i], s[i + 1]
        if _is_step(a, b):
            return a.offset_ns
        frac = (mono_ns - a.mono_ns) / (b.mono_ns - a.mono_ns)
        return a.offset_ns + round((b.offset_ns - a.offset_ns) * frac)

    def to_unix(self, mono_ns: int | None) -> int | None:
        if mono_ns is None:
            return None
        return mono_ns + self.offset_at(mono_ns)

    @property
    def uncertainty_ns(self) -> int:
        unc = max(x.uncertainty_ns for x in self.samples)
        if self.stepped:
            unc = max([unc, abs(self.samples[-1].offset_ns - self.start.offset_ns)]
                      + [abs(st["delta_ns"]) for st in self.steps])
        return unc

    def info(self) -> dict:
        """For RunMeta.clock: offsets at start and end, uncertainty, drift, steps, a warning."""
        end = self.end
        out = {
            "source": "CLOCK_MONOTONIC (bpf_ktime_get_ns) -> CLOCK_REALTIME",
            "offset_ns": self.start.offset_ns,
            "uncertainty_ns": self.uncertainty_ns,
            "start": asdict(self.start),
            "end": asdict(end) if end else None,
            "drift_ns": (end.offset_ns - self.start.offset_ns) if end else None,
            "samples": len(self.samples),
            "steps": list(self.steps),
            "stepped": self.stepped,
            "warning": "",
        }
        if self.stepped:
            worst = max([abs(st["delta_ns"]) for st in self.steps] or [abs(out["drift_ns"] or 0)])
            out["warning"] = (f"the wall clock was stepped during the run (by up to {worst / 1e6:.3f} ms): "
                              "Unix times near the step are uncertain by that much")
        return out
