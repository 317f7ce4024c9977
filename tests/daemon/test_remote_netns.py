"""`obsconform run --agent` from a "CI host" to a daemon on a "test host": two network namespaces
joined by a veth pair (iproute2), addresses that exist only inside them, removed afterwards."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from conformance import validate_report
from tests.daemon.conftest import ROOT, in_netns, start_target

AGENT_PORT = 9477


@dataclass
class Hosts:
    agent_ns: str
    ci_ns: str
    agent_ip: str

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """The real CLI, run on the CI host (inside its namespace)."""
        return subprocess.run([*in_netns(self.ci_ns), sys.executable, "-m", "agent.cli", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _ip(*args: str) -> None:
    """One iproute2 command: synchronous, so a link moved into a namespace is there when it
    returns (pyroute2's move and lookup raced: a moved veth end was not seen for 5 s)."""
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {r.stderr.strip()}")


@pytest.fixture
def hosts():
    tag = secrets.token_hex(3)
    agent_ns, ci_ns = f"obsc-agent-{tag}", f"obsc-ci-{tag}"
    subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    veth_a, veth_c = f"oca{tag}", f"occ{tag}"
    try:
        _ip("netns", "add", agent_ns)
        _ip("netns", "add", ci_ns)
        _ip("link", "add", veth_a, "netns", agent_ns, "type", "veth", "peer", "name", veth_c, "netns", ci_ns)
        for ns, ifname, addr in ((agent_ns, veth_a, f"{subnet}.1"), (ci_ns, veth_c, f"{subnet}.2")):
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", ifname)
            _ip("-n", ns, "link", "set", ifname, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield Hosts(agent_ns, ci_ns, f"{subnet}.1")
    finally:
        for ns in (agent_ns, ci_ns):  # removing a namespace deletes its end of the veth pair too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def agent_target(hosts):
    t = start_target(netns=hosts.agent_ns)
    yield t
    t.proc.kill()
    t.proc.wait()
    t.proc.stdout.close()


def assert_valid_junit(xml_text: str, report: dict) -> None:
    """One testsuite per category, one testcase per check, counts that add up, failure text."""
    root = ET.fromstring(xml_text)
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert sorted(s.get("name") for s in suites) == sorted({c["category"] for c in report["checks"]})
    by_id = {c["id"]: c for c in report["checks"]}
    seen = []
    for s in suites:
        cases = s.findall("testcase")
        assert int(s.get("tests")) == len(cases)
        for tag, attr in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
            assert int(s.get(attr)) == sum(c.find(tag) is not None for c in cases), (s.get("name"), attr)
        for case in cases:
            check = by_id[case.get("name").split()[0]]
            seen.append(check["id"])
            failure = case.find("failure")
            assert (failure is not None) == (check["status"] == "fail")
            if failure is not None:
                assert "observed:" in failure.text and "expected:" in failure.text
    assert sorted(seen) == sorted(by_id)
    assert int(root.get("tests")) == len(by_id)


def remote_args(hosts, daemon, target, out: Path, *extra: str) -> list[str]:
    return ["run", "--agent", f"http://{hosts.agent_ip}:{AGENT_PORT}", "--token-file", str(daemon.token_file),
            "--pid", str(target.pid), "--url", target.url, "-n", "40", "-c", "2", "--out", str(out),
            "--junit", str(out / "junit.xml"), "--html", str(out / "report.html"), *extra]


@pytest.mark.parametrize("mode", [
    pytest.param("no-ebpf", id="degraded"),
    pytest.param("ebpf", id="kernel", marks=pytest.mark.kernel),
])
def test_remote_run_over_the_veth_pair_end_to_end(hosts, daemons, agent_target, tmp_path, mode):
    d = daemons.start(listen=f"{hosts.agent_ip}:{AGENT_PORT}", netns=hosts.agent_ns)
    assert "without TLS" in d.log_text(), "a non-loopback listen without TLS is warned about"
    out = tmp_path / "ci-out"
    r = hosts.cli(*remote_args(hosts, d, agent_target, out, *(["--no-ebpf"] if mode == "no-ebpf" else [])))

    assert (out / "CNCF-compliance-report.json").is_file(), r.stderr + d.log_text()
    report = json.loads((out / "CNCF-compliance-report.json").read_text())
    assert validate_report(report) == []
    expected_code = {"compliant": 0, "non_compliant": 2, "inconclusive": 3}[report["summary"]["verdict"]]
    assert r.returncode == expected_code, r.stderr
    if mode == "no-ebpf":
        assert r.returncode == 3, "degraded: KT checks inconclusive"
    else:
        kernel = report["measurements"]["kernel"]
        assert kernel["requests"] >= 40, kernel  # the daemon's probes saw the load on the test host
        assert r.returncode == 2, "the tiny target sends no spans: KT-001 fails"
    assert "submitted run" in r.stderr and "sending 40 requests" in r.stderr and "evidence downloaded" in r.stderr
    run_dirs = list((out / "runs").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "meta.json").is_file() and (run_dirs[0] / "driver.jsonl").is_file()
    assert_valid_junit((out / "junit.xml").read_text(), report)
    page = (out / "report.html").read_text()
    assert f">{report['summary']['verdict']}<" in page and 'id="chart-loss"' in page
    assert "is not available here" not in page, "the charts read the downloaded evidence"
    # Later, on the CI host, from the downloaded report alone: the evidence next to it is found.
    again = hosts.cli("report", "html", str(out / "CNCF-compliance-report.json"), "-o", str(out / "again.html"))
    assert again.returncode == 0, again.stderr
    bars = (out / "again.html").read_text().count("without a span")
    assert bars == page.count("without a span")
    assert (bars > 0) == (mode == "ebpf"), "loss-over-time bars exactly when the kernel saw requests"


def test_remote_exit_code_equals_a_local_run(hosts, daemons, agent_target, tmp_path):
    d = daemons.start(listen=f"{hosts.agent_ip}:{AGENT_PORT}", netns=hosts.agent_ns)
    remote = hosts.cli(*remote_args(hosts, d, agent_target, tmp_path / "remote", "--no-ebpf"))
    local = subprocess.run([*in_netns(hosts.agent_ns), sys.executable, "-m", "agent.cli", "run",
                            "--pid", str(agent_target.pid), "--url", agent_target.url, "-n", "40", "--no-ebpf",
                            "--out", str(tmp_path / "local")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert remote.returncode == local.returncode == 3, (remote.stderr, local.stderr)


@pytest.mark.parametrize("token, fragment", [
    (None, "--agent needs --token-file"),
    ("wrong-token-" + "x" * 20, "wrong bearer token"),
], ids=["no-token-file", "wrong-token"])
def test_remote_refusals_reach_the_ci_host_as_one_error_line(hosts, daemons, agent_target, tmp_path, token, fragment):
    d = daemons.start(listen=f"{hosts.agent_ip}:{AGENT_PORT}", netns=hosts.agent_ns)
    args = ["run", "--agent", f"http://{hosts.agent_ip}:{AGENT_PORT}", "--pid", str(agent_target.pid),
            "--url", agent_target.url, "--no-ebpf", "--out", str(tmp_path / "o")]
    if token:
        tf = tmp_path / "bad-token"
        tf.write_text(token)
        args += ["--token-file", str(tf)]
    r = hosts.cli(*args, timeout=60)
    assert r.returncode == 1
    errors = [l for l in r.stderr.splitlines() if l.startswith("obsconform: error:")]
    assert len(errors) == 1 and fragment in errors[0], r.stderr


def test_an_agent_nobody_listens_on_is_a_clear_error(hosts, tmp_path):
    tf = tmp_path / "token"
    tf.write_text("t" * 32)
    r = hosts.cli("run", "--agent", f"http://{hosts.agent_ip}:{AGENT_PORT}", "--token-file", str(tf),
                  "--pid", "1", "--url", "http://127.0.0.1:1", "--no-ebpf", timeout=60)
    assert r.returncode == 1 and "cannot reach the agent" in r.stderr
