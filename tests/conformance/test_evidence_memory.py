"""What keeps a million-request analysis small: slotted records (no per-record __dict__) that
still serialise field for field, per-request ids one string across the files that repeat
them, and a lone server span held in one list by the span index, the join and the view."""

from __future__ import annotations

import dataclasses
import json

import pytest

from agent.evidence import (
    DownstreamRecord, DriverRecord, EvidenceWriter, KernelRequest, LogRecord, MetricPoint, RunMeta,
    Scrape, Span, load_evidence, to_dict,
)
from conformance.join import join
from conformance.view import build_view

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INBOUND_PARENT = "00f067aa0ba902b7"
SERVER_SPAN = "b7ad6b7169203331"
CLIENT_SPAN = "53995c3f42cd8ad8"
TP_IN = f"00-{TRACE}-{INBOUND_PARENT}-01"
TP_OUT = f"00-{TRACE}-{CLIENT_SPAN}-01"

# One of each record type, every field set to a non-default value.
RECORDS = [
    pytest.param(KernelRequest("k1", "7:3:0", 0, "server", 7, 8, 3, "GET", "/x?a=1", "1.1",
                               {"traceparent": [TP_IN]}, True, 10, 200, 11, 12, 150, 239, [100],
                               None, True), id="kernel"),
    pytest.param(Span(TRACE, SERVER_SPAN, INBOUND_PARENT, "GET /x", "SERVER", 1, 2, "ERROR", "m",
                      {"k": "v"}, {"service.name": "s"}, "sc", "ts", [{"name": "e"}], 3), id="span"),
    pytest.param(MetricPoint("m", "histogram", "s", {"a": "b"}, {"r": "s"}, "sc", 1, 2, None, 3,
                             1.5, [1.0], [1, 2], [{"value": 1.0}], True, "CUMULATIVE", 4),
                 id="metric"),
    pytest.param(LogRecord("otlp", 1, "INFO", 9, {"msg": "x"}, TRACE, SERVER_SPAN, {"a": 1},
                           {"r": "s"}, 2), id="log"),
    pytest.param(DriverRecord(0, "load", "GET", "/x", {"traceparent": TP_IN}, TRACE,
                              INBOUND_PARENT, 1, 2, 200, {"server": "g"}, "body", "err", "load"),
                 id="driver"),
    pytest.param(DownstreamRecord(1, "POST", "/y", {"traceparent": [TP_OUT]}, "b"),
                 id="downstream"),
    pytest.param(Scrape(0, "before", 1, "http://h/metrics", "text/plain", "text/plain", 200,
                        "scrapes/0000-before.txt", ""), id="scrape"),
]


@pytest.mark.parametrize("record", RECORDS)
def test_to_dict_is_every_field_in_order_as_asdict_gives_it(record):
    assert list(to_dict(record).items()) == list(dataclasses.asdict(record).items())


@pytest.mark.parametrize("record", [r for r in RECORDS if r.id != "scrape"])
def test_bulk_records_have_no_instance_dict(record):
    assert not hasattr(record, "__dict__")
    with pytest.raises(AttributeError):
        record.not_a_field = 1  # a typo'd field name fails instead of adding an attribute


def _write_run(tmp_path):
    w = EvidenceWriter(tmp_path)
    w.meta(RunMeta(run_id="r", started_at="2027-01-01T00:00:00Z"))
    w.kernel([
        KernelRequest("k1", "7:3:0", 0, "server", 7, 8, 3, "GET", "/fanout", "1.1",
                      {"traceparent": [TP_IN]}, True, 10, 200, 11, 20),
        KernelRequest("k2", "7:9:0", 0, "client", 7, 8, 9, "POST", "/reserve", "1.1",
                      {"traceparent": [TP_OUT]}, True, 12, 200, 13, 14, parent_request="k1"),
    ])
    w.spans([Span(TRACE, SERVER_SPAN, INBOUND_PARENT, "GET /fanout", "SERVER", 10, 19),
             Span(TRACE, CLIENT_SPAN, SERVER_SPAN, "POST", "CLIENT", 12, 14)])
    w.logs([LogRecord("stdout", 15, trace_id=TRACE, span_id=SERVER_SPAN)])
    w.driver([DriverRecord(0, "load", "GET", "/fanout", {"traceparent": TP_IN}, TRACE,
                           INBOUND_PARENT, 9, 21, 200)])
    w.downstream([DownstreamRecord(13, "POST", "/reserve", {"traceparent": [TP_OUT]})])
    w.close()


