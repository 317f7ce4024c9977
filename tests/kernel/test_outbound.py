"""Outbound calls with real eBPF: a target that calls a downstream server for every inbound
request. The kernel's client-side records are checked against the downstream's own view."""

from __future__ import annotations

import http.client
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from agent.downstream import DownstreamSink
from agent.tracecontext import new_traceparent
from tests.kernel.conftest import wait_requests

pytestmark = pytest.mark.kernel


def call(port: int, downstream_port: int, tp: str, biz: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", f"/proxy?port={downstream_port}", headers={"traceparent": tp, "x-biz-code": biz})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_every_outbound_record_carries_what_the_downstream_received(collector, start_server):
    sut = start_server()
    collector.add_target(sut.pid)
    n = 120
    with DownstreamSink(None) as sink:
        down_port = urlsplit(sink.url).port
        sent = [(str(new_traceparent()), f"BIZ-{i:03d}") for i in range(n)]
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda a: call(sut.port, down_port, *a), sent))
        assert statuses == [200] * n
        assert sink.wait_for(n, 10)
        received = Counter((r.headers["traceparent"][0], r.headers["x-biz-code"][0]) for r in sink.records)
    inbound = {r.id: r for r in wait_requests(collector, sut.pid, n)}
    outbound = wait_requests(collector, sut.pid, n, direction="client")
    assert len(outbound) == n and len(inbound) == n
    seen = Counter((k.header("traceparent"), k.header("x-biz-code")) for k in outbound)
    assert seen == received == Counter(sent), "the kernel captured exactly what the downstream got"
    for k in outbound:
        assert (k.method, k.target, k.status, k.headers_complete) == ("GET", "/downstream", 200, True)
        parent = inbound[k.parent_request]  # a threaded server: the one request this thread serves
        assert (parent.header("traceparent"), parent.header("x-biz-code")) == \
            (k.header("traceparent"), k.header("x-biz-code"))
        assert parent.t_req_first <= k.t_req_first <= k.t_resp_first <= k.t_resp_last <= parent.t_resp_first
    collector.remove_target(sut.pid)
