"""Finding the target (--pid, --port through sock_diag, --cgroup) and whole runs against it:
traffic to a second, untargeted server on the same host is never recorded."""

from __future__ import annotations

import http.client
import threading

import pytest

from agent.errors import TargetError
from agent.evidence import load_evidence
from agent.runner import RunConfig, run
from agent.targets import resolve, resolve_port, tree_roots
from tests.kernel.test_lifecycle import cgroup_dir  # noqa: F401  (fixture)
from tests.kernel.test_servers import children, gunicorn  # noqa: F401  (fixture)
from tests.ports import free_port

pytestmark = pytest.mark.kernel


def test_a_port_resolves_to_the_root_of_the_tree_that_listens(kernel_ok, gunicorn):  # noqa: F811
    master, port = gunicorn
    target = resolve_port(port)
    workers = children(master.pid)
    assert target.roots == [master.pid], "the workers hold the socket too, but the master is the root"
    assert set(target.describe["socket_holders"]) == {master.pid} | workers
    assert (target.kind, target.describe["port"], target.describe["listen"]) == ("port", port, ["127.0.0.1"])
    assert tree_roots(sorted(workers)) == sorted(workers), "siblings are each their own root"


@pytest.mark.parametrize("kwargs,fragment", [
    (lambda: {"port": free_port()}, "nothing listens on TCP port"),
    (lambda: {"port": 70000}, "a TCP port is 1..65535"),
    (lambda: {"pid": 999_999_999}, "no such process"),
    (lambda: {"cgroup": "/tmp"}, "is not a cgroup v2 directory"),
    (lambda: {}, "give a target"),
], ids=["port-nobody-listens", "port-out-of-range", "pid-gone", "cgroup-not-cgroup2", "none"])
def test_a_target_that_cannot_be_found_says_what_to_do(kwargs, fragment):
    with pytest.raises(TargetError, match=fragment):
        resolve(**kwargs())


class Background:
    """Keeps sending requests to ``port`` until stopped (the untargeted neighbour's traffic)."""

    def __init__(self, port: int) -> None:
        self.port, self.sent = port, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            conn.request("GET", "/neighbour")
            conn.getresponse().read()
            self.sent += 1
        conn.close()

    def __enter__(self) -> "Background":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.mark.parametrize("kind", ["pid", "port", "cgroup"])
def test_a_run_records_its_target_and_never_the_neighbour(kernel_ok, start_server, cgroup_dir, tmp_path,  # noqa: F811
                                                           kind):
    sut, neighbour = start_server(), start_server()
    target = {"pid": {"pid": sut.pid}, "port": {"port": sut.port}, "cgroup": {"cgroup": str(cgroup_dir)}}[kind]
    if kind == "cgroup":
        (cgroup_dir / "cgroup.procs").write_text(str(sut.pid))
    cfg = RunConfig(url=f"http://127.0.0.1:{sut.port}", requests=60, concurrency=4, out_dir=tmp_path,
                    settle_quiet_s=0.2, settle_timeout_s=2, checks=["KT-007"],
                    otlp_listen=f"127.0.0.1:{free_port()}", **target)  # not 4318: it may be taken
    with Background(neighbour.port) as bg:
        result = run(cfg)
    assert bg.sent > 0, "the neighbour was busy during the run"
    ev = load_evidence(result.run_dir)
    server = [k for k in ev.kernel if k.direction == "server"]
    assert {k.tgid for k in ev.kernel} == {sut.pid}, "only the target's requests are recorded"
    assert len(server) == ev.meta.requests_sent and "/neighbour" not in {k.target for k in server}
    assert ev.meta.target["found_by"] == kind and ev.meta.kernel_stats["loss"] == 0
    assert result.report["measurements"]["kernel"]["requests"] == ev.meta.requests_sent
    assert result.report["target"][kind] == (str(cgroup_dir.resolve()) if kind == "cgroup" else target[kind])
