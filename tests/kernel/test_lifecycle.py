"""Collector life cycle with real eBPF: finish() ends open connections and writes evidence;
the probes are detached on every exit path (normal, exception, SIGTERM)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.errors import ProbeError
from agent.evidence import EvidenceWriter, load_evidence, RunMeta
from agent.kernel import KernelCollector, attached_program_ids
from agent.tracecontext import new_traceparent
from tests.kernel.conftest import send_load, wait_for

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]


def test_finish_ends_open_keepalive_connections_writes_evidence_and_detaches(kernel_ok, start_server, tmp_path):
    server = start_server()
    writer = EvidenceWriter(tmp_path)
    with KernelCollector(writer, poll_ms=10) as kc:
        kc.add_target(server.pid)
        ids = kc.probe_program_ids()
        assert ids and ids <= attached_program_ids(os.getpid())
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        tps = [str(new_traceparent()) for _ in range(3)]
        for tp in tps:
            conn.request("GET", "/open", headers={"traceparent": tp})
            conn.getresponse().read()
        # the connection stays open: the last response can only end from the kernel map
        wait_for(lambda: kc.drain() >= 0 and kc.stats()["assembler"].get("response_starts") == 3,
                 what="three response starts")
        got = kc.finish()
        conn.close()
        assert kc.probe_program_ids() == set()
    assert [(r.header("traceparent"), r.status, r.aborted) for r in got] == [(tp, 200, False) for tp in tps]
    assert all(r.t_resp_last and r.t_resp_last >= r.t_resp_first and r.resp_bytes > 0 for r in got)
    assert not ids & attached_program_ids(), "finish() detaches every program"
    writer.meta(RunMeta(run_id="t", started_at="now", kernel_stats=kc.stats(), clock=kc.clock_info()))
    writer.close()
    assert [r.id for r in load_evidence(tmp_path).kernel] == [r.id for r in got]
    assert kc.finish() is got, "finish() is idempotent"


def test_probes_are_detached_when_the_with_block_raises(kernel_ok):
    with pytest.raises(RuntimeError, match="boom"):
        with KernelCollector() as kc:
            ids = kc.probe_program_ids()
            assert len(ids) >= 10
            raise RuntimeError("boom")
    assert not ids & attached_program_ids()
    kc.stop()  # idempotent


SIGTERM_CHILD = textwrap.dedent("""
    import os, sys
    from agent.kernel import KernelCollector, attached_program_ids
    try:
        with KernelCollector() as kc:
            print("ids", *sorted(kc.probe_program_ids()), flush=True)
            sys.stdin.readline()  # SIGTERM arrives while blocked here
    except SystemExit as e:
        print("left", e.code, *sorted(attached_program_ids(os.getpid())), flush=True)
        sys.stdin.readline()  # stay alive: the probes must be gone before the process is
