"""A SUT started before the run (--pid) reaches the run's OTLP receiver and downstream sink
at the addresses given by --otlp-listen / --sink-listen; a busy address is one error line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import ROOT, free_port
from tests.e2e.test_bad_input import one_error_line

SCENARIO = ROOT / "examples" / "refservice" / "scenario.json"


def wait_listening(port: int, proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the service exited with {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listened on {port} within {timeout_s} s")


@pytest.fixture
def running_refservice():
    """The reference service started by hand, exporting to a port no run has opened yet."""
    port, otlp_port, sink_port = free_port(), free_port(), free_port()
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "200",
           "OBSCONFORM_DOWNSTREAM_URL": f"http://127.0.0.1:{sink_port}"}
    proc = subprocess.Popen([sys.executable, "-m", "examples.refservice", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        yield proc, port, otlp_port, sink_port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.kernel
def test_a_running_sut_exports_to_the_given_otlp_and_sink_addresses(obsconform, running_refservice):
    proc, port, otlp_port, sink_port = running_refservice
    r = obsconform("run", "--pid", str(proc.pid), "--url", f"http://127.0.0.1:{port}",
                   "--scenario", str(SCENARIO), "-n", "40", "-c", "2",
                   "--otlp-listen", f"127.0.0.1:{otlp_port}", "--sink-listen", f"127.0.0.1:{sink_port}",
                   timeout=120)
    assert r.code in (0, 2, 3), r.stderr
    assert f"OTLP receiver at http://127.0.0.1:{otlp_port}" in r.stderr
    assert f"downstream sink at http://127.0.0.1:{sink_port}" in r.stderr
    meta = json.loads((r.run_dir / "meta.json").read_text())
    assert meta["target"]["otlp_endpoint"] == f"http://127.0.0.1:{otlp_port}"
    assert meta["target"]["downstream_url"] == f"http://127.0.0.1:{sink_port}"
    assert meta["settle"]["spans"] > 0, meta["settle"]
    for cid in ("KT-001", "TC-002"):  # spans reached the receiver; fan-out calls reached the sink
        check = r.check(cid)
        assert check["status"] == "pass", f"{cid}: {check['message']}"


@pytest.mark.parametrize("option", ["--otlp-listen", "--sink-listen"])
def test_a_busy_listen_address_is_one_error_line(obsconform, running_refservice, option):
    proc, port, _, _ = running_refservice
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        addr = f"127.0.0.1:{busy.getsockname()[1]}"
        # the other listener on a free port, not the default 4318 (which may be taken)
        other = {"--otlp-listen": "--sink-listen", "--sink-listen": "--otlp-listen"}[option]
        r = obsconform("run", "--pid", str(proc.pid), "--url", f"http://127.0.0.1:{port}", "--no-ebpf",
                       option, addr, other, f"127.0.0.1:{free_port()}", timeout=60)
    assert r.code == 1, r.stderr
    line = one_error_line(r.stderr)
    assert f"{option} {addr}: cannot listen" in line and "in use" in line, line


@pytest.mark.parametrize("value", ["4318", "example.com:4318", "127.0.0.1:70000"])
def test_a_malformed_listen_address_is_refused_before_the_run(obsconform, value):
    r = obsconform("run", "--pid", "1", "--url", "http://127.0.0.1:1", "--no-ebpf", "--otlp-listen", value)
    assert r.code == 1
    assert f"--otlp-listen {value!r}" in one_error_line(r.stderr)
