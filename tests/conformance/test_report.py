"""The report: verdict rules, schema validation, atomic writing, JUnit and the summary."""

from __future__ import annotations

import copy
import json
import os
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.errors import ObsconformError
from agent.evidence import EvidenceError, load_evidence, write_json_atomic
from conformance import (
    build_report, evaluate, exit_code, render_junit, render_summary, validate_report,
    write_report,
)
from conformance.catalogue import parse_catalogue
from conformance.report import DISCLAIMER, ReportError, decide_verdict
from tests.conformance.builders import Req, SemconvExporter

TINY = parse_catalogue({
    "profile": {"name": "errortrace", "version": "0.4"},
    "checks": [
        {"id": i, "title": i, "level": lvl, "category": "kernel-truth", "needs_kernel": True,
         "implemented": True, "sends": "s", "expects": "e", "spec_refs": [{"title": "t"}]}
        for i, lvl in (("KT-001", "MUST"), ("KT-002", "MUST"), ("KT-004", "SHOULD"))
    ],
})


def _checks(*statuses):
    ids = [("KT-001", "MUST"), ("KT-002", "MUST"), ("KT-004", "SHOULD")]
    return [{"id": i, "level": lvl, "status": s} for (i, lvl), s in zip(ids, statuses) if s]


VERDICTS = [
    # (KT-001 MUST, KT-002 MUST, KT-004 SHOULD), eBPF on → verdict
    (("pass", "pass", "pass"), True, "compliant"),
    (("pass", "pass", "fail"), True, "compliant"),  # SHOULD failures never change the verdict
    (("pass", "pass", "inconclusive"), True, "compliant"),
    (("fail", "pass", "pass"), True, "non_compliant"),
    (("fail", "inconclusive", "pass"), True, "non_compliant"),  # a failure beats inconclusive
    (("fail", "skip", "pass"), True, "non_compliant"),
    (("fail", None, "pass"), True, "non_compliant"),  # a selected MUST failed: that is enough
    (("inconclusive", "pass", "pass"), True, "inconclusive"),
    (("skip", "pass", "pass"), True, "inconclusive"),  # unverified MUST: never compliant
    (("pass", None, "pass"), True, "inconclusive"),  # a MUST not selected is unverified too
    ((None, None, "pass"), True, "inconclusive"),
    (("pass", "pass", "pass"), False, "inconclusive"),  # degraded mode: never compliant
    (("fail", "pass", "pass"), False, "non_compliant"),
]


@pytest.mark.parametrize("statuses, ebpf, verdict", VERDICTS,
                         ids=["-".join(s or "absent" for s in st) + ("" if e else "-degraded")
                              for st, e, _ in VERDICTS])
def test_verdict_rules(statuses, ebpf, verdict):
    got, reason, _ = decide_verdict(_checks(*statuses), TINY, ebpf=ebpf)
    assert got == verdict, reason


@pytest.mark.parametrize("statuses, ebpf, reason", [
    (("pass", None, "pass"), True, "no MUST failed, but 1 MUST not selected (KT-002)"),
    (("pass", "pass", "pass"), False,
     "no MUST failed, but degraded mode (no eBPF): kernel truth was not observed"),
    (("fail", None, "pass"), True, "MUST failed: KT-001; 1 MUST not selected (KT-002)"),
    ((None, None, "pass"), True, "no MUST check was evaluated; 2 MUST not selected (KT-001, KT-002)"),
], ids=["partial-selection", "degraded", "partial-failure", "no-must"])
def test_the_verdict_reason_says_what_the_verdict_does_not_cover(statuses, ebpf, reason):
    verdict, got, absent = decide_verdict(_checks(*statuses), TINY, ebpf=ebpf)
    assert got == reason
    assert absent == [i for i, s in zip(("KT-001", "KT-002"), statuses) if s is None]


def test_a_check_subset_of_an_honest_run_is_inconclusive_not_compliant(run):
    b = run()
    for i in range(3):
        b.request(Req(path=f"/items/{i}"))
    ev = b.build()
    rep = build_report(ev, evaluate(ev, select=["TC-001", "SC-003"]), tool_version="0.1.0")
    assert [c["status"] for c in rep["checks"]] == ["pass", "pass"]
    assert rep["summary"]["verdict"] == "inconclusive" and exit_code("inconclusive") == 3
    assert "KT-001" in rep["summary"]["not_evaluated"]
    assert "MUST not selected" in rep["summary"]["verdict_reason"]


def test_a_degraded_run_is_never_compliant_even_with_only_non_kernel_checks(run):
    b = run(ebpf=False, kernel_stats={}, degraded_reason="--no-ebpf")
    for i in range(3):
        b.request(Req(path=f"/items/{i}"))
    ev = b.build()
    rep = build_report(ev, evaluate(ev, select=["TC-001", "SC-003"]), tool_version="0.1.0")
    assert [c["status"] for c in rep["checks"]] == ["pass", "pass"]
    assert rep["summary"]["verdict"] == "inconclusive"
    assert "degraded mode" in rep["summary"]["verdict_reason"]