""")


def test_sigterm_detaches_the_probes_before_the_process_exits(kernel_ok):
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD], cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        tag, *ids = child.stdout.readline().split()
        assert tag == "ids" and ids
        child.send_signal(signal.SIGTERM)
        tag, code, *left = child.stdout.readline().split()
        assert (tag, code, left) == ("left", "143", [])
        assert not {int(i) for i in ids} & attached_program_ids(), "detached while the process lives"
    finally:
        child.kill()
        child.wait(timeout=10)


@pytest.mark.parametrize("kwargs,message", [
    ({"capture_bytes": 100}, "capture_bytes must be an integer within 256..4096"),
    ({"capture_bytes": 8192}, "capture_bytes must be an integer within 256..4096"),
    ({"ringbuf_pages": 1000}, "ringbuf_pages must be a power of two"),
    ({"map_entries": 0}, "map_entries must be an integer"),
], ids=["capture-too-small", "capture-too-large", "ring-not-power-of-two", "no-map-entries"])
def test_bad_arguments_name_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KernelCollector(**kwargs)


def test_a_path_that_is_no_cgroup_is_a_probe_error(kernel_ok, tmp_path):
    with pytest.raises(ProbeError, match="is not a cgroup v2 directory"):
        KernelCollector(cgroup=str(tmp_path)).start()


def cgroup2_root() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if parts[2] == "cgroup2":
            return Path(parts[1])
    return None


@pytest.fixture
def cgroup_dir():
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup2 hierarchy is mounted on this host")
    path = root / f"obsconform-test-{os.getpid()}"
    path.mkdir()
    yield path
    for pid in (path / "cgroup.procs").read_text().split():
        os.kill(int(pid), signal.SIGKILL)
    wait_for(lambda: not (path / "cgroup.procs").read_text().strip(), what="the cgroup to empty")
    path.rmdir()


def test_cgroup_filter_traces_the_processes_of_that_cgroup(kernel_ok, start_server, cgroup_dir):
    inside, outside = start_server(), start_server()
    (cgroup_dir / "cgroup.procs").write_text(str(inside.pid))
    with KernelCollector(cgroup=str(cgroup_dir), poll_ms=10) as kc:
        assert kc.traced_pids() == set(), "no tgid was added: the cgroup alone selects"
        sent = send_load(inside.port, 10, 2)
        send_load(outside.port, 10, 2)
        got = kc.finish()
    assert {r.header("traceparent") for r in got} == {s.traceparent for s in sent}
    assert {r.tgid for r in got} == {inside.pid}


def test_print_bpf_shows_the_program_and_its_flags():
    from agent.kernel import bpf_source

    text = bpf_source(KernelCollector(capture_bytes=512).config)  # what the collector compiles
    assert "-DCAPTURE_BYTES=512" in text
    for part in ("struct http_event {", "scan_header_end(", "int obsc_ex_io("):
        assert part in text
    json.dumps(text)  # plain text the CLI can print


def test_an_unprivileged_user_gets_a_one_line_error_that_says_what_to_do(kernel_ok):
    script = ("from agent.kernel import KernelCollector\n"
              "from agent.errors import ProbeError\n"
              "try:\n    KernelCollector().start()\n"
              "except ProbeError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", script], user="nobody", cwd=REPO, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1
    assert "need root" in r.stdout and "--no-ebpf" in r.stdout


def hide_tracepoints(monkeypatch, *hidden: str) -> None:
    """Make feature detection report these syscalls' tracepoints as absent."""
    from bcc import BPF

    real = BPF.tracepoint_exists
    monkeypatch.setattr(BPF, "tracepoint_exists", staticmethod(
        lambda cat, ev: not any(ev.endswith(f"_{h}") for h in hidden) and real(cat, ev)))


def test_a_missing_optional_tracepoint_is_compiled_out_and_reported(kernel_ok, monkeypatch):
    hide_tracepoints(monkeypatch, "sendmsg")
    tp = str(new_traceparent())
    with KernelCollector(poll_ms=10) as kc:
        assert "syscalls:sys_*_sendmsg" in kc.stats()["missing_tracepoints"]
        assert "syscalls:sys_enter_sendmsg" not in {tp for _, tp in kc.attached}
        assert "syscalls:sys_enter_recvmsg" in {tp for _, tp in kc.attached}
        proc = subprocess.Popen([sys.executable, str(REPO / "tests/kernel/io_exchange.py"), "msg", tp],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        kc.add_target(proc.pid)
        proc.communicate("go\n", timeout=20)
        got = kc.finish()
    # recvmsg is still traced: the server side sees the request; sendmsg is not, so the
    # client side (request written by sendmsg) is a blind spot
    assert [(r.direction, r.target) for r in got] == [("server", "/io/msg")]
    assert got[0].status is None, "the response went out by sendmsg: not seen"


def test_a_missing_required_tracepoint_is_a_probe_error(kernel_ok, monkeypatch):
    hide_tracepoints(monkeypatch, "read")
    with pytest.raises(ProbeError, match="no syscalls:sys_enter/exit_read tracepoints.*--no-ebpf"):
        KernelCollector().start()
