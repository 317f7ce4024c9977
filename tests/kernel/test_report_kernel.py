"""The report and summary carry the kernel's self-loss, blind spots, sizes and clock (pure
Python: evidence built from the collector's own stats composer and clock map)."""

from __future__ import annotations

from collections import Counter

import pytest

from agent.kernel import stats as kstats
from agent.kernel.clock import ClockMap, ClockSample
from agent.kernel.probes import ProbeConfig
from conformance import build_report, evaluate, render_summary, validate_report
from tests.conformance.builders import NO_LOSS, RunBuilder

SEC = 1_000_000_000


def collector_stats(kernel: dict[str, int] | None = None, assembler: dict[str, int] | None = None,
                    samples: list[dict] | None = None, user: dict[str, int] | None = None) -> dict:
    """kernel_stats exactly as KernelCollector.stats() composes them."""
    counters = {"records": 100, "ring_drops": 0, "truncated_captures": 0, "map_full": 0, "io_map_full": 0,
                "targets_full": 0, "unscanned_captures": 0, **(kernel or {})}
    return kstats.compose(counters, [counters["ring_drops"], 0], Counter(user or {}),
                          Counter(assembler or {}), samples or [], {"primed": 1}, ProbeConfig().sizes())


def clock(step_ns: int = 0) -> dict:
    c = ClockMap(ClockSample(1_700_000_000 * SEC, 40, mono_ns=5 * SEC))
    c.add(ClockSample(1_700_000_000 * SEC + step_ns, 40, mono_ns=6 * SEC))
    c.close(ClockSample(1_700_000_000 * SEC + step_ns + 100, 60, mono_ns=9 * SEC))
    return c.info()


def report_for(tmp_path, kernel_stats: dict, clock_info: dict | None = None, ebpf: bool = True):
    b = RunBuilder(tmp_path / "run", ebpf=ebpf, kernel_stats=kernel_stats,
                   degraded_reason="" if ebpf else "--no-ebpf")
    for _ in range(5):
        b.request()
    ev = b.build()
    if clock_info is not None:
        ev.meta.clock = clock_info
    rep = build_report(ev, evaluate(ev), tool_version="0.1.0")
    assert validate_report(rep) == []
    return rep


TLS_HELLO = "16030100f4010000f00303"


def test_blind_spots_sizes_and_loss_detail_reach_the_report_and_the_summary(tmp_path):
    stats = collector_stats(
        kernel={"blind_tls": 2, "blind_http2": 1, "syscalls_unseen_at_entry": 3, "map_full": 0,
                "io_map_full": 0},
        assembler={"upgraded": 1, "blind_server_tls": 2, "blind_server_http2": 1, "orphan_responses": 0},
        samples=[{"tgid": 7, "fd": 5, "role": "server", "kind": "tls", "first_bytes": TLS_HELLO}])
    rep = report_for(tmp_path, stats, clock())
    k = rep["measurements"]["kernel"]
    assert k["blind_spots"] == {"tls": 2, "http2": 1, "other_protocol": 0, "upgraded": 1,
                                "in_flight_at_attach": 3, "orphan_responses": 0, "sendfile_calls": 0,
                                "samples": [{"tgid": 7, "fd": 5, "role": "server", "kind": "tls",
                                             "first_bytes": TLS_HELLO}]}
    assert k["loss"] == 0 and k["ring_drops_per_cpu"] == [0, 0]
    assert k["map_full"] == {"connections": 0, "syscalls": 0, "targets": 0}
    assert k["sizes"]["ringbuf_pages"] == 4096 and k["sizes"]["max_connections"] == 65536
    text = render_summary(rep)
    assert "note: blind spots, not parsed: 2 TLS, 1 HTTP/2, 1 upgraded connections" in text
    assert "3 syscalls were in flight" in text
    assert "WARNING" not in text


def test_a_stepped_wall_clock_is_reported_and_warned_about(tmp_path):
    rep = report_for(tmp_path, collector_stats(), clock(step_ns=2 * SEC))
    c = rep["measurements"]["clock"]
    assert (c["stepped"], c["steps"], c["samples"]) == (True, 1, 3)
    assert c["start"] == {"offset_ns": 1_700_000_000 * SEC, "uncertainty_ns": 40, "mono_ns": 5 * SEC}
    assert c["end"]["uncertainty_ns"] == 60 and c["drift_ns"] == 2 * SEC + 100
    assert c["uncertainty_ns"] >= 2 * SEC, "the step bounds what a Unix time near it is worth"
    assert "WARNING: the wall clock was stepped during the run (by up to 2000.000 ms)" in render_summary(rep)


def test_an_unstepped_clock_has_start_end_and_its_uncertainty(tmp_path):
    c = report_for(tmp_path, collector_stats(), clock())["measurements"]["clock"]
    assert (c["stepped"], c["warning"], c["uncertainty_ns"], c["drift_ns"]) == (False, "", 60, 100)


@pytest.mark.parametrize("ebpf,stats", [
    (True, dict(NO_LOSS)),
    (True, {**NO_LOSS, "blind_spots": ["TLS payloads", "HTTP/2 and gRPC"]}),
    (False, {}),
], ids=["evidence-before-these-fields", "old-blind-spot-list", "degraded"])
def test_evidence_without_the_new_fields_still_gives_a_valid_report(tmp_path, ebpf, stats):
    rep = report_for(tmp_path, stats, ebpf=ebpf)
    k = rep["measurements"]["kernel"]
    assert (k["blind_spots"], k["map_full"], k["sizes"], rep["measurements"]["clock"]) == (None, None, None, None)
    assert "blind spots" not in render_summary(rep)


def test_loss_outside_the_named_counters_makes_kernel_truth_inconclusive(tmp_path):
    # a record that did not decode: not a ring drop, truncation or full map, yet a loss
    stats = collector_stats(user={"bad_records": 2})
    assert stats["loss"] == 2
    rep = report_for(tmp_path, stats, clock())
    status = {c["id"]: c["status"] for c in rep["checks"]}
    assert status["KT-001"] == "inconclusive" and status["KT-003"] == "inconclusive"
    kt7 = next(c for c in rep["checks"] if c["id"] == "KT-007")
    assert kt7["status"] == "inconclusive" and kt7["observed"]["other_loss"] == 2
    assert rep["measurements"]["kernel"]["loss"] == 2


@pytest.mark.parametrize("kernel,key,value", [
    ({"ring_drops": 5}, "ring_drops", 5),
    ({"io_map_full": 1}, "map_full", 1),
    ({"targets_full": 2}, "map_full", 2),
    ({"truncated_captures": 1}, "truncated_captures", 1),
], ids=["ring-drops", "syscall-map-full", "target-map-full", "truncated"])
def test_every_kind_of_kernel_loss_is_seen_by_the_gate(tmp_path, kernel, key, value):
    rep = report_for(tmp_path, collector_stats(kernel=kernel), clock())
    kt7 = next(c for c in rep["checks"] if c["id"] == "KT-007")
    assert (kt7["status"], kt7["observed"][key]) == ("inconclusive", value)
    assert "other_loss" not in kt7["observed"], "the named counters explain all of it"
    assert next(c for c in rep["checks"] if c["id"] == "KT-001")["status"] == "inconclusive"