@pytest.mark.parametrize("verdict, code", [("compliant", 0), ("non_compliant", 2),
                                           ("inconclusive", 3)])
def test_exit_codes(verdict, code):
    assert exit_code(verdict) == code


def test_exit_code_rejects_unknown_verdict():
    with pytest.raises(ValueError, match="verdict must be one of"):
        exit_code("meh")


@pytest.fixture
def report(run):
    b = run(exporter=SemconvExporter())
    b.scrape("before")
    for i in range(20):
        b.request(Req(path=f"/items/{i}", spans=0 if i == 7 else 1))
    b.outbound(b.kernel[-1])
    b.scrape("after")
    ev = b.build()
    return build_report(ev, evaluate(ev), tool_version="0.1.0")


def test_a_built_report_is_valid_and_complete(report):
    assert validate_report(report) == []
    assert list(report)[:11] == ["schema_version", "report_id", "generated_at", "tool", "host",
                                 "target", "profile", "run", "measurements", "summary", "checks"]
    assert uuid.UUID(report["report_id"]).version == 4
    assert report["disclaimer"] == DISCLAIMER and "not an official CNCF" in DISCLAIMER
    assert report["profile"]["thresholds"]["KT-001"] == {"loss_budget_pct": 0.001}
    assert report["run"]["duration_s"] == 30.5 and report["run"]["requests_sent"] == 20
    m = report["measurements"]
    spec_fields = ("requests", "outbound_requests", "agent_requests", "agent_drops", "truncated_captures")
    assert {k: m["kernel"][k] for k in spec_fields} == {"requests": 20, "outbound_requests": 1,
                                                         "agent_requests": 2, "agent_drops": 0,
                                                         "truncated_captures": 0}
    assert m["loss"]["spans"] == {"kernel_requests": 20, "missing": 1, "duplicates": 0,
                                  "pct": 5.0, "unjoinable": 0,
                                  "joined_by": {"traceparent": 19, "marker": 0, "peer": 0,
                                                "time": 0}}
    assert m["loss"]["metrics"]["mismatched_series"] == 0
    assert m["latency_drift_us"]["samples"] == 19
    assert report["summary"]["verdict"] == "non_compliant"  # KT-001 lost a span
    assert report["summary"]["counts"]["by_level"]["MUST"]["fail"] == 1


def test_degraded_report_is_valid_with_null_kernel_figures(run):
    b = run(ebpf=False, kernel_stats={}, degraded_reason="no BPF")
    b.request()
    ev = b.build()
    ev.kernel = []  # degraded mode: nothing from the kernel
    rep = build_report(ev, evaluate(ev), tool_version="0.1.0")
    assert validate_report(rep) == []
    assert rep["measurements"]["kernel"]["requests"] is None
    assert rep["summary"]["verdict"] == "inconclusive"
    assert rep["run"]["ebpf"] is False and rep["run"]["degraded_reason"] == "no BPF"


@pytest.mark.parametrize("path", [
    ("schema_version",), ("report_id",), ("disclaimer",), ("checks",),
    ("measurements", "latency_drift_us"), ("summary", "verdict"), ("run", "evidence_dir"),
    ("profile", "thresholds"), ("host", "kernel"),
], ids=lambda p: ".".join(p))
def test_schema_rejects_a_report_missing_a_required_field(report, path):
    broken = copy.deepcopy(report)
    parent = broken
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    errors = validate_report(broken)
    assert any(f"'{path[-1]}' is a required property" in e for e in errors), errors


@pytest.mark.parametrize("mutate, fragment", [
    (lambda r: r["summary"].update(verdict="mostly_fine"), "is not one of"),
    (lambda r: r["checks"][0].update(status="ok"), "is not one of"),
    (lambda r: r["checks"][0].update(colour="red"), "Additional properties"),
    (lambda r: r.update(report_id="not-a-uuid"), "does not match"),
    (lambda r: r.update(generated_at="yesterday"), "does not match"),
    (lambda r: r["checks"][0].update(id="KT-1"), "does not match"),
], ids=["bad-verdict", "bad-status", "extra-check-field", "bad-uuid", "bad-timestamp",
        "bad-check-id"])
def test_schema_rejects_bad_values(report, mutate, fragment):
    broken = copy.deepcopy(report)
    mutate(broken)
    assert any(fragment in e for e in validate_report(broken))


