"""The load driver against a real local threaded server (the stdlib witness in conftest)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from agent.driver import LoadDriver, PlannedRequest, load_plan
from agent.evidence import DRIVER_USER_AGENT, RunMeta, driver_marker, load_evidence
from agent.tracecontext import new_traceparent, parse_traceparent


def _header(seen, name: str) -> list[str]:
    return [v for k, v in seen.headers if k == name]


def test_exactly_n_requests_with_unique_valid_traceparents(witness, writer):
    plan = load_plan(40, ["/a", "/b", "/c"])
    records = LoadDriver(witness.url, writer).run(plan, concurrency=4)

    assert len(witness.requests) == len(records) == 40
    assert Counter(r.path for r in witness.requests) == {"/a": 14, "/b": 13, "/c": 13}
    sent = [parse_traceparent(_header(r, "traceparent")[0]) for r in witness.requests]
    assert all(tp is not None and tp.sampled for tp in sent)
    assert len({tp.trace_id for tp in sent}) == 40 and len({tp.parent_id for tp in sent}) == 40
    by_trace = {tp.trace_id: tp for tp in sent}
    for rec in records:
        assert by_trace[rec.trace_id].parent_id == rec.parent_id
        assert (rec.status, rec.error, rec.phase) == (200, "", "load")
        assert rec.response_body == f'{{"path": "{rec.path}"}}'
        assert rec.response_headers["content-type"] == "application/json"
        assert rec.response_headers["x-dup"] == "a, b"
        assert rec.request_headers["user-agent"].startswith(f"{DRIVER_USER_AGENT}/")
        assert 0 < rec.t_send_ns <= rec.t_recv_ns
    assert [r.seq for r in records] == list(range(40))
    writer.meta(RunMeta(run_id="t", started_at="2025-01-01T00:00:00Z"))
    assert load_evidence(writer.run_dir).driver == records


@pytest.mark.parametrize("concurrency", [1, 3, 6])
def test_concurrency_is_honoured(witness, concurrency):
    witness.gate = concurrency  # each request waits until `concurrency` are in flight
    LoadDriver(witness.url).run(load_plan(4 * concurrency, ["/"]), concurrency=concurrency)
    assert witness.max_in_flight == concurrency
    assert len(witness.requests) == 4 * concurrency


@pytest.mark.parametrize(
    ("keep_alive", "close_mode", "connections"),
    [
        pytest.param(True, "", 3, id="keep-alive-one-connection-per-worker"),
        pytest.param(False, "", 30, id="connection-close-mode"),
        pytest.param(True, "header", 30, id="server-says-close"),
        pytest.param(True, "silent", 30, id="server-closes-idle-connection"),
    ],
)
def test_connections_reused_or_reopened(witness, keep_alive, close_mode, connections):
    witness.close_mode = close_mode
    # The first three requests wait for each other: all three workers open a connection
    # however the scheduler runs them.
    witness.gate, witness.gate_first, witness.gate_timeout_s = 3, 3, 10
    records = LoadDriver(witness.url, keep_alive=keep_alive).run(load_plan(30, ["/"]), concurrency=3)
    assert [r.error for r in records if r.error] == []
    assert len(witness.requests) == 30
    assert witness.connections == connections
    assert len({r.conn_id for r in witness.requests}) == connections
    close_headers = {tuple(_header(r, "connection")) for r in witness.requests}
    assert close_headers == ({("close",)} if not keep_alive else {()})


def test_duplicated_and_invalid_headers_go_out_verbatim(witness):
    tp1, tp2 = str(new_traceparent()), str(new_traceparent())
    plan = [
        PlannedRequest("GET", "/dup", {"traceparent": [tp1, tp2], "tracestate": "a=1"}, phase="tc", case="tc/duplicated"),
        PlannedRequest("GET", "/ff", {"traceparent": "ff" + tp1[2:]}, phase="tc", case="tc/version-ff"),
        PlannedRequest("GET", "/upper", {"traceparent": tp1.upper()}, phase="tc", case="tc/upper-case"),
        PlannedRequest("GET", "/none", {"X-Biz-Code": "  gold  "}, phase="bc", case="bc/padded"),
        PlannedRequest("POST", "/body", {"Content-Type": "application/json"}, body=b'{"x": 1}', phase="ec"),
    ]
    records = LoadDriver(witness.url).run(plan, concurrency=1)
    seen = {r.path: r for r in witness.requests}
    assert _header(seen["/dup"], "traceparent") == [tp1, tp2]
    assert _header(seen["/ff"], "traceparent") == ["ff" + tp1[2:]]
    assert _header(seen["/upper"], "traceparent") == [tp1.upper()]
    assert seen["/body"].body == b'{"x": 1}' and _header(seen["/body"], "content-length") == ["8"]
    by_path = {r.path: r for r in records}
    assert by_path["/dup"].request_headers["traceparent"] == f"{tp1}, {tp2}"
    assert [(r.case, r.trace_id, r.parent_id) for r in records[:4]] == [
        ("tc/duplicated", "", ""), ("tc/version-ff", "", ""), ("tc/upper-case", "", ""), ("bc/padded", "", ""),
    ]  # fmt: skip
    assert by_path["/none"].request_headers["x-biz-code"] == "  gold  "


def test_progress_reports_every_request(witness):
    calls: list[tuple[int, int]] = []  # appended without a lock: the driver serialises calls
    LoadDriver(witness.url).run(load_plan(25, ["/"]), concurrency=4, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(n, 25) for n in range(1, 26)]


def test_a_failing_progress_callback_does_not_stop_the_load(witness):
    def progress(done: int, total: int) -> None:
        raise RuntimeError("terminal gone")

    assert len(LoadDriver(witness.url).run(load_plan(10, ["/"]), 2, progress=progress)) == 10
    assert len(witness.requests) == 10


def test_server_down_records_an_error_per_request(closed_port_url):
    t0 = time.monotonic()
    records = LoadDriver(closed_port_url, timeout_s=2).run(load_plan(12, ["/"]), concurrency=3)
    assert len(records) == 12 and time.monotonic() - t0 < 5
    assert {(r.status, r.error.split(":")[0]) for r in records} == {(None, "ConnectionRefusedError")}
    assert all(r.trace_id for r in records)  # what was planned is still recorded


def test_a_hanging_server_fails_each_request_after_the_timeout(witness):
    witness.hang = threading.Event()
    t0 = time.monotonic()
    records = LoadDriver(witness.url, timeout_s=0.3).run(load_plan(4, ["/"]), concurrency=2)
    elapsed = time.monotonic() - t0
    assert [r.error for r in records] == ["TimeoutError: timed out"] * 4
    assert elapsed < 3, f"4 requests on 2 workers with a 0.3 s timeout took {elapsed:.1f}s"


def test_seq_stays_unique_across_runs_and_base_path_is_kept(witness):
    driver = LoadDriver(f"{witness.url}/api/")
    first = driver.run(load_plan(3, ["/x"]), concurrency=2)
    second = driver.run(load_plan(2, ["y"], phase="tc"), concurrency=2)
    assert [r.seq for r in first + second] == [0, 1, 2, 3, 4]
    assert sorted(r.path for r in witness.requests) == ["/api/x"] * 3 + ["/api/y"] * 2
    # The record names the target as sent: it is what the kernel sees and joins on.
    assert sorted(r.path for r in first + second) == ["/api/x"] * 3 + ["/api/y"] * 2


def test_every_request_carries_a_marker_unique_in_the_run(witness, writer):
    plan = load_plan(30, ["/a", "/b"]) + [PlannedRequest("GET", "/c", phase="tc", case="tc/none")]
    one, two = LoadDriver(witness.url, writer), LoadDriver(witness.url, writer)  # one run dir
    records = one.run(plan, concurrency=4) + two.run(load_plan(5, ["/d"]), concurrency=2)
    markers = [driver_marker(r.request_headers["user-agent"]) for r in records]
    assert None not in markers and len(set(markers)) == len(records) == 36
    assert markers[0] == one.marker(records[0].seq) == f"{one.run_tag}-0"
    assert one.run_tag != two.run_tag and markers[-1] == f"{two.run_tag}-4"
    for r in records:
        ua = r.request_headers["user-agent"]
        assert ua.startswith(f"{DRIVER_USER_AGENT}/") and ua.endswith(f" req/{driver_marker(ua)}")
    on_wire = {_header(w, "user-agent")[0] for w in witness.requests}
    assert on_wire == {r.request_headers["user-agent"] for r in records}
    writer.meta(RunMeta(run_id="t", started_at="2025-01-01T00:00:00Z"))
    assert [d.request_headers for d in load_evidence(writer.run_dir).driver] == \
        [r.request_headers for r in records]


def test_a_planned_user_agent_is_sent_unchanged(witness):
    plan = [PlannedRequest("GET", "/own", {"User-Agent": "curl/8.5.0"}, phase="tc", case="tc/ua")]
    [rec] = LoadDriver(witness.url, run_tag="t1").run(plan, concurrency=1)
    assert _header(witness.requests[0], "user-agent") == ["curl/8.5.0"]
    assert rec.request_headers["user-agent"] == "curl/8.5.0"
    assert driver_marker(rec.request_headers["user-agent"]) is None


def test_header_values_http_cannot_carry_are_errors_not_crashes(witness):
    plan = [PlannedRequest("GET", "/", {"X-Bad": "a\r\nInjected: 1"}), PlannedRequest("GET", "/ok")]
    bad, ok = LoadDriver(witness.url).run(plan, concurrency=1)
    assert bad.status is None and "ValueError" in bad.error
    assert (ok.status, [r.path for r in witness.requests]) == (200, ["/ok"])


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [({"base_url": "localhost:8080"}, "base_url"), ({"timeout_s": 0}, "timeout_s"),
     ({"base_url": "http://127.0.0.1:1/api?x=1"}, "base_url"), ({"run_tag": "a b"}, "run_tag"),
     ({"run_tag": ""}, "run_tag")],
)
def test_bad_arguments_name_the_parameter(kwargs, param):
    with pytest.raises(ValueError, match=param):
        LoadDriver(**{"base_url": "http://127.0.0.1:1", **kwargs})


@pytest.mark.parametrize(("n", "paths", "param"), [(-1, ["/"], "n must"), (3, [], "paths")])
def test_bad_plans_name_the_parameter(n, paths, param):
    with pytest.raises(ValueError, match=param):
        load_plan(n, paths)


def test_concurrency_must_be_positive(witness):
    with pytest.raises(ValueError, match="concurrency"):
        LoadDriver(witness.url).run([], concurrency=0)
