"""Every route of the daemon API on a real `obsconform serve`, with degraded runs against a tiny target."""

from __future__ import annotations

import http.client
import json
import tarfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.daemon.containment import run_cgroup
from conformance import validate_report
from tests.daemon.conftest import slow_spec


@pytest.fixture
def daemon(daemons):
    return daemons.start()


def test_healthz_answers_get_and_head(daemon):
    assert daemon.api("GET", "/healthz") == (200, {"status": "ok", "version": "0.1.0", "queued": 0, "running": None})
    assert daemon.api("HEAD", "/healthz")[0] == 200


def test_schema_route_serves_the_run_spec_schema(daemon):
    status, schema = daemon.api("GET", "/v1/schema/run-spec")
    assert status == 200 and schema["title"].startswith("obsconform daemon run spec")
    assert {"url", "exec", "pid", "no_ebpf", "requests", "concurrency", "checks"} <= set(schema["properties"])


def test_a_run_goes_from_submission_to_report_and_evidence(daemon, target):
    status, accepted = daemon.api("POST", "/v1/runs", target.spec(junit="junit.xml", label="api test"))
    assert status == 202
    run_id = accepted["id"]
    assert accepted["links"]["report"] == f"/v1/runs/{run_id}/report"
    run = daemon.wait(run_id)
    assert run["state"] == "done", run
    assert run["verdict"] == "inconclusive" and run["exit_code"] == 3, "no eBPF: KT checks are inconclusive"
    messages = [p["message"] for p in run["progress"]]
    assert messages[0] == "started" and any("sending 20 requests" in m for m in messages), messages
    assert messages[-1] == "done (inconclusive)"

    # ?since=N returns only the later progress messages.
    later = daemon.api("GET", f"/v1/runs/{run_id}?since=2")[1]["progress"]
    assert [p["n"] for p in later] == list(range(2, len(messages)))

    status, report = daemon.api("GET", f"/v1/runs/{run_id}/report")
    assert status == 200 and validate_report(report) == []
    assert report["summary"]["verdict"] == "inconclusive"
    driver_lines = (Path(run["run_dir"]) / "driver.jsonl").read_text().splitlines()
    assert report["run"]["requests_sent"] == len(driver_lines) >= 20, "load phase plus the protocol phases"

    status, runs = daemon.api("GET", "/v1/runs")
    assert [(r["id"], r["state"], r["label"]) for r in runs["runs"]] == [(run_id, "done", "api test")]


def test_evidence_archive_holds_the_run_directory(daemon, target, tmp_path):
    run_id = daemon.submit(target.spec(junit="junit.xml"))
    run = daemon.wait(run_id)
    path = tmp_path / "evidence.tar.gz"
    assert daemon.client().request("GET", f"/v1/runs/{run_id}/evidence", stream_to=path)[0] == 200
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
        run_dir = "runs/" + run["run_dir"].rsplit("/", 1)[1]
        assert {f"{run_dir}/meta.json", f"{run_dir}/driver.jsonl", f"{run_dir}/CNCF-compliance-report.json",
                "run-spec.json", "junit.xml"} <= names, names
        meta = json.load(tar.extractfile(f"{run_dir}/meta.json"))
        assert meta["requests_sent"] == len(tar.extractfile(f"{run_dir}/driver.jsonl").read().splitlines())
        assert all(not n.startswith("/") and ".." not in n for n in names)


def test_report_and_evidence_wait_for_the_run_to_end(daemon, target):
    run_id = daemon.submit(slow_spec(target, seconds=20))
    daemon.wait(run_id, states=("running",), progress="sending")
    procs = (run_cgroup(daemon.reports_dir, run_id) / "cgroup.procs").read_text().split()
    assert procs, "the run executes inside its own cgroup"
    for sub in ("report", "evidence"):
        status, body = daemon.api("GET", f"/v1/runs/{run_id}/{sub}")
        assert status == 409 and "is running" in body["error"]
    assert daemon.api("DELETE", f"/v1/runs/{run_id}")[0] == 202
    daemon.wait(run_id)


