"""The probes copy user memory once: the first 64 bytes of every read and write, then only
what lies beyond them. Real eBPF, one process that is client and server over loopback, with
header blocks ending before, at and after that bound, read and written through one buffer
and through iovecs that straddle it. Each checks that both sides' requests are whole."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernel.conftest import wait_requests
from tests.kernel.test_kernel_truth import counter_delta

pytestmark = pytest.mark.kernel
SCRIPT = Path(__file__).with_name("capture_exchange.py")
FIRST_COPY = 64  # HEAD_BYTES in bpf/http_data.h

# (bytes in the one syscall that moves the request, with a 4-byte body in that syscall)
SIZES = [
    pytest.param(48, False, id="48-header-block-inside-the-first-copy"),
    pytest.param(FIRST_COPY, False, id="64-header-block-is-the-first-copy"),
    pytest.param(FIRST_COPY + 1, False, id="65-header-block-one-byte-beyond"),
    pytest.param(700, False, id="700-header-block-mostly-beyond"),
    pytest.param(FIRST_COPY, True, id="64-headers-and-body-in-the-first-copy"),
    pytest.param(FIRST_COPY + 1, True, id="65-body-ends-beyond"),
    pytest.param(700, True, id="700-headers-and-body"),
]
SHAPES = [
    pytest.param("buf", id="one-buffer"),
    pytest.param("iov", id="iovecs-60-8-rest"),
    pytest.param("msg", id="msghdr-iovecs-64-rest"),
]


@pytest.mark.parametrize("total,with_body", SIZES)
@pytest.mark.parametrize("shape", SHAPES)
def test_a_header_block_around_the_first_copy_is_captured_whole(collector, shape, total, with_body):
    proc = subprocess.Popen([sys.executable, str(SCRIPT), shape, str(total), str(int(with_body))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    collector.add_target(proc.pid)
    before = collector.stats()
    out, _ = proc.communicate("go\n", timeout=20)
    assert proc.returncode == 0, out
    pad, req_len, resp_len = out.split()
    assert (int(req_len), int(resp_len)) == (total, total)
    [server] = wait_requests(collector, proc.pid, 1)
    [client] = wait_requests(collector, proc.pid, 1, direction="client")
    headers = {"host": ["x"], "x-pad": [pad]}
    if with_body:
        headers["content-length"] = ["4"]
    for k in (server, client):
        assert (k.method, k.target, k.status) == ("POST" if with_body else "GET", "/c", 200), k
        assert (k.headers, k.headers_complete) == (headers, True), k
        assert (k.req_bytes, k.resp_bytes, k.aborted) == (total, total, False), k
    assert counter_delta(collector, before, "continuations") == 0, "each header block came in one syscall"
    assert counter_delta(collector, before, "truncated_captures") == 0
    assert counter_delta(collector, before, "loss") == 0
