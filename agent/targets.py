"""Finding the service under test: --pid, --port (listening socket via sock_diag) or --cgroup.

Each resolves to a ``Target``: the processes whose trees the probes follow (``roots``) or a
cgroup v2 directory the kernel filters on, and what the report says about how it was found.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import TargetError

_TCP_LISTEN = 10  # TCP_LISTEN in the kernel's tcp_states.h (sock_diag state numbers)


@dataclass
class Target:
    """How the SUT was found: processes to trace with their descendants, or a cgroup."""

    kind: str  # "pid" | "port" | "cgroup"
    roots: list[int] = field(default_factory=list)
    cgroup: str | None = None
    describe: dict[str, Any] = field(default_factory=dict)  # merged into RunMeta.target


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").is_dir()


def resolve_pid(pid: int) -> Target:
    """--pid: the process and its descendants (those forked later too)."""
    if pid < 1 or not _alive(pid):
        raise TargetError(f"--pid {pid}: no such process; give the pid of the running SUT")
    return Target("pid", [pid], describe={"pid": pid, "found_by": "pid"})


def listening_inodes(port: int) -> dict[int, str]:
    """Socket inodes of TCP listeners on ``port`` (IPv4 and IPv6), with their address."""
    from pyroute2 import DiagSocket

    out: dict[int, str] = {}
    try:
        with DiagSocket() as ds:
            ds.bind()
            for family in (socket.AF_INET, socket.AF_INET6):
                for msg in ds.get_sock_stats(family=family, states=1 << _TCP_LISTEN):
                    if msg["idiag_sport"] == port and msg["idiag_inode"]:
                        out[msg["idiag_inode"]] = str(msg.get("idiag_src", ""))
    except OSError as e:
        raise TargetError(f"--port {port}: cannot list listening sockets through sock_diag "
                          f"({e.strerror or e}); run as root, or give --pid") from e
    return out


def socket_holders(inodes: set[int]) -> list[int]:
    """Processes holding a file descriptor of one of these socket inodes (from /proc/*/fd)."""
    wanted = {f"socket:[{i}]" for i in inodes}
    holders = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(f"/proc/{entry.name}/fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    if os.readlink(fd.path) in wanted:
                        holders.append(int(entry.name))
                        break
                except OSError:
                    continue
    return sorted(holders)


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def tree_roots(pids: list[int]) -> list[int]:
    """The pids none of whose ancestors is in ``pids`` (a gunicorn master, not its workers)."""
    given = set(pids)
    roots = []
    for pid in pids:
        p, seen = _ppid(pid), set()
        while p > 1 and p not in given and p not in seen:
            seen.add(p)
            p = _ppid(p)
        if p not in given:
            roots.append(pid)
    return roots


def resolve_port(port: int) -> Target:
    """--port: the process tree that listens on this TCP port (every listener's tree)."""
    if not 1 <= port <= 65535:
        raise TargetError(f"--port {port}: a TCP port is 1..65535")
    inodes = listening_inodes(port)
    if not inodes:
        raise TargetError(f"--port {port}: nothing listens on TCP port {port}; start the SUT first, "
                          "or check the port")
    holders = socket_holders(set(inodes))
    if not holders:
        raise TargetError(f"--port {port}: the listening socket belongs to no process visible here "
                          "(another PID namespace?); give --pid or --cgroup")
    roots = tree_roots(holders)
    return Target("port", roots, describe={
        "port": port, "found_by": "port", "pid": roots[0], "pids": roots,
        "listen": sorted(set(inodes.values())), "socket_holders": holders})


def resolve_cgroup(path: str) -> Target:
    """--cgroup: every process of this cgroup v2 directory (and its sub-cgroups), filtered in
    the kernel by cgroup id, including processes that join it later."""
    from agent.errors import ProbeError
    from agent.kernel.cgroups import cgroup_id_level, cgroup_pids

    try:
        cg_id, level = cgroup_id_level(path)
    except ProbeError as e:
        raise TargetError(f"--cgroup {path}: {e}") from e
    pids = cgroup_pids(path)
    return Target("cgroup", [], cgroup=str(Path(path).resolve()), describe={
        "cgroup": str(Path(path).resolve()), "cgroup_id": cg_id, "cgroup_level": level,
        "found_by": "cgroup", "pids": pids})


def resolve(pid: int | None = None, port: int | None = None, cgroup: str | None = None) -> Target:
    """The one target given (TargetError when it cannot be found)."""
    if pid is not None:
        return resolve_pid(pid)
    if port is not None:
        return resolve_port(port)
    if cgroup is not None:
        return resolve_cgroup(cgroup)
    raise TargetError("give a target: --pid PID, --port PORT or --cgroup PATH")
