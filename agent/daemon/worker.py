"""The run queue: one run at a time, FIFO, each in a child process inside its own cgroup."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.daemon.containment import RunBox, kill_leftovers, kill_stale_child, remove_cgroup, runs_base
from agent.daemon.metrics import DaemonMetrics
from agent.daemon.store import RunRow, RunStore
from agent.evidence import write_json_atomic

log = logging.getLogger(__name__)

# What the daemon tells a run's process (agent/daemon/child.py) through its environment.
ENV_SPEC = "OBSCONFORM_CHILD_SPEC"  # path of the run spec JSON
ENV_OUT = "OBSCONFORM_CHILD_OUT"  # the run's directory
ENV_FD = "OBSCONFORM_CHILD_FD"  # where to write JSON lines
ENV_PARENT = "OBSCONFORM_CHILD_PARENT"  # the daemon's pid, to detect a parent that died first
ENV_CGROUP = "OBSCONFORM_CHILD_CGROUP"  # cgroup.procs file to join, or ""
SPEC_FILE = "run-spec.json"
CHILD_LOG = "run.log"
CRASH_REASON = ("the daemon stopped while this run was running (crash, SIGKILL or reboot); "
                "its probes died with it; the evidence recorded so far is kept")
_POLL_S = 0.2


@dataclass
class _Outcome:
    result: dict | None = None
    error: str = ""
    why_stopped: str = ""  # set when the daemon stopped the run (cancel, timeout, shutdown)
    stopped_state: str = ""
    bad_lines: int = 0
    progress: list[str] = field(default_factory=list)


class RunWorker:
    """Takes queued runs from the store and executes them one after the other."""

    def __init__(self, store: RunStore, metrics: DaemonMetrics, *, reports_dir: Path, run_timeout_s: float,
                 cancel_grace_s: float) -> None:
        self.store = store
        self.metrics = metrics
        self.run_timeout_s = run_timeout_s
        self.cancel_grace_s = cancel_grace_s
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._stop_reason = "the daemon is stopping"
        self._current: str | None = None
        self._thread = threading.Thread(target=self._loop, name="run-worker", daemon=True)
        self._cgroups = runs_base(reports_dir)
        if self._cgroups is None:
            log.warning("cgroup v2 not writable: runs are contained by process group only")

    def recover(self) -> list[RunRow]:
        """Clean up after a previous daemon that died mid-run: kill leftovers, mark runs aborted."""
        left = kill_leftovers(self._cgroups)
        if left:
            log.warning("killed processes a previous daemon left behind: %s", ", ".join(left))
        stale = self.store.recover(CRASH_REASON)
        for run in stale:
            kill_stale_child(run.child_pid)
            log.warning("run %s was running when the daemon stopped: marked aborted", run.id)
        return stale

    def start(self) -> None:
        self._thread.start()

    @property
    def current(self) -> str | None:
        return self._current

    def notify(self) -> None:
        """A run was queued or cancelled: wake the worker."""
        with self._wake:
            self._wake.notify_all()

    def stop(self, reason: str, timeout_s: float | None = None) -> bool:
        """Stop the running run (marked aborted with ``reason``); queued runs stay queued.
        Returns False if the worker did not finish within the timeout."""
        self._stop_reason = reason
        self._stopping.set()
        self.notify()
        self._thread.join(timeout_s if timeout_s is not None else self.cancel_grace_s + 10)
        if self._thread.is_alive():
            return False
        if self._cgroups is not None:
            remove_cgroup(self._cgroups)  # empty now; the next daemon makes it again
        return True

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                run = self.store.next_queued()
                if run is None:
                    with self._wake:
                        self._wake.wait(timeout=1.0)
                    continue
                self._execute(run)
            except Exception:  # one broken run must not stop the queue
                log.exception("run worker: unexpected error; going on with the queue")
                self.metrics.worker_errors.inc()
                self._stopping.wait(1.0)

    def _spawn(self, run: RunRow, box: RunBox) -> tuple[subprocess.Popen, int]:
        out_dir = Path(run.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / SPEC_FILE, run.spec)
        read_fd, write_fd = os.pipe()
        env = {**os.environ,
               ENV_SPEC: str(out_dir / SPEC_FILE), ENV_OUT: str(out_dir),
               ENV_FD: str(write_fd), ENV_PARENT: str(os.getpid()), ENV_CGROUP: box.procs_file}
        with open(out_dir / CHILD_LOG, "ab") as logf:
            try:
                proc = subprocess.Popen([sys.executable, "-m", "agent.daemon.child"], env=env,
                                        stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                        pass_fds=(write_fd,), start_new_session=True)
            except OSError:
                os.close(read_fd)
                raise
            finally:
                os.close(write_fd)
        box.pgid = proc.pid
        return proc, read_fd

    def _execute(self, run: RunRow) -> None:
        box = RunBox(self._cgroups, run.id)
        try:
            proc, read_fd = self._spawn(run, box)
        except OSError as e:  # a run that cannot start must leave the queue, not block it
            box.remove()
            reason = f"cannot start the run's process: {e}"
            self.store.finish(run.id, "failed", reason=reason, exit_code=1, message=f"failed: {reason}")
            self.metrics.run_finished("failed", 0.0, None)
            return
        self._current = run.id
        self.store.start(run.id, proc.pid)
        self.store.add_progress(run.id, "started")
        self.metrics.run_started()
        t0 = time.monotonic()
        timeout_s = float(run.spec.get("timeout_s", self.run_timeout_s))
        outcome = _Outcome()
        try:
            self._watch(run, proc, read_fd, t0 + timeout_s, timeout_s, outcome)
        except Exception as e:  # a daemon bug must still end the run, recorded as failed
            log.exception("run %s: error while watching the run; killing it", run.id)
            outcome.error = outcome.error or f"the daemon lost track of the run ({type(e).__name__}: {e})"
            proc.kill()
            proc.wait()
        finally:
            os.close(read_fd)
            box.kill()  # whatever the run left (a SUT in its own session) dies with it
            box.remove()
            self._current = None
        self._record(run, proc.returncode, outcome, time.monotonic() - t0)

    def _watch(self, run: RunRow, proc: subprocess.Popen, read_fd: int, deadline: float, timeout_s: float,
               outcome: _Outcome) -> None:
        buf = b""
        term_sent_at: float | None = None
        eof = False
        while True:
            if not eof:
                ready, _, _ = select.select([read_fd], [], [], _POLL_S)
                if ready:
                    chunk = os.read(read_fd, 65536)
                    eof = not chunk
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        self._event(run, line, outcome)
            else:
                try:
                    proc.wait(_POLL_S)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is not None and eof:
                return
            if term_sent_at is None:
                why = self._why_stop(run, deadline, timeout_s)
                if why:
                    outcome.stopped_state, outcome.why_stopped = why
                    self.store.add_progress(run.id, f"stopping: {outcome.why_stopped}")
                    term_sent_at = time.monotonic()
                    try:
                        proc.send_signal(signal.SIGTERM)  # the run unwinds: probes detach, SUT stops
                    except ProcessLookupError:
                        pass
            elif time.monotonic() - term_sent_at > self.cancel_grace_s and proc.poll() is None:
                log.warning("run %s did not stop %.0f s after SIGTERM; killing it", run.id, self.cancel_grace_s)
                proc.kill()
                term_sent_at = float("inf")

    def _why_stop(self, run: RunRow, deadline: float, timeout_s: float) -> tuple[str, str] | None:
        if self._stopping.is_set():
            return "aborted", self._stop_reason
        if time.monotonic() > deadline:
            return "aborted", f"timed out after {timeout_s:g} s"
        row = self.store.get(run.id, since=1 << 30)
        if row is not None and row.cancel_requested:
            return "cancelled", "cancelled by request"
        return None

    def _event(self, run: RunRow, line: bytes, outcome: _Outcome) -> None:
        try:
            record = json.loads(line)
            if "progress" in record:
                self.store.add_progress(run.id, str(record["progress"]))
            elif "result" in record:
                outcome.result = dict(record["result"])
                self.store.set_run_dir(run.id, str(outcome.result.get("run_dir", "")))
            elif "error" in record:
                outcome.error = str(record["error"])
                self.store.add_progress(run.id, f"run process: {outcome.error}")
        except (ValueError, TypeError, AttributeError):
            if not outcome.bad_lines:
                log.warning("run %s: unreadable line from its process: %r", run.id, line[:200])
            outcome.bad_lines += 1
            self.metrics.bad_child_lines.inc()

    def _record(self, run: RunRow, returncode: int | None, outcome: _Outcome, duration_s: float) -> None:
        if outcome.result is not None:  # finished with a report, even if a stop came too late
            state, reason = "done", None
            exit_code, verdict = outcome.result.get("exit_code"), outcome.result.get("verdict")
        elif outcome.stopped_state:
            state, reason = outcome.stopped_state, outcome.why_stopped
            exit_code = verdict = None
        else:
            state, exit_code, verdict = "failed", 1, None
            reason = outcome.error or f"the run's process ended with code {returncode} without a result; see {CHILD_LOG}"
        self.store.finish(run.id, state, reason=reason, exit_code=exit_code, verdict=verdict,
                          run_dir=(outcome.result or {}).get("run_dir"),
                          message=f"{state}" + (f": {reason}" if reason else f" ({verdict})"))
        self.metrics.run_finished(state, duration_s, (outcome.result or {}).get("report_path"))
        log.info("run %s %s%s", run.id, state, f": {reason}" if reason else "")
