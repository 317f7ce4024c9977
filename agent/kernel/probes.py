"""Compiles bpf/http_trace.bpf.c with bcc, attaches it to syscall tracepoints, detaches it.

Configuration reaches the C program only as typed -D flags (validated integers), never as
spliced text. Attach points are feature-detected: a syscall tracepoint this kernel lacks
is left out and reported as a blind spot; read, write and close are required.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from agent.errors import ProbeError
from agent.kernel.assembler import ConnSnapshot
from agent.kernel.cgroups import cgroup_id_level
from agent.kernel.events import COUNTER_NAMES, CTR_NUM
from agent.kernel.ringbuf import SlotSum

log = logging.getLogger(__name__)
T = TypeVar("T")


def _bpf_dir() -> Path:
    """Where the BPF C sources are: $OBSCONFORM_BPF_DIR, the checkout's bpf/ (editable
    install, as make does), or what a wheel installed under <prefix>/share/obsconform/bpf."""
    if os.environ.get("OBSCONFORM_BPF_DIR"):
        return Path(os.environ["OBSCONFORM_BPF_DIR"])
    checkout = Path(__file__).resolve().parents[2] / "bpf"
    installed = Path(sys.prefix) / "share" / "obsconform" / "bpf"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


BPF_DIR = _bpf_dir()
PROGRAM_FILE = BPF_DIR / "http_trace.bpf.c"
HEADER_FILE = BPF_DIR / "http_event.h"
SOURCE_FILES = (HEADER_FILE, BPF_DIR / "http_bytes.h", BPF_DIR / "http_data.h", PROGRAM_FILE)  # reading order
PROG_PREFIX = "obsc_"  # every program in http_trace.bpf.c is named obsc_*

DEFAULT_CAPTURE_BYTES = 1024
CAPTURE_RANGE = (256, 4096)
# Sized for 50k requests/s: ~2 records of 0.1-0.5 KiB per request is 10-50 MB/s; the
# collector copies records out at ~150k/s and assembles them apart, and a 16 MiB ring
# rides out a stall of that copying (a GIL-heavy moment, a descheduled thread) of ~0.3-1 s.
DEFAULT_RINGBUF_PAGES = 4096  # 16 MiB
# Each CPU wakes the reader after 1/WAKEUP_DIVISOR of the ring (32 KiB of the default):
# small batches keep each drain short (a 1 MiB batch held a saturated nginx's p99 at 2-3x,
# 32 KiB at ~1x) while the ring keeps >99 % headroom.
WAKEUP_DIVISOR = 512
SLOT_STRIDE = 8  # u64 entries between two CPUs' slots of "committed" (as in the C)
DEFAULT_MAP_ENTRIES = 65536  # connections open at once
DEFAULT_IO_ENTRIES = 16384  # target threads that read or write (each keeps its io_args entry)
DEFAULT_TARGET_ENTRIES = 16384  # target processes and followed threads

# Syscall families: (name, its enter program, -D flag that compiles it out when absent).
# Every family's sys_exit goes to obsc_ex_io except accept and connect.
_IO_FAMILIES = [
    ("read", "obsc_en_read", None),
    ("write", "obsc_en_write", None),
    ("readv", "obsc_en_readv", "OBSC_NO_READV"),
    ("recvfrom", "obsc_en_recvfrom", "OBSC_NO_RECVFROM"),
    ("recvmsg", "obsc_en_recvmsg", "OBSC_NO_RECVMSG"),
    ("writev", "obsc_en_writev", "OBSC_NO_WRITEV"),
    ("sendto", "obsc_en_sendto", "OBSC_NO_SENDTO"),
    ("sendmsg", "obsc_en_sendmsg", "OBSC_NO_SENDMSG"),
    ("sendfile64", "obsc_en_sendfile", "OBSC_NO_SENDFILE"),
]


_EXIT_RET = re.compile(r"field:long ret;\s*offset:16;\s*size:8;")


def _exit_layout_ok(tracefs: Path, name: str) -> bool:
    """struct sys_exit_args in the C program assumes ret is a long at offset 16."""
    fmt = tracefs / "events" / "syscalls" / f"sys_exit_{name}" / "format"
    try:
        return bool(_EXIT_RET.search(fmt.read_text()))
    except OSError:
        return False


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer within {lo}..{hi}, got {value!r}")
    return value


@dataclass
class ProbeConfig:
    """What the C program is compiled with; every field becomes one typed -D flag."""

    capture_bytes: int = DEFAULT_CAPTURE_BYTES
    ringbuf_pages: int = DEFAULT_RINGBUF_PAGES
    map_entries: int = DEFAULT_MAP_ENTRIES
    io_entries: int = DEFAULT_IO_ENTRIES
    target_entries: int = DEFAULT_TARGET_ENTRIES
    cgroup: str | None = None  # cgroup v2 directory: its processes are targets too
    absent: list[str] = field(default_factory=list)  # -D flags for missing tracepoints
    group_dead: bool = True

    def validate(self) -> None:
        _check_int("capture_bytes", self.capture_bytes, *CAPTURE_RANGE)
        _check_int("ringbuf_pages", self.ringbuf_pages, 1, 1 << 18)
        if self.ringbuf_pages & (self.ringbuf_pages - 1):
            raise ValueError(f"ringbuf_pages must be a power of two, got {self.ringbuf_pages}")
        _check_int("map_entries", self.map_entries, 64, 1 << 22)
        _check_int("io_entries", self.io_entries, 64, 1 << 22)
        _check_int("target_entries", self.target_entries, 64, 1 << 22)

    def sizes(self) -> dict[str, int]:
        """The configured buffer and map sizes, for the report."""
        return {"capture_bytes": self.capture_bytes, "ringbuf_pages": self.ringbuf_pages,
                "ringbuf_bytes": self.ringbuf_pages * os.sysconf("SC_PAGE_SIZE"), "max_connections": self.map_entries,
                "max_in_flight_syscalls": self.io_entries, "max_targets": self.target_entries}

    def cflags(self) -> list[str]:
        self.validate()
        flags = [
            f"-I{BPF_DIR}",
            f"-DCAPTURE_BYTES={self.capture_bytes:d}",
            f"-DRINGBUF_PAGES={self.ringbuf_pages:d}",
            f"-DMAP_ENTRIES={self.map_entries:d}",
            f"-DIO_ENTRIES={self.io_entries:d}",
            f"-DTARGET_ENTRIES={self.target_entries:d}",
            f"-DWAKEUP_BYTES={self.ringbuf_pages * 4096 // WAKEUP_DIVISOR:d}",
            f"-DCPU_SLOTS={possible_cpus():d}",
        ]
        if self.group_dead:
            flags.append("-DHAVE_GROUP_DEAD=1")
        if self.cgroup:
            cg_id, level = cgroup_id_level(self.cgroup)
            flags += [f"-DTARGET_CGROUP_ID={cg_id:d}ULL", f"-DTARGET_CGROUP_LEVEL={level:d}"]
        flags += [f"-D{name}=1" for name in self.absent]
        return flags


def hook_points() -> list[str]:
    """The tracepoints ("category:event") the probes attach to on this kernel: for a benchmark
    that puts empty programs in the same places, to measure what the hooks alone cost."""
    from bcc import BPF

    return [tp for _, tp in Probes(ProbeConfig())._plan(BPF)]


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """How many CPU numbers this kernel may use ("0-3,8-11" -> 12): the BPF program keeps a
    slot per CPU number. Falls back to os.cpu_count() when the file cannot be read."""
    try:
        with open(path) as f:
            text = f.read().strip()
        return max(int(part.rsplit("-", 1)[-1]) for part in text.split(",")) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


def bpf_source(config: ProbeConfig | None = None) -> str:
    """The C the probes are built from (header + program) and the flags, for --print-bpf."""
    config = config or ProbeConfig()
    flags = " ".join(config.cflags())
    parts = [f"/* obsconform eBPF program, compiled by bcc with: {flags} */\n"]
    parts += [f"/* ---- {f.name} ---- */\n{f.read_text()}" for f in SOURCE_FILES]
    return "\n".join(parts)


def _retry_interrupted(load: Callable[[], T], tries: int = 5) -> T:
    """Run a bcc load/attach, again when a signal interrupted the verifier.

    BPF_PROG_LOAD fails with EAGAIN when a signal arrives while the verifier runs (a child
    exiting, a profiler attaching): that is not a rejection, and a retry succeeds."""
    for attempt in range(tries):
        try:
            return load()
        except Exception as e:
            if attempt == tries - 1 or os.strerror(errno.EAGAIN) not in str(e):
                raise
    raise AssertionError("unreachable")


class Probes:
    """The compiled program, its attachments and its maps."""

    def __init__(self, config: ProbeConfig) -> None:
        config.validate()
        self.config = config
        self.bpf = None
        self.attached: list[tuple[str, str]] = []  # (program, "category:event")
        self.missing: list[str] = []  # tracepoints this kernel lacks (blind spots)
        self.compile_s = self.attach_s = 0.0
        self._targets_lock = threading.Lock()  # user_bits words are read, changed, written

    def load(self, before_attach: Callable[[], None] | None = None) -> None:
        """Compile and attach; raises ProbeError with what to do on failure.
        ``before_attach`` runs once the maps exist and before any program runs."""
        try:
            from bcc import BPF
        except ImportError as e:
            raise ProbeError("bcc is not importable: install python3-bpfcc (`make setup`) and use a "
                             "venv made with --system-site-packages, or pass --no-ebpf") from e
        if not may_load_bpf():
            raise ProbeError("eBPF probes need root (or CAP_BPF+CAP_PERFMON+CAP_SYS_RESOURCE): "
                             "run with sudo, or pass --no-ebpf")
        plan = self._plan(BPF)
        cflags = self.config.cflags()
        t0 = time.monotonic()
        try:
            self.bpf = BPF(src_file=str(PROGRAM_FILE).encode(), cflags=cflags)
        except Exception as e:
            raise ProbeError(f"cannot compile {PROGRAM_FILE.name} ({str(e).splitlines()[0]}): "
                             "run `make setup` for kernel headers, or pass --no-ebpf") from e
        self.compile_s = time.monotonic() - t0
        t0 = time.monotonic()
        try:
            # obsc_ex_io tail-calls the header scan: the slot is filled before it can run.
            scan = _retry_interrupted(lambda: self.bpf.load_func(b"obsc_scan", BPF.TRACEPOINT))
            table = self.bpf[b"scan_prog"]
            table[ctypes.c_int(0)] = ctypes.c_int(scan.fd)
        except Exception as e:
            self.unload()
            raise ProbeError(f"cannot load the header scan program ({str(e).splitlines()[0]}): "
                             "this kernel's verifier rejects it; pass --no-ebpf") from e
        if before_attach is not None:
            try:
                before_attach()
            except BaseException:
                self.unload()
                raise
        try:
            for fn, tp in plan:
                _retry_interrupted(lambda: self.bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode()))
                self.attached.append((fn, tp))
        except Exception as e:
            self.unload()
            raise ProbeError(f"cannot attach {fn} to {tp} ({str(e).splitlines()[0]}): check that "
                             "tracefs is mounted and BPF is allowed here, or pass --no-ebpf") from e
        self.attach_s = time.monotonic() - t0

    def _plan(self, BPF) -> list[tuple[str, str]]:  # noqa: N803  (the bcc class)
        """Programs and the tracepoints to attach them to, from what this kernel has."""
        import bcc

        tracefs = Path(bcc.TRACEFS)  # where bcc attaches, so detection and attach agree
        try:
            mounted = (tracefs / "events").is_dir()
        except PermissionError:  # capabilities without tracefs access (it is root-only by default)
            raise ProbeError(f"{tracefs} is not readable by this user: run as root, or give it tracefs "
                             "access (CAP_DAC_READ_SEARCH, or mount tracefs with gid=/mode=), or pass "
                             "--no-ebpf") from None
        if not mounted:
            raise ProbeError("tracefs is not mounted: `mount -t tracefs tracefs /sys/kernel/tracing` "
                             "(or run `make setup`), or pass --no-ebpf")

        def has_syscall(name: str) -> bool:
            ok = all(BPF.tracepoint_exists("syscalls", f"sys_{d}_{name}") for d in ("enter", "exit"))
            if ok and not _exit_layout_ok(tracefs, name):
                raise ProbeError(f"syscalls:sys_exit_{name} has an unexpected record layout (ret not a "
                                 "long at offset 16); this kernel is not supported, pass --no-ebpf")
            if not ok:
                self.missing.append(f"syscalls:sys_*_{name}")
            return ok

        plan: list[tuple[str, str]] = []
        for name, fn, flag in _IO_FAMILIES:
            if has_syscall(name):
                plan += [(fn, f"syscalls:sys_enter_{name}"), ("obsc_ex_io", f"syscalls:sys_exit_{name}")]
            elif flag is None:
                raise ProbeError(f"this kernel has no syscalls:sys_enter/exit_{name} tracepoints "
                                 "(CONFIG_FTRACE_SYSCALLS): kernel truth needs them; pass --no-ebpf")
            else:
                self.config.absent.append(flag)
        if not has_syscall("close"):
            raise ProbeError("this kernel has no syscalls:sys_enter_close tracepoint; pass --no-ebpf")
        plan.append(("obsc_en_close", "syscalls:sys_enter_close"))
        for name, flag in (("accept", "OBSC_NO_ACCEPT"), ("accept4", "OBSC_NO_ACCEPT4")):
            if has_syscall(name):  # the enter saves where the client's address goes
                plan += [(f"obsc_en_{name}", f"syscalls:sys_enter_{name}"),
                         ("obsc_ex_accept", f"syscalls:sys_exit_{name}")]
            else:
                self.config.absent.append(flag)
        if has_syscall("connect"):
            plan += [("obsc_en_connect", "syscalls:sys_enter_connect"),
                     ("obsc_ex_connect", "syscalls:sys_exit_connect")]
        else:
            self.config.absent.append("OBSC_NO_CONNECT")
        for event, fn, flag in (("sched_process_fork", "obsc_fork", "OBSC_NO_FORK"),
                                ("sched_process_exit", "obsc_exit", "OBSC_NO_EXIT")):
            if BPF.tracepoint_exists("sched", event):
                plan.append((fn, f"sched:{event}"))
            else:
                self.missing.append(f"sched:{event}")
                self.config.absent.append(flag)
        exit_format = tracefs / "events" / "sched" / "sched_process_exit" / "format"
        self.config.group_dead = exit_format.exists() and "group_dead" in exit_format.read_text()
        return plan

    def unload(self) -> None:
        """Detach every program and close every fd; safe to call twice."""
        bpf, self.bpf = self.bpf, None
        if bpf is None:
            return
        # Each detach waits for an RCU grace period (~80 ms here): overlapping them halves
        # the time stop() takes. Every call removes its own key of bpf.tracepoint_fds.
        points = list(bpf.tracepoint_fds)
        if points:
            with ThreadPoolExecutor(min(len(points), 32), thread_name_prefix="obsconform-detach") as pool:
                for point, result in zip(points, pool.map(_try_detach(bpf), points)):
                    if result is not None:
                        log.warning("detaching %s failed (%s); cleanup retries it", point.decode(), result)
        try:  # a prog array releases its programs from a workqueue: empty it now
            del bpf[b"scan_prog"][ctypes.c_int(0)]
        except Exception:  # noqa: BLE001  (never filled, or already gone)
            pass
        bpf.cleanup()
        self.attached = []

    # --- maps -----------------------------------------------------------------------------

    def set_target(self, tgid: int, on: bool) -> None:
        """Add ``tgid`` to the kernel's target set, or take it out (and drop the syscall
        arguments its threads left in io_args, which no exit will use now)."""
        table = self.bpf[b"targets"]
        key = table.Key(tgid)
        with self._targets_lock:
            if on:
                table[key] = table.Leaf(1)  # before the bit: a set bit sends the kernel here
                self._set_user_bit(tgid, True)
                return
            self._set_user_bit(tgid, False)
            try:
                del table[key]
            except KeyError:
                pass
        io_args = self.bpf[b"io_args"]
        for k in [k for k in io_args.keys() if k.value >> 32 == tgid]:
            try:
                del io_args[k]
            except KeyError:  # the thread exited meanwhile
                pass

    def _set_user_bit(self, pid: int, on: bool) -> None:
        """user_bits (bpf/http_trace.bpf.c): one bit per pid, written only here, under the lock."""
        bits = self.bpf[b"user_bits"]
        word = bits.Key(pid >> 6)
        value = bits[word].value
        value = value | (1 << (pid & 63)) if on else value & ~(1 << (pid & 63))
        bits[word] = bits.Leaf(value)

    def committed_sum(self) -> SlotSum:
        """Reads the bytes committed to the ring so far, summed over CPUs, through an mmap
        (the "committed" slots; see RingReader.peek). The caller closes it; until then the
        mapping keeps the map alive, unload() or not."""
        table = self.bpf[b"committed"]
        return SlotSum(table.map_fd, len(table), SLOT_STRIDE)

    def targets(self) -> set[int]:
        return {k.value for k in self.bpf[b"targets"].keys()}

    def counters(self) -> dict[str, int]:
        table = self.bpf[b"counters"]
        return {COUNTER_NAMES[i]: int(table.sum(table.Key(i)).value) for i in range(CTR_NUM)}

    def counter_per_cpu(self, index: int) -> list[int]:
        """One counter's value on each possible CPU."""
        table = self.bpf[b"counters"]
        return [int(v) for v in table[table.Key(index)]]

    def take_conns(self, tgid: int, fds: list[int]) -> dict[int, ConnSnapshot]:
        """Final totals of these connections of an exited process; their entries are removed."""
        table = self.bpf[b"conns"]
        out = {}
        for fd in fds:
            key = table.Key((tgid << 32) | (fd & 0xFFFFFFFF))
            try:
                v = table[key]
                del table[key]
            except KeyError:
                continue
            out[fd] = ConnSnapshot(v.last_read_ns, v.last_write_ns, v.rd_bytes, v.wr_bytes, v.conn_ns)
        return out

    def conn_snapshots(self) -> dict[tuple[int, int], ConnSnapshot]:
        """The connection map: (tgid, fd) -> totals, for connections still open."""
        out = {}
        for k, v in self.bpf[b"conns"].items():
            fd = ctypes.c_int32(k.value & 0xFFFFFFFF).value
            out[(k.value >> 32, fd)] = ConnSnapshot(v.last_read_ns, v.last_write_ns, v.rd_bytes, v.wr_bytes,
                                                    v.conn_ns)
        return out

    def run_stats(self) -> dict[str, dict[str, int]]:
        """Per program: runs and total run time in ns (counted only while BPF run-time
        statistics are enabled: sysctl kernel.bpf_stats_enabled or BPF_ENABLE_STATS)."""
        out = {}
        for name, fn in (self.bpf.funcs.items() if self.bpf else ()):
            try:
                with open(f"/proc/self/fdinfo/{fn.fd}") as f:
                    info = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
            except OSError:
                continue
            out[name.decode()] = {"runs": int(info.get("run_cnt", 0)), "run_time_ns": int(info.get("run_time_ns", 0))}
        return out

    def program_ids(self) -> set[int]:
        """Kernel ids of the programs this object loaded (from /proc/self/fdinfo)."""
        if self.bpf is None:
            return set()
        return {i for fn in self.bpf.funcs.values() if (i := _fd_prog_id("self", fn.fd)) is not None}


