"""Every refusal of the daemon, with its HTTP status and message: auth, exec, size, paths, start-up."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import uuid
from urllib.parse import urlsplit

import pytest

from agent.remote import AgentClient, RemoteError
from tests.daemon.conftest import ROOT

SOME_ID = str(uuid.uuid4())
V1_ROUTES = [
    pytest.param("GET", "/v1/runs", id="list"),
    pytest.param("POST", "/v1/runs", id="submit"),
    pytest.param("GET", f"/v1/runs/{SOME_ID}", id="status"),
    pytest.param("DELETE", f"/v1/runs/{SOME_ID}", id="delete"),
    pytest.param("POST", f"/v1/runs/{SOME_ID}/cancel", id="cancel"),
    pytest.param("GET", f"/v1/runs/{SOME_ID}/report", id="report"),
    pytest.param("GET", f"/v1/runs/{SOME_ID}/evidence", id="evidence"),
    pytest.param("GET", "/v1/schema/run-spec", id="schema"),
    pytest.param("GET", "/v1/no-such-route", id="unknown"),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One daemon for the read-only refusal tests of this module (starting one costs ~0.5 s)."""
    from tests.daemon.conftest import Daemons

    ds = Daemons(tmp_path_factory.mktemp("security"))
    yield ds.start()
    ds.cleanup()


def raw(url: str, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict, dict]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        is_json = resp.getheader("Content-Type", "").startswith("application/json")
        return resp.status, json.loads(data) if is_json else {}, dict(resp.getheaders())
    finally:
        conn.close()


@pytest.mark.parametrize("method, path", V1_ROUTES)
def test_every_v1_route_refuses_a_request_without_token(shared, method, path):
    status, body, headers = raw(shared.url, method, path, b"{}" if method == "POST" else b"")
    assert status == 401
    assert "missing bearer token" in body["error"]
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")


@pytest.mark.parametrize("method, path", V1_ROUTES)
def test_every_v1_route_refuses_a_wrong_token(shared, method, path):
    status, body = shared.api(method, path, {} if method == "POST" else None, token="x" * 48)
    assert status == 401
    assert "wrong bearer token" in body["error"]


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "bearer  ", "Token " + "x" * 48],
                         ids=["basic", "empty-bearer", "blank", "other-scheme"])
def test_malformed_authorization_headers_are_refused(shared, header):
    status, body, _ = raw(shared.url, "GET", "/v1/runs", headers={"Authorization": header})
    assert status == 401 and "missing bearer token" in body["error"]


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_health_and_metrics_need_no_token(shared, path):
    status, _, _ = raw(shared.url, "GET", path)
    assert status == 200


def test_exec_spec_is_refused_without_allow_exec(shared, target):
    status, body = shared.api("POST", "/v1/runs", {"url": target.url, "exec": "sleep 100"})
    assert status == 403
    assert "--allow-exec" in body["error"]
    assert shared.api("GET", "/v1/runs")[1]["runs"] == [], "a refused spec must not be queued"


def test_oversize_body_is_refused_with_413_before_it_is_read(shared):
    big = json.dumps({"url": "http://127.0.0.1:1", "pid": 1, "label": "x" * 70_000}).encode()
    status, body, _ = raw(shared.url, "POST", "/v1/runs", big,
                          {"Authorization": f"Bearer {shared.token}", "Content-Type": "application/json"})
    assert status == 413
    assert "exceeds the 65536-byte limit" in body["error"]


def test_chunked_body_is_refused_with_411(shared):
    parts = urlsplit(shared.url)
    body = b'{"url": "http://x"}'
    request = (f"POST /v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {shared.token}\r\n"
               f"Transfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n").encode() + body + b"\r\n0\r\n\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(request)  # all at once: the refusal cannot race the body
        resp = http.client.HTTPResponse(s)
        resp.begin()
        assert resp.status == 411
        assert "Content-Length" in json.loads(resp.read())["error"]


ESCAPES = [
    pytest.param({"out": "../elsewhere"}, "escapes the reports directory", id="out-dotdot"),
    pytest.param({"out": "/tmp/elsewhere"}, "escapes the reports directory", id="out-absolute"),
    pytest.param({"out": "a/../../b"}, "escapes the reports directory", id="out-nested-dotdot"),
    pytest.param({"junit": "../../runs.sqlite"}, "escapes the reports directory", id="junit-over-the-index"),
    pytest.param({"junit": "/etc/cron.d/x"}, "escapes the reports directory", id="junit-absolute"),
    pytest.param({"out": "link-out"}, "through a symlink", id="out-through-symlink"),
]


@pytest.mark.parametrize("extra, fragment", ESCAPES)
def test_spec_paths_cannot_escape_the_reports_directory(shared, target, tmp_path, extra, fragment):
    link = shared.reports_dir / "link-out"
    if not link.is_symlink():
        link.symlink_to(tmp_path)
    status, body = shared.api("POST", "/v1/runs", target.spec(**extra))
    assert status == 403, body
    assert fragment in body["error"]
    assert not any(link.resolve().iterdir()), "nothing may be written outside the reports directory"


