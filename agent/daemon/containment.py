"""Keep every process of a run in one box the daemon can kill whole: cgroup v2 plus a parent-death signal.

A run executes in a child process. Its eBPF programs belong to that process, so they are
detached by the kernel whenever it dies, however it dies. What can outlive it is the SUT it
launched (``--exec`` starts it in a session of its own); a cgroup per run catches that
process tree too, and ``cgroup.kill`` ends it in one write. Without a writable cgroup v2
the daemon falls back to killing the child's process group and says so once.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

RUNS_CGROUP = "obsconform-runs"
_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent thread dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _cgroup2_mount() -> Path | None:
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


def _own_cgroup2_path() -> str:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:].strip() or "/"
    except OSError:
        pass
    return "/"


def _base_path(reports_dir: Path) -> Path | None:
    mount = _cgroup2_mount()
    if mount is None:
        return None
    key = hashlib.sha256(str(Path(reports_dir).resolve()).encode()).hexdigest()[:16]
    return mount / _own_cgroup2_path().lstrip("/") / RUNS_CGROUP / key


def runs_base(reports_dir: Path) -> Path | None:
    """``<cgroup2 mount>/<own cgroup>/obsconform-runs/<reports-dir key>``, made if needed; None without cgroup v2.

    Keyed by the reports directory (which one daemon holds locked), so a daemon cleaning up
    after a crash kills only its own leftovers, never another daemon's running run.
    """
    base = _base_path(reports_dir)
    if base is None:
        return None
    try:
        base.mkdir(parents=True, exist_ok=True)
        if not (base / "cgroup.procs").exists():
            return None
    except OSError as e:
        log.warning("no cgroup for runs (%s): a killed run may leave its SUT running", e)
        return None
    return base


def run_cgroup(reports_dir: Path, run_id: str) -> Path | None:
    """Where the processes of run ``run_id`` of the daemon on ``reports_dir`` live (None without cgroups)."""
    base = _base_path(reports_dir)
    return base / f"run-{run_id}" if base is not None else None


class RunBox:
    """The cgroup of one run (or, without cgroups, its child's process group)."""

    def __init__(self, base: Path | None, run_id: str) -> None:
        self.path: Path | None = None
        if base is not None:
            path = base / f"run-{run_id}"
            try:
                path.mkdir(exist_ok=True)
                self.path = path
            except OSError as e:
                log.warning("cannot create cgroup %s (%s); falling back to process groups", path, e)
        self.pgid: int | None = None

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs") if self.path else ""

    def kill(self) -> None:
        """SIGKILL every process of the run."""
        if self.path is not None:
            kill_cgroup(self.path)
        if self.pgid is not None:
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def remove(self) -> None:
        if self.path is not None:
            remove_cgroup(self.path)


def join_cgroup(procs_file: str) -> None:
    """Move the calling process into a run's cgroup (done by the child before it does anything)."""
    if procs_file:
        with open(procs_file, "w") as f:
            f.write(str(os.getpid()))


def kill_cgroup(path: Path, timeout_s: float = 5.0) -> bool:
    """Kill all processes in ``path`` and wait until it is empty; True when it emptied."""
    try:
        (path / "cgroup.kill").write_text("1")
    except FileNotFoundError:
        return True
    except OSError:  # kernels before 5.14 have no cgroup.kill: signal each process
        for pid in _procs(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout_s
    while _procs(path):
        if time.monotonic() > deadline:
            log.warning("processes still in %s %.0f s after SIGKILL", path, timeout_s)
            return False
        time.sleep(0.02)  # the kernel reaps asynchronously; nothing to wait on
    return True


def _procs(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def remove_cgroup(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot remove cgroup %s: %s", path, e)


def kill_leftovers(base: Path | None) -> list[str]:
    """Kill and remove run cgroups a previous daemon left behind (it crashed); returns their names."""
    if base is None:
        return []
    left = []
    for path in sorted(base.glob("run-*")):
        if path.is_dir():
            left.append(path.name)
            kill_cgroup(path)
            remove_cgroup(path)
    return left


def kill_stale_child(pid: int | None) -> None:
    """Without cgroups: kill a previous daemon's run child if it is still alive and really ours."""
    if not pid:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"agent.daemon.child" in cmdline:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
