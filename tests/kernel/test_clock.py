"""Monotonic → Unix conversion: the measured offset, interpolation and step detection."""

from __future__ import annotations

import time

import pytest

from agent.kernel.clock import ClockMap, ClockSample, measure


def test_measured_offset_converts_now_to_the_wall_clock():
    s = measure()
    assert 0 <= s.uncertainty_ns < 1_000_000, "two adjacent clock reads are far below a millisecond apart"
    mono, real = time.clock_gettime_ns(time.CLOCK_MONOTONIC), time.time_ns()
    assert abs(ClockMap(s).to_unix(mono) - real) < 2_000_000


def test_measure_rejects_a_sample_count_below_one():
    with pytest.raises(ValueError, match="samples must be >= 1"):
        measure(0)


SEC = 1_000_000_000


@pytest.mark.parametrize("end_offset,stepped,at_middle", [
    (1000 * SEC + 1_000, False, 1000 * SEC + 500),  # 1 µs slew over 10 s: interpolated
    (1000 * SEC + 50_000_000, True, 1000 * SEC),  # 50 ms in 10 s is a step: start offset kept
    (1000 * SEC - 50_000_000, True, 1000 * SEC),
], ids=["slew", "step-forward", "step-back"])
def test_interpolation_and_step_detection(end_offset, stepped, at_middle):
    clock = ClockMap(ClockSample(1000 * SEC, 50, mono_ns=0))
    clock.close(ClockSample(end_offset, 50, mono_ns=10 * SEC))
    assert clock.stepped is stepped
    assert clock.offset_at(5 * SEC) == at_middle
    info = clock.info()
    assert info["stepped"] is stepped and info["drift_ns"] == end_offset - 1000 * SEC
    assert info["uncertainty_ns"] == (abs(end_offset - 1000 * SEC) if stepped else 50)


def test_none_stays_none():
    assert ClockMap(measure()).to_unix(None) is None
