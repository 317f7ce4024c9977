"""Runs survive a daemon restart; a run cut short by SIGTERM or a crash is aborted, never lost, and
leaves no probe and no process behind."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from agent.daemon.containment import run_cgroup
from agent.daemon.worker import CRASH_REASON
from tests.daemon.conftest import slow_spec
from tests.e2e.conftest import free_port

TINY = Path(__file__).with_name("tiny_server.py")


def test_runs_and_reports_survive_a_restart(daemons, target):
    d1 = daemons.start()
    run_id = d1.submit(target.spec())
    assert d1.wait(run_id)["state"] == "done"
    report = d1.api("GET", f"/v1/runs/{run_id}/report")[1]
    assert d1.stop() == 0

    d2 = daemons.start(reports_dir=d1.reports_dir)
    run = d2.api("GET", f"/v1/runs/{run_id}")[1]
    assert (run["state"], run["verdict"]) == ("done", "inconclusive")
    assert d2.api("GET", f"/v1/runs/{run_id}/report")[1]["report_id"] == report["report_id"]
    assert d2.client().request("GET", f"/v1/runs/{run_id}/evidence", stream_to=d2.reports_dir / "e.tgz")[0] == 200


def test_sigterm_mid_run_aborts_it_and_queued_runs_run_after_restart(daemons, target):
    d1 = daemons.start()
    cut = d1.submit(slow_spec(target, seconds=60))
    d1.wait(cut, states=("running",), progress="sending")
    waiting = d1.submit(target.spec())
    assert d1.stop(signal.SIGTERM) == 0
    assert not run_cgroup(d1.reports_dir, cut).exists(), "no process of the run is left"

    d2 = daemons.start(reports_dir=d1.reports_dir)
    run = d2.api("GET", f"/v1/runs/{cut}")[1]
    assert run["state"] == "aborted"
    assert run["reason"] == "the daemon received SIGTERM during the run"
    assert d2.wait(waiting)["state"] == "done", "a queued run survives the restart and runs"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.kernel
def test_sigkill_mid_run_leaves_no_probe_and_the_run_shows_aborted(daemons):
    from agent.kernel import attached_program_ids

    d1 = daemons.start("--allow-exec")
    port = free_port()
    spec = {"url": f"http://127.0.0.1:{port}", "exec": f"{sys.executable} {TINY} 127.0.0.1 {port}",
            "paths": ["/slow?ms=50"], "requests": 1200, "concurrency": 1}
    run_id = d1.submit(spec)
    d1.wait(run_id, states=("running",), progress="sending", timeout_s=120)
    cgroup = run_cgroup(d1.reports_dir, run_id)
    procs = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    held = set().union(*(attached_program_ids(p) for p in procs))
    assert held, "the run's process holds its eBPF programs"
    assert len(procs) >= 2, "the run's process and the SUT it launched share the run's cgroup"

    os.kill(d1.proc.pid, signal.SIGKILL)
    d1.proc.wait(10)
    # The parent-death signal kills the run's process; the kernel drops its programs with it.
    wait_until(lambda: not (held & attached_program_ids()), 15, "the programs to detach")

    d2 = daemons.start(reports_dir=d1.reports_dir)
    run = d2.api("GET", f"/v1/runs/{run_id}")[1]
    assert run["state"] == "aborted" and run["reason"] == CRASH_REASON
    assert run["progress"][-1]["message"] == f"aborted: {CRASH_REASON}"
    assert not (held & attached_program_ids()), "no program of the killed run is still loaded"
    assert not any(alive(p) for p in procs), "the new daemon killed what the old run left (the SUT)"
    assert not cgroup.exists()


def held_programs(reports_dir, run_id: str) -> tuple[set[int], list[int]]:
    """eBPF program ids held by the processes of a run (from its cgroup), and those pids."""
    from agent.kernel import attached_program_ids

    procs = [int(p) for p in (run_cgroup(reports_dir, run_id) / "cgroup.procs").read_text().split()]
    return set().union(*(attached_program_ids(p) for p in procs)), procs


@pytest.mark.kernel
@pytest.mark.parametrize("how, state, reason", [
    ("cancel", "cancelled", "cancelled by request"),
    ("timeout", "aborted", "timed out after 6 s"),
    ("sigterm", "aborted", "the daemon received SIGTERM during the run"),
])
def test_probes_are_detached_when_a_run_is_stopped(daemons, target, how, state, reason):
    from agent.kernel import attached_program_ids

    d = daemons.start()
    spec = slow_spec(target, seconds=60, no_ebpf=False, **({"timeout_s": 6} if how == "timeout" else {}))
    run_id = d.submit(spec)
    d.wait(run_id, states=("running",), progress="sending", timeout_s=60)
    held, procs = held_programs(d.reports_dir, run_id)
    assert held, "the run's probes are attached while it runs"
    if how == "cancel":
        d.api("POST", f"/v1/runs/{run_id}/cancel")
    elif how == "sigterm":
        assert d.stop(signal.SIGTERM) == 0
        d = daemons.start(reports_dir=d.reports_dir)
    run = d.wait(run_id, timeout_s=60)
    assert (run["state"], run["reason"]) == (state, reason)
    assert not (held & attached_program_ids()), "every program of the run is unloaded"
    assert not any(alive(p) for p in procs)
    messages = [p["message"] for p in run["progress"]]
    assert "run process: cancelled; probes detached, evidence recorded so far kept" in messages, \
        "the run unwound through its cleanup (SIGTERM), it was not killed"
