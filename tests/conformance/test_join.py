"""The join of kernel requests, driver records, server/client spans and outbound requests."""

from __future__ import annotations

import time

from agent.evidence import Span
from agent.tracecontext import new_span_id
from conformance import evaluate
from conformance.join import JOIN_HEURISTIC, JOIN_TRACEPARENT, join
from conformance.model import Status
from tests.conformance.builders import MS, Req, result


def test_requests_join_their_span_and_driver_record_by_traceparent(run):
    b = run()
    ks = [b.request(path=f"/items/{i}") for i in range(5)]
    j = join(b.build())
    assert [r.kernel.id for r in j.requests] == [k.id for k in ks]
    for r in j.requests:
        assert r.span_join == JOIN_TRACEPARENT and len(r.spans) == 1
        assert r.spans[0].trace_id == r.traceparent.trace_id
        assert r.spans[0].parent_span_id == r.traceparent.parent_id
        assert r.driver is not None and r.driver.trace_id == r.traceparent.trace_id
    assert j.unjoined_spans == [] and j.unmatched_driver == [] and j.heuristic_joins == 0


def test_agent_scrapes_and_probes_are_excluded_and_listed_separately(run):
    b = run()
    b.request()
    probe = b.agent_request("/healthz")
    metrics = b.agent_request("/metrics")
    j = join(b.build())
    assert len(j.requests) == 1
    assert {k.id for k in j.agent_requests} == {probe.id, metrics.id}


def test_a_request_without_traceparent_joins_by_method_path_and_time(run):
    b = run()
    b.request(Req(path="/items/1", traceparent=False))
    b.request(Req(path="/items/2", traceparent=False))
    j = join(b.build())
    assert [r.span_join for r in j.requests] == [JOIN_HEURISTIC, JOIN_HEURISTIC]
    # each joined to its own span, not the other path's
    assert [r.spans[0].attributes["url.path"] for r in j.requests] == ["/items/1", "/items/2"]
    assert j.heuristic_joins == 2 and "by method, path, status and time" in j.notes[0]
    # the driver record is found by method, path and time instead
    assert all(r.driver is not None and r.driver.path == r.kernel.path for r in j.requests)


def test_a_broken_propagation_still_finds_the_span_by_overlap(run):
    b = run()
    b.request(Req(continue_trace=False))
    j = join(b.build())
    (r,) = j.requests
    assert r.span_join == JOIN_HEURISTIC and len(r.spans) == 1
    assert r.spans[0].trace_id != r.traceparent.trace_id


def test_route_only_spans_match_by_template(run):
    b = run()
    b.request(Req(path="/items/42", traceparent=False))
    ev = b.build()
    del ev.spans[0].attributes["url.path"]  # only http.route = /items/{id} left
    (r,) = join(ev).requests
    assert r.span_join == JOIN_HEURISTIC


def test_a_span_outside_the_kernel_window_is_not_joined_by_overlap(run):
    b = run()
    b.request(Req(traceparent=False))
    ev = b.build()
    ev.spans[0].start_ns += 500 * MS
    ev.spans[0].end_ns += 500 * MS
    j = join(ev)
    assert j.requests[0].spans == [] and len(j.unjoined_spans) == 1


def test_duplicate_server_spans_all_land_on_their_request(run):
    b = run()
    b.request(Req(spans=2))
    (r,) = join(b.build()).requests
    assert len(r.spans) == 2


def test_outbound_requests_and_client_spans_attach_to_their_inbound_request(run):
    b = run()
    k = b.request()
    out = b.outbound(k)
    ev = b.build()
    server = ev.spans[0]
    internal = Span(trace_id=server.trace_id, span_id=new_span_id(),
                    parent_span_id=server.span_id, name="work", kind="INTERNAL",
                    start_ns=server.start_ns + 10, end_ns=server.end_ns - 10)
    client = Span(trace_id=server.trace_id, span_id=new_span_id(),
                  parent_span_id=internal.span_id, name="GET", kind="CLIENT",
                  start_ns=server.start_ns + 20, end_ns=server.end_ns - 20)
    ev.spans += [internal, client]
    j = join(ev)
    (r,) = j.requests
    assert [o.id for o in r.outbound] == [out.id]
    assert [s.span_id for s in r.client_spans] == [client.span_id]
    assert j.unattributed_outbound == []


