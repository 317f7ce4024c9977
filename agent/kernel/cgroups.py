"""cgroup v2 helpers: a directory's cgroup id and depth (for the in-kernel filter), its processes."""

from __future__ import annotations

import os
from pathlib import Path

from agent.errors import ProbeError


def _cgroup2_mounts() -> list[Path]:
    try:
        with open("/proc/self/mounts") as f:
            return [Path(line.split()[1]) for line in f if line.split()[2:3] == ["cgroup2"]]
    except OSError:
        return []


def cgroup_id_level(path: str) -> tuple[int, int]:
    """cgroup v2 id (the directory's inode) and its depth below the cgroup2 mount."""
    p = Path(path).resolve()
    for root in _cgroup2_mounts():
        try:
            rel = p.relative_to(root)
        except ValueError:
            continue
        if not (p / "cgroup.procs").is_file():
            break
        return p.stat().st_ino, len(rel.parts)
    raise ProbeError(f"{path} is not a cgroup v2 directory; pass a directory under a cgroup2 "
                     "mount (e.g. /sys/fs/cgroup/system.slice/my.service)")


def cgroup_pids(path: str) -> list[int]:
    """Processes in cgroup v2 directory ``path`` and its sub-cgroups."""
    out = []
    for root, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(root, "cgroup.procs")) as f:
                    out += [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
    return out