def test_ids_repeated_by_other_files_are_one_string(tmp_path):
    _write_run(tmp_path)
    ev = load_evidence(tmp_path)
    (server, client), (srv, cli) = ev.kernel, ev.spans
    (log,), (drv,), (down,) = ev.logs, ev.driver, ev.downstream
    assert srv.trace_id is cli.trace_id is log.trace_id is drv.trace_id
    assert srv.span_id is log.span_id is cli.parent_span_id
    assert srv.parent_span_id is drv.parent_id
    assert drv.request_headers["traceparent"] is server.headers["traceparent"][0]
    assert down.headers["traceparent"] is client.headers["traceparent"]  # the one-value list
    assert server.headers["traceparent"] is not client.headers["traceparent"]


FILES = [("kernel.jsonl", "kernel"), ("spans.jsonl", "spans"), ("logs.jsonl", "logs"),
         ("driver.jsonl", "driver"), ("downstream.jsonl", "downstream")]


@pytest.mark.parametrize("name,attr", FILES, ids=[a for _, a in FILES])
def test_shared_ids_read_back_exactly_what_was_written(tmp_path, name, attr):
    _write_run(tmp_path)
    written = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
    assert [to_dict(r) for r in getattr(load_evidence(tmp_path), attr)] == written


DIGITS_TRACE, DIGITS_PARENT = "1" * 31 + "2", "3" * 15 + "4"


def _one_request_run(tmp_path, span_trace, span_parent):
    """One request whose trace holds only its server span (ids as given)."""
    w = EvidenceWriter(tmp_path)
    w.meta(RunMeta(run_id="r", started_at="2027-01-01T00:00:00Z"))
    tp = f"00-{DIGITS_TRACE}-{DIGITS_PARENT}-01"
    w.kernel([KernelRequest("k1", "7:3:0", 0, "server", 7, 8, 3, "GET", "/x", "1.1",
                            {"traceparent": [tp]}, True, 10, 200, 11, 20)])
    w.spans([Span(span_trace, SERVER_SPAN, span_parent, "GET /x", "SERVER", 10, 19)])
    w.driver([DriverRecord(0, "load", "GET", "/x", {"traceparent": tp}, DIGITS_TRACE,
                           DIGITS_PARENT, 9, 21, 200)])
    w.close()
    return load_evidence(tmp_path)


def test_a_lone_server_span_is_one_list_for_index_join_and_view(tmp_path):
    ev = _one_request_run(tmp_path, DIGITS_TRACE, DIGITS_PARENT)
    joined = join(ev)
    (jr,), (rv,) = joined.requests, build_view(ev, joined).requests
    group = joined.span_index.by_trace[DIGITS_TRACE]
    assert jr.spans == [ev.spans[0]] and jr.span_join == "traceparent"
    assert jr.spans is group and rv.spans is group


# (span trace-id, span parent-id, joined by the traceparent?)
KEYS = [
    pytest.param(DIGITS_TRACE, DIGITS_PARENT, True, id="same-ids"),
    pytest.param(DIGITS_TRACE, "3" * 16, False, id="other-parent"),
    pytest.param(int(DIGITS_TRACE), int(DIGITS_PARENT), False, id="numbers-with-the-same-digits"),
]


@pytest.mark.parametrize("trace,parent,joined", KEYS)
def test_spans_join_by_traceparent_only_on_both_ids_as_strings(tmp_path, trace, parent, joined):
    (jr,) = join(_one_request_run(tmp_path, trace, parent)).requests
    assert (jr.span_join == "traceparent") is joined
