"""The benchmark harness reads wrk's report right (a misread figure would be a wrong claim)."""

from __future__ import annotations

import subprocess

import pytest

from tests.bench import overhead
from tests.bench.__main__ import headline

WRK_REPORT = """Running 1s test @ http://127.0.0.1:46541/
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    43.88us  192.94us   3.95ms   98.70%
    Req/Sec    75.28k    16.93k  141.67k    80.95%
  Latency Distribution
     50%   23.00us
     75%   32.00us
     90%   37.00us
     99%  {p99}
  157089 requests in {took}, 22.32MB read
Requests/sec: 142894.96
"""


@pytest.mark.parametrize("p99, took, want_p99_us, want_rate", [
    ("645.00us", "1.10s", 645.0, 157089 / 1.10),
    ("12.50ms", "1.10s", 12500.0, 157089 / 1.10),
    ("1.02s", "2.00m", 1.02e6, 157089 / 120),
], ids=["microseconds", "milliseconds", "seconds-and-minutes"])
def test_wrk_latency_reads_p99_and_rate(monkeypatch, p99, took, want_p99_us, want_rate):
    out = WRK_REPORT.format(p99=p99, took=took)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=out))
    fig = overhead.wrk_latency("http://x/", 4, 1)
    assert fig["requests"] == 157089
    assert fig["p99_us"] == pytest.approx(want_p99_us)
    assert fig["rate_per_s"] == pytest.approx(want_rate)


def test_wrk_output_without_latency_is_an_error(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout="oops"))
    with pytest.raises(RuntimeError, match="cannot read wrk"):
        overhead.wrk_latency("http://x/", 4, 1)


def test_headline_keeps_issue_numbering_and_skips_what_did_not_run():
    results = {"startup": {"median_to_attached_s": 0.8},
               "kernel": {"ns_per_untraced_syscall_added": 30, "ns_per_traced_syscall_with_record_added": 900}}
    assert headline(results) == {"2_per_event_cost_ns": {"untargeted_syscall_added": 30,
                                                         "targeted_syscall_with_record_added": 900},
                                 "6_startup_s": 0.8}