INVALID = [
    pytest.param({"pid": 1}, "'url' is a required property", id="no-url"),
    pytest.param({"url": "http://127.0.0.1:1"}, "exactly one target", id="no-target"),
    pytest.param({"url": "http://127.0.0.1:1", "pid": 1, "exec": "x"}, "exactly one target", id="two-targets"),
    pytest.param({"url": "http://127.0.0.1:1", "port": 80, "cgroup": "/x"}, "exactly one target", id="port-and-cgroup"),
    pytest.param({"url": "http://x", "port": 70000}, "port: 70000 is greater than the maximum", id="bad-port"),
    pytest.param({"url": "ftp://x", "pid": 1}, "url: 'ftp://x' does not match", id="bad-scheme"),
    pytest.param({"url": "http://x", "pid": 1, "requests": 0}, "requests: 0 is less than the minimum", id="zero-requests"),
    pytest.param({"url": "http://x", "pid": 1, "paths": ["no-slash"]}, "paths/0", id="relative-path"),
    pytest.param({"url": "http://x", "pid": 1, "checks": ["kt-1"]}, "checks/0", id="bad-check-id"),
    pytest.param({"url": "http://x", "pid": 1, "rm": "-rf"}, "Additional properties", id="unknown-field"),
    pytest.param({"url": "http://x", "pid": 1, "checks": ["ZZ-999"]}, '"checks": unknown check', id="unknown-check"),
    pytest.param({"url": "http://x", "pid": 1, "scenario": {"load": []}}, "scenario: load:", id="bad-scenario"),
    pytest.param({"url": "http://x", "pid": 1, "scenario": {"load": [{"path": "/"}], "catalogue": "/etc/shadow"}},
                 "scenario: catalogue: an inline scenario cannot name a catalogue file", id="scenario-names-a-file"),
    pytest.param({"url": "http://x", "pid": 1, "otlp_listen": "host:4318"}, '"otlp_listen"', id="otlp-listen-not-an-ip"),
    pytest.param(["not", "an", "object"], "is not of type 'object'", id="array"),
]


@pytest.mark.parametrize("spec, fragment", INVALID)
def test_invalid_specs_are_refused_with_400_naming_the_problem(shared, spec, fragment):
    status, body = shared.api("POST", "/v1/runs", spec)
    assert status == 400
    assert fragment in body["error"], body["error"]


def test_a_body_that_is_not_json_is_refused_with_400(shared):
    status, body, _ = raw(shared.url, "POST", "/v1/runs", b"{not json",
                          {"Authorization": f"Bearer {shared.token}"})
    assert status == 400 and "not JSON" in body["error"]


def serve(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", "serve", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0"], ids=["ipv4-any", "ipv6-any"])
def test_non_loopback_listen_without_token_refuses_to_start(tmp_path, listen):
    r = serve("--listen", listen, "--reports-dir", str(tmp_path))
    assert r.returncode == 1
    assert "refusing to listen on" in r.stderr and "without a token" in r.stderr, r.stderr
    assert "serving on" not in r.stdout


@pytest.mark.parametrize("content, fragment", [("", "at least 16 characters"), ("short", "at least 16"),
                                               ("two words here and more", "without spaces")],
                         ids=["empty", "short", "spaces"])
def test_a_weak_token_file_refuses_to_start(tmp_path, content, fragment):
    tf = tmp_path / "token"
    tf.write_text(content)
    r = serve("--listen", "127.0.0.1:0", "--reports-dir", str(tmp_path), "--token-file", str(tf))
    assert r.returncode == 1 and fragment in r.stderr, r.stderr


def test_loopback_without_token_file_generates_a_private_token(daemons):
    d = daemons.start(with_token=False)
    token_file = d.reports_dir / "daemon.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert d.api("GET", "/v1/runs", token="")[0] == 401
    assert d.api("GET", "/v1/runs")[0] == 200


@pytest.fixture
def tls_pair(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def test_tls_serves_https_and_a_verifying_client_gets_through(daemons, tls_pair, monkeypatch):
    cert, key = tls_pair
    d = daemons.start("--tls-cert", str(cert), "--tls-key", str(key))
    assert d.url.startswith("https://")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts the system store or SSL_CERT_FILE
    assert d.api("GET", "/v1/runs") == (200, {"runs": []})
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(RemoteError, match="CERTIFICATE_VERIFY_FAILED"):
        d.api("GET", "/v1/runs")
    plain = AgentClient(d.url.replace("https://", "http://"), d.token)
    with pytest.raises(RemoteError, match="cannot reach the agent"):
        plain.call("GET", "/v1/runs")


def test_tls_needs_both_cert_and_key(tmp_path, tls_pair):
    r = serve("--listen", "127.0.0.1:0", "--reports-dir", str(tmp_path), "--tls-cert", str(tls_pair[0]))
    assert r.returncode == 1 and "give both --tls-cert and --tls-key" in r.stderr


def test_token_file_readable_by_others_is_warned_about(daemons):
    d = daemons.start(token_mode=0o644)
    assert "readable by other users; chmod 600 it" in d.log_text()


def test_a_second_daemon_on_the_same_reports_dir_refuses_to_start(daemons):
    d = daemons.start()
    r = serve("--listen", "127.0.0.1:0", "--reports-dir", str(d.reports_dir), "--token-file", str(d.token_file))
    assert r.returncode == 1
    assert "another obsconform daemon already uses --reports-dir" in r.stderr, r.stderr
    assert d.api("GET", "/v1/runs")[0] == 200, "the first daemon is untouched"


@pytest.mark.parametrize("target", [{"port": 8080}, {"cgroup": "/sys/fs/cgroup/app"}], ids=["port", "cgroup"])
def test_port_and_cgroup_targets_reach_the_run_config(target, tmp_path):
    from agent.daemon.spec import run_config, validate

    spec = validate({"url": "http://127.0.0.1:8080", **target, "ringbuf_pages": 64}, allow_exec=False)
    cfg = run_config(spec, tmp_path)
    assert {k: getattr(cfg, k) for k in target} == target
    assert cfg.ringbuf_pages == 64
