"""Checks on runs whose --url has a path: driver records and kernel targets carry the prefix,
the scenario's routes do not, and an app mounted under the prefix may leave it out of its
route templates (KT-002, SC-003, the view); KT-007 never blames the SUT for requests the
agent could not pair."""

from __future__ import annotations

import pytest

from conformance import evaluate
from conformance.model import Status
from conformance.view import build_view
from tests.conformance.builders import Req, SemconvExporter, result


def _with_base(ev, base: str):
    ev.meta.target["base_path"] = base  # as the runner records it (meta.target.base_path)
    return ev


@pytest.mark.parametrize("route", [
    pytest.param("/items/{id}", id="mounted-app-route-without-the-prefix"),
    pytest.param("/api/items/{id}", id="app-route-with-the-prefix"),
])
def test_kt002_maps_prefixed_targets_to_either_route_form(run, route):
    b = run(exporter=SemconvExporter())
    ev = _with_base(b.load([Req(path=f"/api/items/{i}", route=route) for i in range(6)]), "/api")
    r = result(evaluate(ev, select=["KT-002"]), "KT-002")
    assert r.status == Status.PASS, r.message
    assert "6 requests" in r.message


@pytest.mark.parametrize("name", [
    pytest.param("GET /items/<int:item_id>", id="template-as-the-mounted-app-has-it"),
    pytest.param("GET /api/items/<int:item_id>", id="template-with-the-prefix"),
])
def test_sc003_takes_the_scenario_template_with_or_without_the_prefix(run, name):
    # No http.route on the span: the name is judged against the scenario's template, whose
    # key is the scenario path (/items/7), not the target sent (/api/items/7).
    b = run(scenario={"routes": {"/items/7": "/items/<int:item_id>"}})
    b.request(Req(path="/api/items/7", route="/items/<int:item_id>"))
    ev = b.build()
    for s in ev.spans:
        s.attributes.pop("http.route")
        s.name = name
    r = result(evaluate(_with_base(ev, "/api"), select=["SC-003"]), "SC-003")
    assert r.status == Status.PASS, (r.message, r.evidence)


def test_the_view_maps_prefixed_targets_to_fanout_routes_and_mounted_span_paths(run):
    b = run(scenario={"routes": {"/fan": "/fan"}, "fanout": {"routes": ["/fan"]}})
    b.request(Req(path="/api/fan", route="/fan", traceparent=False))
    ev = b.build()
    for s in ev.spans:
        s.attributes["url.path"] = "/fan"  # a mounted app's own path, without the prefix
        s.trace_id = "1" * 32
    [r] = build_view(_with_base(ev, "/api"), None).requests
    assert r.fanout, "the scenario path /fan of /api/fan fans out"
    assert r.span is not None and r.span_join == "heuristic"


def test_kt007_does_not_blame_the_sut_for_records_it_could_not_pair(run):
    # The driver recorded another path than it sent (the old --url endpoint bug: "/" for
    # /items/7/): the kernel saw the request at that time, only the join could not pair it.
    b = run()
    for i in range(3):
        b.request(Req(path="/items/7/", traceparent=False, status=404))
    for d in b.driver:
        d.path = "/"
    r = result(evaluate(b.build(), select=["KT-007"]), "KT-007")
    assert r.status == Status.INCONCLUSIVE, r.message
    assert "could not pair them; no evidence against the SUT" in r.message
    assert "outside the target" not in r.message
    assert r.observed["driver_answers_unpaired"] == 3 and r.observed["driver_answers_unseen"] == 0
    assert r.evidence["unpaired"][0]["driver"] == "GET /" \
        and r.evidence["unpaired"][0]["kernel"] == "GET /items/7/"


def test_kt007_still_fails_answers_the_kernel_never_saw(run):
    b = run()
    b.request(Req(path="/a", traceparent=False))
    b.request(Req(path="/b", traceparent=False, seen=False))  # nothing in the kernel then
    r = result(evaluate(b.build(), select=["KT-007"]), "KT-007")
    assert r.status == Status.FAIL, r.message
    assert "1 answer(s) the driver got were never seen by the kernel" in r.message
