"""`obsconform doctor`: can this host run the agent, and what to fix when it cannot."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
# The syscall tracepoints the probes need; a missing one is reported by name.
REQUIRED_SYSCALLS = ("accept4", "read", "recvfrom", "write", "sendto", "close", "connect")
OPTIONAL_SYSCALLS = ("accept", "readv", "recvmsg", "writev", "sendmsg", "sendfile64")

_SYS_BPF = 321  # x86_64
_BPF_MAP_CREATE = 0
_BPF_MAP_TYPE_HASH = 1
_BPF_MAP_TYPE_RINGBUF = 27
# Capability bits (linux/capability.h).
_CAP_SYS_ADMIN, _CAP_SYS_RESOURCE, _CAP_PERFMON, _CAP_BPF = 21, 24, 38, 39


@dataclass
class Item:
    name: str
    status: str  # ok | fail | warn
    detail: str
    fix: str = ""


def tracefs() -> Path | None:
    for d in TRACEFS_DIRS:
        if (d / "events").is_dir():
            return d
    return None


def _effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _bpf_map_create(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    """Create and close a BPF map with the raw syscall; returns 0 or the errno."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    attr = ctypes.create_string_buffer(struct.pack("IIII", map_type, key_size, value_size, max_entries), 128)
    fd = libc.syscall(_SYS_BPF, _BPF_MAP_CREATE, attr, 128)
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


def check_privileges() -> Item:
    if os.geteuid() == 0:
        return Item("privileges", "ok", "running as root")
    caps = _effective_caps()
    need = {"CAP_BPF": _CAP_BPF, "CAP_PERFMON": _CAP_PERFMON, "CAP_SYS_RESOURCE": _CAP_SYS_RESOURCE}
    missing = [n for n, bit in need.items() if not caps >> bit & 1]
    if not missing:
        return Item("privileges", "ok", "CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE")
    return Item("privileges", "fail", f"not root; missing {', '.join(missing)}",
                "run as root (sudo obsconform ...) or grant the capabilities; or use --no-ebpf")


def check_bpf_syscall() -> Item:
    err = _bpf_map_create(_BPF_MAP_TYPE_HASH, 4, 4, 1)
    if err == 0:
        return Item("bpf() syscall", "ok", "map create works")
    return Item("bpf() syscall", "fail", os.strerror(err),
                "needs root/CAP_BPF and kernel.unprivileged_bpf_disabled or a seccomp profile allowing bpf()")


def check_ringbuf() -> Item:
    err = _bpf_map_create(_BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)
    if err == 0:
        return Item("ring buffer", "ok", "BPF_MAP_TYPE_RINGBUF available")
    return Item("ring buffer", "fail", os.strerror(err), "needs Linux >= 5.8 with BPF ring buffers")


def check_btf() -> Item:
    if Path("/sys/kernel/btf/vmlinux").exists():
        return Item("BTF", "ok", "/sys/kernel/btf/vmlinux")
    return Item("BTF", "warn", "no /sys/kernel/btf/vmlinux", "not needed by the probes; CONFIG_DEBUG_INFO_BTF=y helps other tools")


def check_tracefs() -> Item:
    d = tracefs()
    if d:
        return Item("tracefs", "ok", str(d))
    return Item("tracefs", "fail", "not mounted", "mount -t tracefs tracefs /sys/kernel/tracing (make setup does it)")


def check_tracepoints() -> Item:
    d = tracefs()
    if d is None:
        return Item("syscall tracepoints", "fail", "tracefs not mounted", "mount tracefs first")
    events = d / "events" / "syscalls"

    def missing(names: tuple[str, ...]) -> list[str]:
        return [n for n in names if not (events / f"sys_enter_{n}").is_dir() or not (events / f"sys_exit_{n}").is_dir()]

    req, opt = missing(REQUIRED_SYSCALLS), missing(OPTIONAL_SYSCALLS)
    sched = [e for e in ("sched_process_fork", "sched_process_exit") if not (d / "events" / "sched" / e).is_dir()]
    if req or sched:
        return Item("syscall tracepoints", "fail", "missing: " + ", ".join(req + sched),
                    "the kernel needs CONFIG_FTRACE_SYSCALLS=y and sched tracepoints")
    if opt:
        return Item("syscall tracepoints", "warn", "optional ones missing: " + ", ".join(opt),
                    "requests on those syscall paths are not seen")
    return Item("syscall tracepoints", "ok", f"{len(REQUIRED_SYSCALLS) + len(OPTIONAL_SYSCALLS)} syscalls + sched fork/exit")


def check_headers() -> Item:
    build = Path(f"/lib/modules/{platform.release()}/build")
    if (build / "include").is_dir():
        return Item("kernel headers", "ok", f"{build} -> {build.resolve()}")
    return Item("kernel headers", "fail", f"{build} missing",
                "make setup (installs linux-headers-amd64 and links them for this kernel)")


def check_bcc() -> Item:
    try:
        import bcc
    except ImportError as e:
        return Item("bcc", "fail", f"cannot import bcc ({e})",
                    "apt-get install python3-bpfcc and use a venv made with --system-site-packages (make setup)")
    return Item("bcc", "ok", f"bcc {getattr(bcc, '__version__', '?')}")


_PROBE_C = """
BPF_ARRAY(hits, u64, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET_TGID) return 0;
    int k = 0; u64 *v = hits.lookup(&k); if (v) __sync_fetch_and_add(v, 1);
    return 0;
}
"""


def check_compile_attach() -> Item:
    """Compile, attach and fire a tiny tracepoint program: the real proof a run can work."""
    try:
        from bcc import BPF
    except ImportError:
        return Item("compile + attach", "fail", "bcc not importable", "fix bcc first")
    t0 = time.monotonic()
    try:
        b = BPF(text=_PROBE_C, cflags=[f"-DTARGET_TGID={os.getpid()}"])
    except Exception as e:  # bcc raises bare Exception on compile/load failure
        return Item("compile + attach", "fail", str(e).splitlines()[0][:120], "see the items above")
    try:
        for _ in range(3):
            os.getppid()
        hits = b["hits"][ctypes.c_int(0)].value
    finally:
        b.cleanup()
    took = time.monotonic() - t0
    if hits < 3:
        return Item("compile + attach", "fail", f"program attached but saw {hits}/3 syscalls",
                    "tracepoints do not fire; check perf_event_paranoid and tracefs")
    return Item("compile + attach", "ok", f"tracepoint program fired ({took:.2f} s)")


def check_promtool() -> Item:
    path = shutil.which("promtool")
    if path:
        return Item("promtool", "ok", path)
    return Item("promtool", "warn", "not installed", "apt-get install prometheus (SC-002 falls back to built-in lint)")


CHECKS = (check_privileges, check_bpf_syscall, check_ringbuf, check_btf, check_tracefs,
          check_tracepoints, check_headers, check_bcc, check_compile_attach, check_promtool)


def run_doctor() -> list[Item]:
    items = []
    for fn in CHECKS:
        try:
            items.append(fn())
        except Exception as e:  # a doctor must report, not crash
            items.append(Item(fn.__name__.removeprefix("check_"), "fail", f"check crashed: {e}"))
    return items


def render(items: list[Item]) -> str:
    lines = []
    for it in items:
        lines.append(f"{it.status:>4}  {it.name:<20} {it.detail}")
        if it.status != "ok" and it.fix:
            lines.append(f"      {'':<20} fix: {it.fix}")
    ok = all(it.status != "fail" for it in items)
    lines.append("ready: a run with kernel truth can work" if ok else "not ready: fix the items marked fail")
    return "\n".join(lines)
