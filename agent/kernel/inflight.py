"""Syscalls already in progress when a process becomes a target: read from /proc, primed into io_args.

A server thread blocked in recv() on a keep-alive connection entered that syscall before
the probes could see it, so its exit has no saved arguments and the request it returns
would be missed. /proc/PID/task/TID/syscall shows the syscall a blocked thread is in and
its arguments; writing them into the kernel's io_args map (marked "primed") before the
process is added to the target set lets the exit program handle that read like any other.

A thread blocked in accept() is primed the same way, with the caller's address buffer and
its size (read from /proc/PID/mem, as the enter program reads it from user memory), so the
connection it returns still has its peer address.

The exit program uses primed arguments only for the same syscall number. After targeting,
``settle`` reads /proc again and removes primed entries whose thread has moved on (its
syscall returned before it was a target): a stale entry is never used for a later call.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from dataclasses import dataclass

from agent.kernel.events import (
    SC_READ, SC_READV, SC_RECVFROM, SC_RECVMSG, SC_SENDFILE, SC_SENDMSG, SC_SENDTO, SC_WRITE, SC_WRITEV,
)

log = logging.getLogger(__name__)

# Shapes of struct io_args (bpf/http_data.h SHAPE_*; a test checks they agree).
SHAPE_BUF, SHAPE_IOV, SHAPE_MSG, SHAPE_NONE, SHAPE_CONNECT, SHAPE_SKIP, SHAPE_ACCEPT = range(7)
DIR_READ, DIR_WRITE = 0, 1
MSG_PEEK = 2

# syscall -> (HTTP_SC_*, direction, shape, index of the flags argument or None)
_FAMILIES = {
    "read": (SC_READ, DIR_READ, SHAPE_BUF, None),
    "readv": (SC_READV, DIR_READ, SHAPE_IOV, None),
    "recvfrom": (SC_RECVFROM, DIR_READ, SHAPE_BUF, 3),
    "recvmsg": (SC_RECVMSG, DIR_READ, SHAPE_MSG, 2),
    "write": (SC_WRITE, DIR_WRITE, SHAPE_BUF, None),
    "writev": (SC_WRITEV, DIR_WRITE, SHAPE_IOV, None),
    "sendto": (SC_SENDTO, DIR_WRITE, SHAPE_BUF, None),
    "sendmsg": (SC_SENDMSG, DIR_WRITE, SHAPE_MSG, None),
    "sendfile64": (SC_SENDFILE, DIR_WRITE, SHAPE_NONE, None),
    "accept": (0, DIR_READ, SHAPE_ACCEPT, None),
    "accept4": (0, DIR_READ, SHAPE_ACCEPT, None),
}
# Syscall numbers (arch/*/entry/syscalls tables); other architectures are not primed.
SYSCALL_NUMBERS = {
    "x86_64": {"read": 0, "write": 1, "readv": 19, "writev": 20, "sendfile64": 40, "sendto": 44,
               "recvfrom": 45, "sendmsg": 46, "recvmsg": 47, "accept": 43, "accept4": 288},
    "aarch64": {"read": 63, "write": 64, "readv": 65, "writev": 66, "sendfile64": 71, "sendto": 206,
                "recvfrom": 207, "sendmsg": 211, "recvmsg": 212, "accept": 202, "accept4": 242},
}


@dataclass(frozen=True)
class InFlight:
    """One thread blocked in a syscall: its number and its six arguments."""

    tgid: int
    tid: int
    nr: int
    args: tuple[int, ...]


def _numbers() -> dict[int, str]:
    return {nr: name for name, nr in SYSCALL_NUMBERS.get(platform.machine(), {}).items()}


def read_syscall(tgid: int, tid: int) -> InFlight | None:
    """What thread ``tid`` is blocked in now, or None (running, not in a syscall, gone)."""
    try:
        with open(f"/proc/{tgid}/task/{tid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return None
    if len(fields) < 7 or fields[0] in ("running", "-1"):
        return None
    try:
        return InFlight(tgid, tid, int(fields[0]), tuple(int(x, 16) for x in fields[1:7]))
    except ValueError:
        return None


def in_flight(tgid: int) -> list[InFlight]:
    """The read/write-family and accept syscalls the threads of ``tgid`` are blocked in now."""
    numbers = _numbers()
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{tgid}/task")]
    except (OSError, ValueError):
        return []
    out = []
    for tid in tids:
        call = read_syscall(tgid, tid)
        if call is not None and call.nr in numbers:
            out.append(call)
    return out


def io_args_fields(call: InFlight) -> dict[str, int] | None:
    """The struct io_args the enter program would have saved for ``call``."""
    name = _numbers().get(call.nr)
    if name is None:
        return None
    sc, direction, shape, flags_at = _FAMILIES[name]
    if flags_at is not None and call.args[flags_at] & MSG_PEEK:
        shape = SHAPE_SKIP
    cnt = call.args[2] if shape == SHAPE_IOV else 0
    if shape == SHAPE_ACCEPT:  # the buffer's size, as the enter program reads it
        cnt = _user_int(call.tgid, call.args[2]) if call.args[1] and call.args[2] else 0
    fd = call.args[0] & 0xFFFFFFFF
    fd = fd - (1 << 32) if fd >= 1 << 31 else fd
    return {"ptr": call.args[1] if shape != SHAPE_NONE else 0, "cnt": cnt, "fd": fd, "nr": call.nr,
            "sc": sc, "dir": direction, "shape": shape, "primed": 1}


def _user_int(tgid: int, addr: int) -> int:
    """The positive C int at ``addr`` in process ``tgid``'s memory, else 0 (unreadable:
    the peer then stays unknown, as when the enter program cannot read it)."""
    try:
        with open(f"/proc/{tgid}/mem", "rb", buffering=0) as f:
            raw = os.pread(f.fileno(), 4, addr)
    except (OSError, OverflowError, ValueError):
        return 0
    value = int.from_bytes(raw, sys.byteorder, signed=True) if len(raw) == 4 else 0
    return max(value, 0)


class Primer:
    """Primes io_args for the blocked threads of processes about to become targets."""

    def __init__(self, table) -> None:  # the bcc table "io_args"
        self.table = table
        self.primed: list[InFlight] = []
        self.stats = {"primed": 0, "primed_withdrawn": 0, "prime_errors": 0}

    def prime(self, tgids: list[int]) -> int:
        n = 0
        for tgid in tgids:
            for call in in_flight(tgid):
                fields = io_args_fields(call)
                if fields is None:
                    continue
                try:
                    self.table[self._key(call)] = self.table.Leaf(**fields)
                except Exception as e:  # a full map: that syscall stays unseen (counted in-kernel)
                    self.stats["prime_errors"] += 1
                    log.debug("priming %s failed: %s", call, e)
                    continue
                self.primed.append(call)
                n += 1
        self.stats["primed"] += n
        return n

    def settle(self) -> int:
        """After targeting: withdraw primed entries whose thread left that syscall."""
        withdrawn = 0
        for call in self.primed:
            now = read_syscall(call.tgid, call.tid)
            if now is not None and (now.nr, now.args) == (call.nr, call.args):
                continue  # still blocked in it: its exit will use the entry
            key = self._key(call)
            try:
                leaf = self.table[key]
            except KeyError:
                continue  # consumed by its exit, or replaced and consumed
            if leaf.primed and leaf.nr == call.nr and leaf.ptr == (call.args[1] if leaf.shape != SHAPE_NONE else 0):
                try:
                    del self.table[key]
                    withdrawn += 1
                except KeyError:
                    pass
        self.primed = []
        self.stats["primed_withdrawn"] += withdrawn
        return withdrawn

    def _key(self, call: InFlight):
        return self.table.Key((call.tgid << 32) | call.tid)
