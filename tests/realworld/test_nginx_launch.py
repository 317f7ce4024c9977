"""The nginx stack's launcher: the config it renders, and a real nginx it starts, answers
as the matrix record expects, and stops without leaving a process or a directory behind."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time

import pytest

from examples.realworld.nginx.launch import render
from tests.e2e.conftest import ROOT, free_port


def test_render_fills_port_upstream_and_run_directory(tmp_path):
    conf = render(8123, "http://127.0.0.1:9999/ignored/path", tmp_path)
    assert "listen 127.0.0.1:8123;" in conf
    assert "proxy_pass http://127.0.0.1:9999/inventory/reserve;" in conf
    assert f"pid {tmp_path}/nginx.pid;" in conf and "@" not in conf


@pytest.mark.parametrize("upstream", ["", "127.0.0.1:9999", "not a url"])
def test_render_refuses_an_upstream_without_host_and_port(tmp_path, upstream):
    with pytest.raises(ValueError, match="upstream must be an http://host:port URL"):
        render(8123, upstream, tmp_path)


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _rundirs() -> set[str]:
    return {n for n in os.listdir("/tmp") if n.startswith("obsconform-nginx-")}


def test_a_real_nginx_answers_and_a_lone_sigterm_stops_it_cleanly():
    port, before = free_port(), _rundirs()
    proc = subprocess.Popen([sys.executable, "-m", "examples.realworld.nginx.launch",
                             "--port", str(port), "--upstream", "http://127.0.0.1:9"], cwd=ROOT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                status, _ = _get(port, "/hello")
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen within 10 s"
                assert proc.poll() is None, f"the launcher exited with {proc.returncode}"
                time.sleep(0.05)
        assert status == 200
        assert [_get(port, p)[0] for p in ("/", "/items/1", "/items/999", "/metrics")] == \
            [200, 200, 404, 404]
        assert len(_rundirs() - before) == 1
    finally:
        proc.send_signal(signal.SIGTERM)  # the launcher alone: it must pass it on to nginx
        code = proc.wait(timeout=10)
    assert code == 0
    with pytest.raises(OSError):
        _get(port, "/hello")
    assert _rundirs() - before == set(), "the rendered config's directory was left behind"
