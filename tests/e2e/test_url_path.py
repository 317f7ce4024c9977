"""A real run whose --url names an endpoint (no scenario, no --path): the driver requests that
endpoint exactly, the kernel join pairs every record, and the verdict is the plain URL's."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import free_port, refservice_cmd

pytestmark = pytest.mark.kernel

N = 100


def _run(obsconform, endpoint_in_url: bool):
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    args = ["run", "--exec", refservice_cmd(port), "--metrics-url", f"{origin}/metrics",
            "-n", str(N), "-c", "4"]
    args += ["--url", f"{origin}/items/7"] if endpoint_in_url else ["--url", origin, "--path", "/items/7"]
    r = obsconform(*args)
    assert r.report, r.stderr + r.stdout  # a report was written (its absence is explained)
    return r, origin


def _driver(r) -> list[dict]:
    return [json.loads(line) for line in (r.run_dir / "driver.jsonl").read_text().splitlines()]


def test_an_endpoint_url_is_requested_exactly_and_judged_as_the_plain_url(obsconform):
    r, origin = _run(obsconform, endpoint_in_url=True)
    sent = _driver(r)
    assert {d["path"] for d in sent} == {"/items/7"}, "no '/' appended to the URL's path"
    assert {d["status"] for d in sent} == {200}, r.stdout
    target = r.report["target"]
    assert (target["base_url"], target["base_path"]) == (origin, "")
    assert target["targets_sent"] == {"GET /items/7": len(sent)}
    assert f"sent: {len(sent)} requests to {origin}: GET /items/7 x{len(sent)}" in r.stdout
    statuses = {c["id"]: c["status"] for c in r.report["checks"]}
    # The records without a valid traceparent (tc, bc phases) join their kernel requests:
    # KT-007 does not blame the SUT, and TC-003/TC-004 find the spans of those requests.
    assert statuses["KT-007"] == "pass", r.check("KT-007")["message"]
    assert statuses["TC-003"] == statuses["TC-004"] == "pass", \
        (r.check("TC-003")["message"], r.check("TC-004")["message"])
    assert r.report["measurements"]["kernel"]["requests"] == r.report["run"]["requests_sent"]

    plain, _ = _run(obsconform, endpoint_in_url=False)
    assert {d["path"] for d in _driver(plain)} == {"/items/7"}
    plain_statuses = {c["id"]: c["status"] for c in plain.report["checks"]}
    assert r.report["summary"]["verdict"] == plain.report["summary"]["verdict"], \
        (r.report["summary"]["verdict_reason"], plain.report["summary"]["verdict_reason"])
    differ = {i: (s, plain_statuses[i]) for i, s in statuses.items() if plain_statuses[i] != s}
    assert not differ, differ
    assert r.code == plain.code
