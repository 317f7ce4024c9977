"""What makes a million-request analysis fit: repeated values shared on load (type-exact,
bounded, given up on when values do not repeat), read-only shared join lists, and TC-005's
one-span traces judged without indexes of every request."""

from __future__ import annotations

import pytest

from agent import jsonl
from agent.evidence import DriverRecord, EvidenceWriter, KernelRequest, RunMeta, Span, load_evidence
from agent.tracecontext import new_span_id, new_traceparent
from conformance import evaluate
from conformance.index import EMPTY, appended
from conformance.join import join
from conformance.model import Status
from tests.conformance.builders import MS, Req, result


def _span(i: int, attributes: dict, resource: dict) -> Span:
    return Span(f"{i + 1:032x}", f"{i + 1:016x}", "", "GET /x", "SERVER", 10 + i, 20 + i,
                attributes=attributes, resource=resource)


def _kernel(i: int) -> KernelRequest:
    return KernelRequest(f"k{i}", "7:3:0", i, "server", 7, 8, 3, "GET", "/x", "1.1",
                         {"host": ["h:1"], "traceparent": [f"00-{i + 1:032x}-{i + 1:016x}-01"]},
                         True, 1000 + i)


def _load(tmp_path, spans=(), kernel=()):
    w = EvidenceWriter(tmp_path)
    w.meta(RunMeta(run_id="r", started_at="2027-01-01T00:00:00Z"))
    w.spans(list(spans))
    w.kernel(list(kernel))
    w.close()
    return load_evidence(tmp_path)


# (resource of the first span, of the second, shared?)
WHOLE = [
    pytest.param({"service.name": "a", "n": 1}, {"service.name": "a", "n": 1}, True, id="equal"),
    pytest.param({}, {}, True, id="empty"),
    pytest.param({"n": 1}, {"n": True}, False, id="one-and-true-stay-apart"),
    pytest.param({"x": 0.5}, {"x": 0.5}, False, id="floats-are-left-alone"),
    pytest.param({"l": ["a"]}, {"l": ["a"]}, False, id="nested-containers-are-left-alone"),
]


@pytest.mark.parametrize("first,second,shared", WHOLE)
def test_equal_whole_values_are_one_object_and_read_back_exactly(tmp_path, first, second, shared):
    a, b = _load(tmp_path, [_span(0, {}, first), _span(1, {}, second)]).spans
    assert (a.resource, b.resource) == (first, second)
    assert [type(v) for v in b.resource.values()] == [type(v) for v in second.values()]
    assert (a.resource is b.resource) is shared


def test_header_value_lists_are_shared_but_traceparents_are_not(tmp_path):
    a, b = _load(tmp_path, kernel=[_kernel(0), _kernel(1)]).kernel
    assert a.headers["host"] is b.headers["host"] and a.conn is b.conn and a.tid is b.tid
    assert a.headers["traceparent"] is not b.headers["traceparent"]


@pytest.mark.parametrize("value,shared", [(8080, True), (jsonl.INT_MAX + 1, False)],
                         ids=["port", "beyond-int-max"])
def test_ints_inside_attributes_are_shared_below_int_max(tmp_path, value, shared):
    spans = [_span(i, {"port": value, "n": f"request-{i}"}, {}) for i in range(2)]
    a, b = _load(tmp_path, spans).spans
    assert a.attributes["port"] == b.attributes["port"] == value
    assert (a.attributes["port"] is b.attributes["port"]) is shared


def test_a_field_whose_values_do_not_repeat_stops_being_tried(monkeypatch):
    monkeypatch.setattr(jsonl, "WHOLE_TRIAL", 5)
    monkeypatch.setattr(jsonl, "WHOLE_MAX", 3)
    shared = jsonl.SharedValues((), ("attributes",), ("attributes",))
    first = [{"attributes": {"id": f"r{i}"}} for i in range(8)]
    shared.share(first)
    (state,) = shared._whole
    assert len(state.table) == 3 and state.misses == 8 and not state.active
    later = [{"attributes": {"id": "r1"}}]
    shared.share(later)  # no longer looked up: an equal value stays its own object
    assert later[0]["attributes"] is not first[1]["attributes"]
    assert later[0]["attributes"] == {"id": "r1"}


def test_a_full_table_still_shares_what_it_holds_but_takes_nothing_new(monkeypatch):
    monkeypatch.setattr(jsonl, "TABLE_MAX", 2)
    shared = jsonl.SharedValues(("conn",), ("headers",))
    first = [{"conn": f"c{i}", "headers": {"host": [f"h{i}"]}} for i in range(3)]
    shared.share(first)  # the table fills up within the chunk
    later = [{"conn": "c0", "headers": {"host": ["h0"]}},
             {"conn": "c9", "headers": {"host": ["h9"]}}]
    shared.share(later)
    assert later[0]["conn"] is first[0]["conn"] and later[0]["headers"]["host"] is \
        first[0]["headers"]["host"]
    assert "c9" not in shared._table and "h9" not in shared._singles
    assert later[1] == {"conn": "c9", "headers": {"host": ["h9"]}}


def test_empty_join_lists_are_shared_and_read_only(tmp_path):
    ev = _load(tmp_path, kernel=[_kernel(0)])  # a request without a span
    (r,) = join(ev).requests
    assert r.spans is EMPTY and r.outbound is EMPTY and r.spans == []
    with pytest.raises(TypeError, match="shared empty join list"):
        r.spans.append("x")
    assert appended(EMPTY, 1) == [1] and type(appended(EMPTY, 1)) is list and EMPTY == []


def _self_parented(b, d, s):
    s.parent_span_id = s.span_id


def _orphaned(b, d, s):
    s.parent_span_id = "1234567890abcdef"


def _stray_root(b, d, s):  # a trace the driver started holding only a root no request owns
    tp = new_traceparent()
    b.driver.append(DriverRecord(seq=99, phase="load", method="GET", path="/other",
                                 request_headers={"traceparent": str(tp)}, trace_id=tp.trace_id,
                                 parent_id=tp.parent_id, t_send_ns=b.t, t_recv_ns=b.t + MS,
                                 status=200))
    b.spans.append(Span(tp.trace_id, new_span_id(), "", "stray-root", "INTERNAL", b.t, b.t + 1))


# (what is done to the one span of a request's trace, the observed count it must raise)
ONE_SPAN_TRACES = [
    pytest.param(_self_parented, "cycles", "1 parent cycle(s)", id="its-own-parent"),
    pytest.param(_orphaned, "orphans", "names parent 1234567890abcdef", id="orphan"),
    pytest.param(_stray_root, "extra_roots", "'stray-root'", id="root-of-no-request"),
]


@pytest.mark.parametrize("fault,observed,fragment", ONE_SPAN_TRACES)
def test_tc005_judges_one_span_traces(run, fault, observed, fragment):
    b = run()
    b.request(Req(path="/items/1"))
    fault(b, b.driver[-1], b.spans[-1])
    r = result(evaluate(b.build(), select=["TC-005"]), "TC-005")
    assert r.status == Status.FAIL and r.observed[observed] == 1, r.message
    assert fragment in r.message