def test_the_suts_own_otlp_exports_are_not_outbound_calls_of_a_request(run):
    # Node's event loop sends an export while a request is in flight: the kernel parents it
    # to that request. Taken for its outbound call it failed TC-002 on a clean service.
    b = run()
    k = b.request()
    out = b.outbound(k)
    to_receiver = b.outbound(k, "/v1/traces")
    to_receiver.peer_addr, to_receiver.peer_port = "::ffff:127.0.0.1", 4318
    to_receiver.headers = {"content-type": ["application/x-protobuf"]}
    by_exporter = b.outbound(k, "/v1/metrics")
    by_exporter.peer_addr, by_exporter.peer_port = "10.0.0.9", 4318  # the user's collector
    by_exporter.headers = {"user-agent": ["OTel-OTLP-Exporter-JavaScript/0.52.1"]}
    business = b.outbound(k, "/v1/traces")  # same path, elsewhere, no exporter: a real call
    business.peer_addr, business.peer_port = "127.0.0.1", 9999
    ev = b.build()
    ev.meta.target["otlp_endpoint"] = "http://127.0.0.1:4318"
    j = join(ev)
    (r,) = j.requests
    assert [o.id for o in r.outbound] == [out.id, business.id]
    assert [c.id for c in j.telemetry_exports] == [to_receiver.id, by_exporter.id]
    assert any("own OTLP exports" in n for n in j.notes)


def test_a_span_cycle_does_not_hang_the_join(run):
    b = run()
    b.request()
    ev = b.build()
    server = ev.spans[0]
    a = Span(trace_id=server.trace_id, span_id="a" * 16, parent_span_id="b" * 16, name="a",
             kind="CLIENT", start_ns=1, end_ns=2)
    c = Span(trace_id=server.trace_id, span_id="b" * 16, parent_span_id="a" * 16, name="b",
             kind="INTERNAL", start_ns=1, end_ns=2)
    ev.spans += [a, c]
    assert join(ev).requests[0].client_spans == []


def test_join_is_linear_enough_for_large_runs(run):
    b = run()
    for i in range(10_000):
        b.request(Req(path=f"/items/{i}", traceparent=(i % 10 != 0)))
    ev = b.build()
    t0 = time.perf_counter()
    j = join(ev)
    elapsed = time.perf_counter() - t0
    assert sum(1 for r in j.requests if r.spans) == 10_000
    assert j.heuristic_joins == 1_000
    assert elapsed < 5.0, f"join of 10k requests took {elapsed:.1f}s"


def test_a_request_without_span_does_not_take_the_next_requests_span(run):
    """A not-sampled request (no span, rightly) answered 200 us before the next one arrived:
    the next request's span starts inside the first one's slop, yet stays the next one's."""
    b = run()
    first = b.request(Req(path="/items/1", spans=0))
    first.headers["traceparent"] = [first.headers["traceparent"][0][:-2] + "00"]
    b.t -= 2 * MS - 200 * 1000  # the next request arrives 200 us after the last write
    second = b.request(Req(path="/items/1", traceparent=False))
    ev = b.build()
    by_id = {r.kernel.id: r for r in join(ev).requests}
    assert by_id[first.id].spans == []
    assert len(by_id[second.id].spans) == 1 and by_id[second.id].span_join == JOIN_HEURISTIC
    kt1 = result(evaluate(ev, select=["KT-001"]), "KT-001")
    assert kt1.status == Status.PASS and kt1.observed["unsampled_without_span_excluded"] == 1
