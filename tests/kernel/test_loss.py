"""Agent self-loss is counted exactly: a ring buffer too small for the load drops records,
and every record the probes tried to write is either delivered or counted as dropped."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.kernel import KernelCollector
from tests.kernel.bench_kernel import LOOP

pytestmark = pytest.mark.kernel


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
