"""Agent self-loss is counted exactly: a ring buffer too small for the load drops records,
every record the probes tried to write is either delivered or counted as dropped, and a
real `obsconform run` with such a ring makes kernel-truth checks inconclusive (exit 3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.kernel import KernelCollector
from tests.kernel.bench_kernel import LOOP
from tests.kernel.conftest import SERVER_SCRIPT
from tests.ports import free_port

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]


def test_ring_buffer_overflow_is_counted_record_for_record(kernel_ok):
    exchanges = 3000
    with KernelCollector(ringbuf_pages=1, poll_ms=200) as kc:  # a 4 KiB ring: ~20 records
        p = subprocess.Popen([sys.executable, "-c", LOOP, str(exchanges)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        kc.add_target(p.pid)
        p.communicate("go\n", timeout=60)
        kc.drain()
        stats = kc.stats()
    # each exchange: client request, server request, server response, client response;
    # then one close per socket of the pair and one record for the process's exit
    attempts = 4 * exchanges + 2 + 1
    assert stats["ring_drops"] > 0
    assert stats["records"] + stats["ring_drops"] == attempts
    assert stats["user_received"] == stats["records"], "every record the kernel wrote was read"
    assert stats["loss"] >= stats["ring_drops"]


def test_committed_counters_account_for_every_ring_byte_and_spare_the_header_walk(kernel_ok):
    # The probes count the ring bytes each CPU committed; once everything is read their sum
    # must equal the consumer position to the byte (more would let the reader release a
    # record still being written), and most runs are released on them without a walk.
    with KernelCollector(poll_ms=5) as kc:
        p = subprocess.Popen([sys.executable, "-c", LOOP, "20000"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        kc.add_target(p.pid)
        p.communicate("go\n", timeout=60)
        kc.drain()
        stats = kc.stats()
    assert stats["loss"] == 0 and stats["user_received"] == stats["records"] == 4 * 20000 + 3
    assert stats["user_ring_bytes_committed"] == stats["user_ring_bytes_consumed"] > 4 * 20000 * 88
    assert stats["user_ring_takes_unwalked"] > stats["user_ring_takes"] / 2, stats


def test_a_tiny_ring_buffer_under_load_makes_kt_inconclusive_through_the_cli(kernel_ok, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # /burst: each request makes the SUT run 300 HTTP exchanges over a socketpair in a few
    # milliseconds, ~1200 records against a one-page ring: drops are certain, not likely.
    argv = [sys.executable, "-m", "agent.cli", "run", "--exec", f"{sys.executable} {SERVER_SCRIPT} --port {port}",
            "--url", url, "--path", "/burst?n=300", "-n", "20", "-c", "2", "--ringbuf-pages", "1",
            "--check", "KT-001", "--check", "KT-003", "--out", str(tmp_path)]
    p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, p.stderr + p.stdout
    report = json.loads((tmp_path / "CNCF-compliance-report.json").read_text())
    kernel = report["measurements"]["kernel"]
    assert kernel["agent_drops"] > 0 and kernel["loss"] >= kernel["agent_drops"]
    assert sum(kernel["ring_drops_per_cpu"]) == kernel["agent_drops"] - kernel["map_full"]["connections"] \
        - kernel["map_full"]["syscalls"] - kernel["map_full"]["targets"]
    assert kernel["sizes"]["ringbuf_pages"] == 1
    assert {c["id"]: c["status"] for c in report["checks"]} == {"KT-001": "inconclusive", "KT-003": "inconclusive"}
    assert all("lost events" in c["message"] for c in report["checks"]), report["checks"]
    assert report["summary"]["verdict"] == "inconclusive"