def may_load_bpf() -> bool:
    """root, or CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON in the effective set (CAP_SYS_RESOURCE,
    for the memlock rlimit, is not needed on kernels >= 5.11 that charge BPF memory to the cgroup)."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    has = lambda bit: bool(caps >> bit & 1)  # noqa: E731
    return has(21) or (has(39) and has(38))  # CAP_SYS_ADMIN; CAP_BPF + CAP_PERFMON


def _try_detach(bpf):
    def detach(point: bytes) -> Exception | None:
        try:
            bpf.detach_tracepoint(point)
        except Exception as e:  # noqa: BLE001  (reported by the caller, retried by cleanup)
            return e
        return None
    return detach


def _fd_prog_id(pid: str, fd: int | str) -> int | None:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("prog_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def attached_program_ids(pid: int | None = None) -> set[int]:
    """Ids of loaded obsconform BPF programs (named obsc_*), optionally only those whose
    file descriptors process ``pid`` holds. Tests use it to prove that probes are gone."""
    names: dict[int, str] | None = None
    if shutil.which("bpftool"):
        try:
            out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, timeout=10,
                                 check=True).stdout
            names = {p["id"]: p.get("name", "") for p in json.loads(out or b"[]")}
        except (OSError, subprocess.SubprocessError, ValueError):
            names = None
    if pid is not None:
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            return set()
        held = {i for fd in fds if (i := _fd_prog_id(str(pid), fd)) is not None}
        if names is None:
            return held
        return {i for i in held if names.get(i, PROG_PREFIX).startswith(PROG_PREFIX)}
    if names is None:
        raise ProbeError("bpftool is needed to list loaded BPF programs: run `make setup`")
    return {i for i, n in names.items() if n.startswith(PROG_PREFIX)}
