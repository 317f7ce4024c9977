"""One run at a time, FIFO: concurrent submissions all finish, one after the other; timeouts and failures."""

from __future__ import annotations

import subprocess
import threading
import time

from tests.daemon.conftest import slow_spec


def test_two_runs_submitted_at_once_both_finish_one_after_the_other(daemons, target):
    d = daemons.start()
    ids: list[str] = []
    barrier = threading.Barrier(2)

    def submit(spec):
        barrier.wait()
        ids.append(d.submit(spec))

    threads = [threading.Thread(target=submit, args=(slow_spec(target, seconds=1.5, label=f"r{i}"),))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runs = [d.wait(i, timeout_s=120) for i in ids]
    assert [r["state"] for r in runs] == ["done", "done"], runs
    first, second = sorted(runs, key=lambda r: r["started_at"])
    assert second["started_at"] >= first["finished_at"], "the second run started only after the first ended"
    assert first["created_at"] <= second["created_at"], "FIFO: the first submitted ran first"
    reports = [d.api("GET", f"/v1/runs/{r['id']}/report")[1] for r in runs]
    assert len({r["report_id"] for r in reports}) == 2


def test_queue_position_counts_down(daemons, target):
    d = daemons.start()
    running = d.submit(slow_spec(target, seconds=30))
    d.wait(running, states=("running",))
    queued = [d.submit(target.spec()) for _ in range(2)]
    assert [d.api("GET", f"/v1/runs/{q}")[1]["position"] for q in queued] == [1, 2]
    d.api("DELETE", f"/v1/runs/{running}")
    assert d.wait(queued[1])["state"] == "done"
    assert d.api("GET", f"/v1/runs/{queued[0]}")[1]["state"] == "done"


def test_a_run_past_its_timeout_is_aborted_and_the_queue_goes_on(daemons, target):
    d = daemons.start()
    slow = d.submit(slow_spec(target, seconds=60, timeout_s=2))
    after = d.submit(target.spec())
    run = d.wait(slow, timeout_s=60)
    assert run["state"] == "aborted" and run["reason"] == "timed out after 2 s", run
    assert d.wait(after)["state"] == "done"


def test_a_failing_run_says_why_and_the_queue_goes_on(daemons, target):
    d = daemons.start()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that existed and is now free: the run's target is gone
    bad = d.submit(target.spec(pid=gone.pid))
    good = d.submit(target.spec())
    run = d.wait(bad)
    assert run["state"] == "failed" and run["exit_code"] == 1
    assert "no such process" in run["reason"], run["reason"]
    assert d.wait(good)["state"] == "done"


def test_a_full_queue_refuses_with_429(tmp_path, target):
    from agent.daemon import Daemon, DaemonConfig
    from agent.remote import AgentClient

    token_file = tmp_path / "token"
    token_file.write_text("q" * 32)
    token_file.chmod(0o600)
    daemon = Daemon(DaemonConfig(listen="127.0.0.1:0", reports_dir=tmp_path / "r", token_file=token_file,
                                 max_queued=2))
    daemon.start()
    try:
        client = AgentClient(daemon.url, "q" * 32)
        running = client.call("POST", "/v1/runs", slow_spec(target, seconds=30), expect=(202,))["id"]
        deadline = time.monotonic() + 30
        while client.call("GET", f"/v1/runs/{running}")["state"] != "running":
            assert time.monotonic() < deadline, "the first run never started"
            time.sleep(0.05)
        codes = [client.request("POST", "/v1/runs", target.spec())[0] for _ in range(3)]
        assert codes == [202, 202, 429]
        status, body = client.request("POST", "/v1/runs", target.spec())
        assert status == 429 and "already queued; try again later" in body["error"]
        client.call("DELETE", f"/v1/runs/{running}", expect=(202,))
    finally:
        daemon.stop()
