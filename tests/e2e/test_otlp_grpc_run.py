"""--otlp-grpc-listen end to end: a run whose SUT exports its spans over OTLP/gRPC, and the
option's validation in the CLI, the run config, the SUT's environment and the daemon's run spec."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from agent.daemon.spec import SpecError, run_config, validate
from agent.errors import InputError
from agent.runner import RunConfig
from agent.sut import otel_environment
from tests.e2e.conftest import free_port, refservice_cmd
from tests.e2e.test_bad_input import one_error_line


@pytest.mark.kernel
def test_an_exec_sut_exports_over_grpc_and_kt001_passes(obsconform):
    port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    r = obsconform("run", "--exec", refservice_cmd(port), "--url", url, "--path", "/items/1",
                   "-n", "60", "-c", "2", "--check", "KT-001", "--otlp-grpc-listen", f"127.0.0.1:{grpc_port}",
                   timeout=120)
    assert r.code == 3, r.stderr + r.stdout  # one check selected: at best inconclusive
    kt1 = r.check("KT-001")
    assert kt1["status"] == "pass", kt1["message"]
    assert f"OTLP/gRPC receiver at http://127.0.0.1:{grpc_port}" in r.stderr
    meta = json.loads((r.run_dir / "meta.json").read_text())
    assert meta["target"]["otlp_grpc_endpoint"] == f"http://127.0.0.1:{grpc_port}"
    assert r.report["target"]["otlp_grpc_endpoint"] == f"http://127.0.0.1:{grpc_port}"
    receivers = meta["settle"]["receivers"]
    # Every span came over gRPC: the OTLP/HTTP receiver, still listening, got nothing.
    assert receivers["http"]["requests"] == 0, receivers
    assert receivers["grpc"]["errors"] == 0 and receivers["grpc"]["spans"] == meta["settle"]["spans"] > 0, receivers
    assert kt1["observed"]["kernel_requests"] > 0
    sut_log = (r.run_dir / "sut.log").read_text()
    assert "protocol not supported" not in sut_log


def test_a_busy_grpc_port_is_one_error_line_and_exit_1(obsconform, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        addr = f"127.0.0.1:{busy.getsockname()[1]}"
        # The receivers listen before the SUT is launched: the command never runs.
        marker = tmp_path / "ran"
        r = obsconform("run", "--exec", f"touch {marker}", "--url", f"http://127.0.0.1:{free_port()}", "--no-ebpf",
                       "--otlp-grpc-listen", addr, timeout=60)
    assert r.code == 1, r.stderr
    line = one_error_line(r.stderr)
    assert f"--otlp-grpc-listen {addr}: cannot listen (Address already in use)" in line, line
    assert not marker.exists()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [pytest.param("4317", "give HOST:PORT", id="no-host"),
     pytest.param("collector:4317", "the host must be an IP address", id="host-name"),
     pytest.param("127.0.0.1:70000", "give HOST:PORT", id="port-out-of-range")],
)
def test_a_bad_value_is_one_error_line_and_exit_1(obsconform, value, fragment):
    r = obsconform("run", "--exec", "true", "--url", "http://127.0.0.1:1", "--no-ebpf",
                   "--otlp-grpc-listen", value, timeout=60)
    assert r.code == 1, r.stderr
    line = one_error_line(r.stderr)
    assert f"--otlp-grpc-listen {value!r}: {fragment}" in line, line


@pytest.mark.parametrize(
    ("value", "address"),
    [pytest.param(None, None, id="off-by-default"),
     pytest.param("127.0.0.1:4317", ("127.0.0.1", 4317), id="ipv4"),
     pytest.param("localhost:0", ("127.0.0.1", 0), id="localhost-any-port"),
     pytest.param("[::1]:4317", ("::1", 4317), id="ipv6")],
)
def test_run_config_reads_the_address(value, address):
    cfg = RunConfig(url="http://127.0.0.1:1", exec_cmd="true", otlp_grpc_listen=value)
    assert cfg.otlp_grpc_address() == address


def test_run_config_validation_names_the_option():
    cfg = RunConfig(url="http://127.0.0.1:1", exec_cmd="true", no_ebpf=True, otlp_grpc_listen="nope")
    with pytest.raises(InputError, match="--otlp-grpc-listen 'nope': give HOST:PORT"):
        cfg.validate()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_the_sut_environment_names_one_endpoint_and_protocol(protocol):
    caller = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
              "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://elsewhere:4318/v1/logs", "KEEP": "1"}
    env = otel_environment(caller, "http://127.0.0.1:4317", "http://127.0.0.1:9", protocol=protocol)
    assert (env["OTEL_EXPORTER_OTLP_ENDPOINT"], env["OTEL_EXPORTER_OTLP_PROTOCOL"]) == ("http://127.0.0.1:4317", protocol)
    # A signal-specific protocol or endpoint would send that signal past the receiver.
    assert not {k for k in env if k.startswith(("OTEL_EXPORTER_OTLP_TRACES_", "OTEL_EXPORTER_OTLP_LOGS_"))}
    assert env["KEEP"] == "1"


@pytest.mark.parametrize(
    ("value", "error"),
    [pytest.param("127.0.0.1:4317", None, id="ok"),
     pytest.param("[::1]:0", None, id="ipv6-any-port"),
     pytest.param("collector:4317", '"otlp_grpc_listen"', id="not-an-ip"),
     pytest.param("127.0.0.1", "invalid run spec", id="no-port"),
     pytest.param(4317, "invalid run spec", id="not-a-string")],
)
def test_daemon_run_spec_takes_the_field(tmp_path: Path, value, error):
    spec = {"url": "http://127.0.0.1:1", "pid": 1, "otlp_grpc_listen": value}
    if error:
        with pytest.raises(SpecError, match=error) as e:
            validate(spec, allow_exec=False)
        assert e.value.status == 400
        return
    assert run_config(validate(spec, allow_exec=False), tmp_path).otlp_grpc_listen == value