def test_write_report_writes_the_whole_report_and_leaves_no_temp_file(report, tmp_path):
    out = tmp_path / "out" / "CNCF-compliance-report.json"
    write_report(report, out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_write_report_is_atomic_when_the_rename_fails(report, tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "CNCF-compliance-report.json"
    out.write_text("previous report")
    seen = []

    def fail_replace(src, dst):
        seen.append(Path(src).read_text())  # the new report was complete in the temp file
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(ReportError, match="cannot write report .*No space left"):
        write_report(report, out)
    assert out.read_text() == "previous report", "the old report stays intact"
    assert [p.name for p in out.parent.iterdir()] == [out.name], "no temp file is left behind"
    assert json.loads(seen[0])["report_id"] == report["report_id"]


def test_an_invalid_report_is_refused_and_nothing_is_written(report, tmp_path):
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "r.json"
    out.write_text("previous")
    broken = copy.deepcopy(report)
    del broken["summary"]
    with pytest.raises(ReportError, match="does not match its schema"):
        write_report(broken, out)
    assert out.read_text() == "previous" and [p.name for p in out.parent.iterdir()] == ["r.json"]


def test_junit_has_one_suite_per_category_and_one_case_per_check(report):
    root = ET.fromstring(render_junit(report))
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["kernel-truth", "trace-context", "bizcode",
                                               "errcode", "alignment", "exposition"]
    cases = root.findall(".//testcase")
    assert len(cases) == len(report["checks"]) == int(root.get("tests"))
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name")[:6] for c in failed] == ["KT-001"]
    text = failed[0].find("failure").text
    assert "observed:" in text and '"missing": 1' in text and "expected:" in text
    assert int(root.get("skipped")) == sum(c["status"] == "skip" for c in report["checks"])


def test_summary_starts_with_the_verdict_and_fits_80_columns_but_the_path(report):
    report["checks"][0]["message"] = "x" * 300  # long messages are cut, not wrapped
    path = "/very/long/" + "d" * 100 + "/report.json"
    text = render_summary(report, report_path=path)
    lines = text.splitlines()
    assert lines[0].startswith("obsconform: NON-COMPLIANT (errortrace 0.4)")
    assert f"report: {path}" in lines, "the report's path is printed whole, to be copied"
    assert all(len(line) <= 80 for line in lines if not line.startswith("report: ")), \
        [l for l in lines if len(l) > 80]
    assert any(line.startswith("  FAIL   KT-001 MUST") for line in lines)
    assert any(line.startswith("span loss: 1 of 20") for line in lines)
    assert any(line.startswith("latency drift (us): p50 200") for line in lines)
    assert lines[-2].startswith("report: /very/long/")


def test_summary_says_degraded_mode_on_the_first_line(run):
    b = run(ebpf=False, kernel_stats={}, degraded_reason="running in a container without CAP_BPF")
    b.request()
    ev = b.build()
    text = render_summary(build_report(ev, evaluate(ev), tool_version="0.1.0"))
    lines = text.splitlines()
    assert lines[0] == "DEGRADED MODE, no kernel truth: running in a container without CAP_BPF"
    assert lines[1].startswith("obsconform: INCONCLUSIVE")


NAN_BODY = ("# HELP http_requests_total R.\n# TYPE http_requests_total counter\n"
            'http_requests_total{method="GET",handler="/items/{id}",status="2xx"} %s\n')


def test_non_finite_scraped_numbers_become_null_in_a_strict_json_report(run, tmp_path):
    b = run()
    b.raw_scrape("before", (NAN_BODY % "0").encode())
    for i in range(3):
        b.request(Req(path=f"/items/{i}"))
    b.raw_scrape("after", (NAN_BODY % "NaN").encode())
    ev = b.build()
    rep = build_report(ev, evaluate(ev), tool_version="x")
    assert rep["measurements"]["loss"]["metrics"]["metric_count"] is None
    out = write_report(rep, tmp_path / "r.json")

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")
    strict = json.loads(out.read_text(), parse_constant=refuse)
    assert strict["summary"]["verdict"] == rep["summary"]["verdict"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_evidence_json_writes_non_finite_numbers_as_null(tmp_path, value):
    path = tmp_path / "meta.json"
    write_json_atomic(path, {"a": value, "nested": [1.5, {"b": value}], "t": (value,)})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == \
        {"a": None, "nested": [1.5, {"b": None}], "t": [None]}


def test_validate_report_refuses_a_non_finite_number(report):
    broken = copy.deepcopy(report)
    broken["measurements"]["latency_drift_us"]["p50"] = float("nan")
    assert any("not JSON-serialisable" in e for e in validate_report(broken))


def test_an_empty_run_directory_is_a_one_line_user_error(tmp_path):
    with pytest.raises(ObsconformError, match="is not a run directory: meta.json is missing"):
        load_evidence(tmp_path)
    assert issubclass(EvidenceError, ValueError)  # callers that catch ValueError still work
    r = CliRunner().invoke(cli, ["analyze", str(tmp_path)])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()  # stderr included (click's default)
    assert len(lines) == 1 and "not a run directory" in lines[0] and "internal error" not in lines[0]
