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


def test_piecewise_offsets_between_samples_and_a_step_pinned_between_two():
    clock = ClockMap(ClockSample(1000 * SEC, 50, mono_ns=0))
    assert not clock.add(ClockSample(1000 * SEC + 400, 50, mono_ns=1 * SEC))  # slew
    assert clock.add(ClockSample(1003 * SEC + 400, 50, mono_ns=2 * SEC))  # +3 s: a step
    clock.close(ClockSample(1003 * SEC + 500, 50, mono_ns=3 * SEC))
    assert clock.offset_at(SEC // 2) == 1000 * SEC + 200, "interpolated inside a slewing second"
    assert clock.offset_at(SEC + SEC // 2) == 1000 * SEC + 400, "the stepped second keeps its start offset"
    assert clock.offset_at(2 * SEC + SEC // 2) == 1003 * SEC + 450, "after the step: the new offset"
    assert clock.steps == [{"after_mono_ns": SEC, "before_mono_ns": 2 * SEC, "delta_ns": 3 * SEC}]
    info = clock.info()
    assert info["stepped"] and info["samples"] == 4 and "stepped during the run (by up to 3000.000 ms)" in info["warning"]


@pytest.mark.kernel
def test_a_wall_clock_step_during_collection_is_found_and_later_times_follow_it(kernel_ok, start_server,
                                                                                  monkeypatch):
    from agent.kernel import KernelCollector, collector as collector_mod
    from tests.kernel.conftest import send_load, wait_for, wait_requests

    stepped = []
    real_measure = collector_mod.measure

    def measure_with_step(samples: int = 25) -> ClockSample:
        # what the realtime clock would read if someone set it 3 s ahead at "stepped"
        s = real_measure(samples)
        return ClockSample(s.offset_ns + (3 * SEC if stepped else 0), s.uncertainty_ns, s.mono_ns)

    monkeypatch.setattr(collector_mod, "measure", measure_with_step)
    server = start_server()
    with KernelCollector(poll_ms=10) as kc:
        kc.add_target(server.pid)
        [before_step] = send_load(server.port, 1, 1)
        stepped.append(True)
        wait_for(lambda: kc.clock_info()["steps"], timeout=5, what="the collector to sample the step")
        [after_step] = send_load(server.port, 1, 1)
        wait_requests(kc, server.pid, 2)
        got = {r.header("traceparent"): r for r in kc.finish()}
    info = kc.clock_info()
    assert info["stepped"] and len(info["steps"]) == 1 and 2.9 * SEC < info["steps"][0]["delta_ns"] < 3.1 * SEC
    assert info["warning"].startswith("the wall clock was stepped during the run")
    # the client's clock was not really stepped: before the step kernel times match it, after
    # it they are 3 s ahead, as a SUT's own timestamps would be
    assert abs(got[before_step.traceparent].t_req_first - before_step.t_send_ns) < 50_000_000
    assert abs(got[after_step.traceparent].t_req_first - after_step.t_send_ns - 3 * SEC) < 50_000_000