@pytest.mark.parametrize("how", ["DELETE", "POST-cancel"])
def test_cancel_a_running_run(daemon, target, how):
    run_id = daemon.submit(slow_spec(target, seconds=30))
    daemon.wait(run_id, states=("running",), progress="sending")
    method, path = ("DELETE", f"/v1/runs/{run_id}") if how == "DELETE" else ("POST", f"/v1/runs/{run_id}/cancel")
    status, body = daemon.api(method, path)
    assert status == 202 and body["cancel_requested"] is True
    run = daemon.wait(run_id, timeout_s=30)
    assert run["state"] == "cancelled" and run["reason"] == "cancelled by request"
    assert not run_cgroup(daemon.reports_dir, run_id).exists(), "the run's cgroup is removed with its processes"
    status, body = daemon.api("DELETE", f"/v1/runs/{run_id}")
    assert status == 409 and "already ended (cancelled)" in body["error"]


def test_cancel_a_queued_run_takes_it_off_the_queue(daemon, target):
    first = daemon.submit(slow_spec(target, seconds=30))
    daemon.wait(first, states=("running",))
    second = daemon.submit(target.spec())
    assert daemon.api("GET", f"/v1/runs/{second}")[1]["position"] == 1
    assert daemon.api("POST", f"/v1/runs/{second}/cancel")[0] == 202
    run = daemon.api("GET", f"/v1/runs/{second}")[1]
    assert run["state"] == "cancelled" and run["started_at"] is None
    assert daemon.api("GET", f"/v1/runs/{second}/report")[0] == 404
    daemon.api("DELETE", f"/v1/runs/{first}")
    daemon.wait(first)


@pytest.mark.parametrize("method, path, status, fragment", [
    ("GET", f"/v1/runs/{uuid.uuid4()}", 404, "no run"),
    ("GET", f"/v1/runs/{uuid.uuid4()}/report", 404, "no run"),
    ("GET", "/v1/runs/../../etc/passwd", 404, "no such route"),
    ("GET", "/v1/runs/not-a-uuid", 404, "no such route"),
    ("PUT", "/v1/runs", 405, "PUT is not allowed"),
    ("GET", f"/v1/runs/{uuid.uuid4()}/cancel", 405, "GET is not allowed"),
    ("POST", "/healthz", 405, "POST is not allowed"),
], ids=["unknown-run", "unknown-report", "dotdot", "bad-id", "put", "get-cancel", "post-health"])
def test_unknown_routes_and_methods(daemon, method, path, status, fragment):
    got, body = daemon.api(method, path)
    assert got == status and fragment in body["error"]


def scrape_metrics(daemon) -> dict[tuple[str, tuple], float]:
    """The daemon's own /metrics (no token: it is not a /v1 route), by (name, labels)."""
    u = urlsplit(daemon.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/plain")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(resp.read().decode()) for s in fam.samples}
    finally:
        conn.close()


def test_metrics_count_runs_by_state_and_api_requests(daemon, target):
    run_id = daemon.submit(target.spec())
    daemon.wait(run_id)
    daemon.api("GET", "/v1/runs", token="w" * 40)  # one refused request
    samples = scrape_metrics(daemon)
    assert samples[("obsconform_runs", (("state", "done"),))] == 1
    assert samples[("obsconform_runs", (("state", "queued"),))] == 0
    assert samples[("obsconform_runs_finished_total", (("state", "done"),))] == 1
    assert samples[("obsconform_api_requests_total", (("code", "401"), ("route", "other")))] == 1
    assert samples[("obsconform_api_requests_total", (("code", "202"), ("route", "/v1/runs")))] == 1
    assert samples[("obsconform_run_duration_seconds_count", ())] == 1
    assert samples[("obsconform_agent_drops_total", ())] == 0


@pytest.mark.kernel
def test_metrics_show_the_ring_buffer_fill_of_a_kernel_run(daemon, target):
    assert ("obsconform_ringbuf_fill_ratio", ()) not in scrape_metrics(daemon), "no run measured it yet"
    run_id = daemon.submit(target.spec(no_ebpf=False))
    daemon.wait(run_id)
    samples = scrape_metrics(daemon)
    # 20 requests leave a few hundred bytes waiting in a 16 MiB ring: above 0, far below 1
    assert 0 < samples[("obsconform_ringbuf_fill_ratio", ())] < 0.01
    assert samples[("obsconform_kernel_requests_total", ())] >= 20
