"""KernelCollector: runs the probes, drains the ring buffer into the assembler, writes evidence."""

from __future__ import annotations

import atexit
import gc
import logging
import mmap
import os
import signal
import threading
import time
from collections import Counter
from typing import Iterator

from agent.evidence import EvidenceWriter, KernelRequest
from agent.kernel import stats as kstats
from agent.kernel.assembler import Assembler
from agent.kernel.backlog import Backlog
from agent.kernel.cgroups import cgroup_pids
from agent.kernel.clock import ClockMap, measure
from agent.kernel.events import CTR_RINGBUF_DROPS, RecordError, decode
from agent.kernel.inflight import Primer
from agent.kernel.pacing import QUIET_GAP_S, IdleBudget
from agent.kernel.ringbuf import RingReader, SlotSum, records
from agent.kernel.probes import (
    DEFAULT_CAPTURE_BYTES, DEFAULT_MAP_ENTRIES, DEFAULT_RINGBUF_PAGES, ProbeConfig, Probes,
)

log = logging.getLogger(__name__)

POLL_MS = 20  # longest a record waits in the ring when no wake-up comes
# After a take that found records the loop rests at least this long before the next, even
# when wake-ups came meanwhile: beside a saturated nginx each CPU forces one every ~100
# requests, and each round has a fixed cost (two syscalls, thread wake-ups, Python). The
# default ring holds ~0.4 s of that load; 2 ms is ~300 requests a round. (5 ms saved the
# agent ~0.04 µs a request but took nginx's p99 from x1.5 to x2.5: longer rounds.)
TAKE_GAP_S = 0.002
CLOCK_EVERY_S = 1.0  # a wall-clock step is pinned to within this
# Records are copied out of the ring in bulk at once and assembled once requests stop
# flowing and the host is quiet (agent/kernel/pacing.py): a load waits in memory, not in the
# ring. Past BACKLOG_SOFT_BYTES assembly runs regardless; past BACKLOG_HARD_BYTES the loop
# stops draining: the ring fills and the kernel counts the drops.
BACKLOG_SOFT_BYTES = 512 << 20
BACKLOG_HARD_BYTES = 1 << 30
# A full garbage collection walks every assembled request and held the loop for up to ~1 s
# at 40k requests/s (the ring overflowed meanwhile). Objects that exist are frozen (left out
# of collections) every FREEZE_EVERY records; stop() unfreezes them.
FREEZE_EVERY = 20_000
POLL_NICE = -5  # the polling thread runs ahead of the SUT's threads for CPU (root only)


def _is_socket(tgid: int, fd: int) -> bool | None:
    """True/False when /proc tells, None when the fd or process is already gone."""
    try:
        return os.readlink(f"/proc/{tgid}/fd/{fd}").startswith("socket:")
    except OSError:
        return None


class KernelCollector:
    """Kernel truth for the target processes: ``with KernelCollector(w) as kc: kc.add_target(pid)``.

    start() compiles and attaches; a background thread polls the ring buffer; finish()
    drains, ends still-open connections from the kernel map, detaches and returns the
    requests (also written to ``writer``); stop() detaches and is safe on every path.
    """

    def __init__(self, writer: EvidenceWriter | None = None, capture_bytes: int = DEFAULT_CAPTURE_BYTES,
                 ringbuf_pages: int = DEFAULT_RINGBUF_PAGES, map_entries: int = DEFAULT_MAP_ENTRIES,
                 cgroup: str | None = None, poll_ms: int = POLL_MS) -> None:
        self.config = ProbeConfig(capture_bytes=capture_bytes, ringbuf_pages=ringbuf_pages,
                                  map_entries=map_entries, cgroup=cgroup)
        self.config.validate()
        if not isinstance(poll_ms, int) or not 1 <= poll_ms <= 1000:
            raise ValueError(f"poll_ms must be an integer within 1..1000, got {poll_ms!r}")
        self.writer = writer
        self.poll_ms = poll_ms
        self._probes: Probes | None = None
        self._assembler = Assembler(is_socket=_is_socket, on_exit=self._final_totals)
        self._primer: Primer | None = None
        self._clock: ClockMap | None = None
        self._next_clock = 0.0
        self._lock = threading.Lock()  # the ring buffer and the assembler are not thread-safe
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._user = Counter()  # user-space counters: received, bad_records, callback_errors
        self._ring: RingReader | None = None
        self._committed: SlotSum | None = None
        self._pacing = IdleBudget(BACKLOG_SOFT_BYTES)
        # Chunks copied out of the ring, not assembled yet; the first one is being assembled.
        self._backlog = Backlog()
        self._current: Iterator[memoryview] | None = None  # records left in the first chunk
        self._backlog_bytes_peak = 0
        self._last_take = self._drain_gap_max = self._last_record = 0.0
        self._since_freeze = 0
        self._frozen = False
        self._final_kernel: dict[str, int] | None = None
        self._final_drops_per_cpu: list[int] | None = None
        self._final: list[KernelRequest] | None = None
        self._targets: set[int] = set()
        self._old_sigterm = None
        self._warned = False

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> KernelCollector:
        if self._probes is not None:
            raise RuntimeError("KernelCollector.start() was already called")
        self._clock = ClockMap(measure())
        self._probes = Probes(self.config)
        atexit.register(self.stop)
        self._install_sigterm()
        try:
            self._probes.load(before_attach=self._prime_cgroup if self.config.cgroup else None)
            if self._primer is not None:
                self._primer.settle()
            events = self._probes.bpf[b"events"]
            self._committed = self._probes.committed_sum()
            self._ring = RingReader(events.map_fd, self.config.ringbuf_pages * mmap.PAGESIZE, self._committed)
            self._thread = threading.Thread(target=self._poll_loop, name="obsconform-kernel", daemon=True)
            self._thread.start()
        except BaseException:
            self.stop()  # `with` does not call __exit__ when __enter__ raises
            raise
        log.info("eBPF probes attached in %.2fs (compile %.2fs)",
                 self._probes.compile_s + self._probes.attach_s, self._probes.compile_s)
        return self

    def __enter__(self) -> KernelCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Detach all programs and stop the thread; idempotent, safe from any exit path."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            if self._probes is not None and self._probes.bpf is not None:
                try:
                    self._final_kernel = self._probes.counters()
                    self._final_drops_per_cpu = self._probes.counter_per_cpu(CTR_RINGBUF_DROPS)
                except Exception:  # a half-loaded object: detaching matters more
                    log.debug("reading counters at stop failed", exc_info=True)
                self._probes.unload()
            if self._ring is not None:
                self._ring.close()
            if self._committed is not None:
                self._committed.close()
            self._current = None
            self._backlog.close()
        self._pacing.close()
        self._restore_sigterm()
        atexit.unregister(self.stop)
        if self._frozen:
            self._frozen = False
            gc.unfreeze()

    def _install_sigterm(self) -> None:
        """SIGTERM would kill the process without running finally blocks; turn it into
        SystemExit so that ``with``/``finally`` detach the probes. Only when nobody else
        handles SIGTERM, and only from the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is _sigterm_to_exit:
                signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    # --- targets ----------------------------------------------------------------------------

    def add_target(self, tgid: int, children: bool = True) -> None:
        """Trace process ``tgid``; processes it forks from now on are followed in the kernel.
        With ``children``, its descendants that exist already are added too. Reads and
        writes its threads are already blocked in are primed first (agent/kernel/inflight)."""
        self._require_running()
        pids = [tgid] + (_descendants(tgid) if children else [])
        primer = self._new_primer()
        primer.prime(pids)
        for pid in pids:
            self._probes.set_target(pid, True)
            self._targets.add(pid)
        primer.settle()

    def _new_primer(self) -> Primer:
        if self._primer is None:
            self._primer = Primer(self._probes.bpf[b"io_args"])
        return self._primer

    def _prime_cgroup(self) -> None:
        """Before attach: prime the blocked syscalls of every process in the cgroup tree."""
        self._new_primer().prime(cgroup_pids(self.config.cgroup))

    def _final_totals(self, tgid: int, fds: list[int]):
        # Called by the assembler (inside _assemble, lock held) when a target process exited.
        if self._probes is None or self._probes.bpf is None:
            return {}
        return self._probes.take_conns(tgid, fds)

    def remove_target(self, tgid: int) -> None:
        self._require_running()
        self._probes.set_target(tgid, False)
        self._targets.discard(tgid)

    def traced_pids(self) -> set[int]:
        """The kernel's target set now: added tgids, followed children (and their tids)."""
        self._require_running()
        return self._probes.targets()  # map syscalls need no lock

    def _require_running(self) -> None:
        if self._probes is None or self._probes.bpf is None:
            raise RuntimeError("the collector is not running: call start() first")

    # --- records ----------------------------------------------------------------------------

    def _take(self) -> int:
        """Copy every committed record out of the ring into the backlog; returns the bytes."""
        backlog = self._backlog
        if backlog.bytes >= BACKLOG_HARD_BYTES:
            return 0  # the ring fills and the kernel counts what it drops
        size = backlog.copy_from(self._ring)
        if size:
            self._backlog_bytes_peak = max(self._backlog_bytes_peak, backlog.bytes)
        return size

    def _assemble(self, budget_s: float | None = None) -> int:
        """Decode and assemble backlog records, all of them or for about ``budget_s``;
        returns how many."""
        backlog, feed = self._backlog, self._assembler.feed
        deadline = None if budget_s is None else time.monotonic() + budget_s
        n = 0
        while backlog:
            if self._current is None:
                self._current = records(backlog.first())
            for raw in self._current:
                try:
                    feed(decode(raw))
                except RecordError as e:
                    self._user["bad_records"] += 1
                    self._warn_once("malformed ring-buffer record: %s", e)
                except Exception as e:  # never let one record stop the loop
                    self._user["callback_errors"] += 1
                    self._warn_once("failed to assemble a record: %r", e)
                n += 1
                if deadline is not None and not n & 63 and time.monotonic() >= deadline:
                    break
            else:  # the first chunk is done
                self._current = raw = None  # no view of it may outlive it
                backlog.pop()
                continue
            break  # out of time inside a chunk
        self._user["received"] += n
        self._since_freeze += n
        if self._since_freeze >= FREEZE_EVERY:
            gc.freeze()
            self._since_freeze, self._frozen = 0, True
        return n

    def _warn_once(self, msg: str, *args: object) -> None:
        if not self._warned:
            self._warned = True
            log.warning(msg + " (further errors are only counted)", *args)

    def _poll_loop(self) -> None:
        try:  # a starved drain loses records: favour this thread over the SUT's (best effort)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), POLL_NICE)
        except (OSError, AttributeError):
            pass
        with self._lock:  # ~50 ms, here rather than in start(): the first load's records
            while self._backlog.top_up():  # land in touched memory
                pass
        pacing, idle_wait, took = self._pacing, True, False
        while not self._stop.is_set():
            try:
                if idle_wait:  # nothing to do now: until a forced wake-up or poll_ms
                    if took:  # records are flowing: let a batch gather (a plain sleep
                        time.sleep(TAKE_GAP_S)  # is one syscall; Event.wait is ~20 µs of Python)
                    self._ring.wait(self.poll_ms / 1000)
                with self._lock:
                    if self._probes is None or self._probes.bpf is None:
                        return
                    now = time.monotonic()
                    if self._last_take:  # the longest the ring went unread: what its size must cover
                        self._drain_gap_max = max(self._drain_gap_max, now - self._last_take)
                    self._last_take = now
                    took = self._take() > 0
                    if took:
                        self._last_record = now
                    grant = pacing.budget(self._backlog.bytes, now - self._last_record) if self._backlog else 0.0
                    if grant > 0.0:
                        t0 = time.monotonic()
                        self._assemble(grant)
                        pacing.spent(time.monotonic() - t0)
                    self._sample_clock()
                    if not self._backlog and now - self._last_record >= QUIET_GAP_S:
                        self._backlog.top_up()  # nothing waits: pre-touch memory for the next load
                    # With records waiting and CPU granted, go on at once; otherwise wait.
                    idle_wait = not (self._backlog and grant > 0.0)
            except Exception as e:
                self._user["poll_errors"] += 1
                self._warn_once("ring-buffer poll failed: %r", e)
                self._stop.wait(self.poll_ms / 1000)

    def _sample_clock(self) -> None:
        """Every CLOCK_EVERY_S: one more offset sample, so that a wall-clock step is seen
        (and pinned to a second) even if a later step undoes it."""
        now = time.monotonic()
        if now < self._next_clock or self._clock is None:
            return
        self._next_clock = now + CLOCK_EVERY_S
        if self._clock.add(measure(5)):
            log.warning("the wall clock was stepped during the run: %s", self._clock.steps[-1])

    def drain(self, timeout_s: float = 1.0) -> int:
        """Consume and assemble every record written so far now; returns how many records
        were assembled."""
        deadline = time.monotonic() + timeout_s
        total = 0
        with self._lock:
            if self._probes is None or self._probes.bpf is None:
                return 0
            while True:
                full = self._backlog.bytes >= BACKLOG_HARD_BYTES  # _take() skips the ring
                got = self._take()
                total += self._assemble()
                if (got == 0 and not full) or time.monotonic() >= deadline:
                    return total

    def finish(self) -> list[KernelRequest]:
        """Drain, end still-open connections from the kernel map, detach, write and return
        every request. Later calls return the same list."""
        if self._final is not None:
            return self._final
        self._require_running()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.drain(timeout_s=5.0)
        with self._lock:
            self._assemble()
            snapshots = self._probes.conn_snapshots()
            self._assembler.finish_open(snapshots)
        self.stop()
        self._clock.close(measure())
        self._final = self._assembler.requests(self._clock, release=True)
        if self.writer is not None:
            self.writer.kernel(self._final)
        return self._final

    @property
    def requests(self) -> list[KernelRequest]:
        """Requests finished so far (all of them after finish())."""
        if self._final is not None:
            return self._final
        with self._lock:
            self._assemble()
            return self._assembler.requests(self._clock) if self._clock else []

    # --- reporting --------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters for RunMeta.kernel_stats (see agent/kernel/stats.py): in-kernel counters
        (records, ring_drops and ring_drops_per_cpu, truncated_captures, map_full over every
        map, blind_*, syscalls_unseen_at_entry, ...), user-space ones (user_received,
        bad_records, callback_errors), the assembler's, ``loss`` (non-zero makes KT
        inconclusive), ``blind_spots``, ``sizes``, compile/attach times, missing tracepoints."""
        kernel, per_cpu = self._final_kernel, self._final_drops_per_cpu
        if kernel is None and self._probes is not None and self._probes.bpf is not None:
            kernel = self._probes.counters()
            per_cpu = self._probes.counter_per_cpu(CTR_RINGBUF_DROPS)
        with self._lock:
            self._user["backlog_bytes_peak"] = self._backlog_bytes_peak
            self._user["drain_gap_max_ms"] = round(self._drain_gap_max * 1000, 1)
            if self._ring is not None:
                self._user["ring_fill_peak_bytes"] = self._ring.fill_peak
                # runs of records copied out, and those the committed counters released
                # without a walk of their headers (the rest raced a record being written)
                self._user["ring_takes"] = self._ring.peeks
                self._user["ring_takes_unwalked"] = self._ring.unwalked
                self._user["ring_bytes_consumed"] = self._ring.consumed
            if self._committed is not None and not self._committed.closed:
                self._user["ring_bytes_committed"] = self._committed()
            self._user["assembly_forced_slices"] = self._pacing.forced
            self._user["backlog_arenas_mapped"] = self._backlog.arenas_made
            out = kstats.compose(kernel, per_cpu, self._user, self._assembler.stats,
                                 self._assembler.blind_samples,
                                 self._primer.stats if self._primer else {}, self.config.sizes())
        out["targets"] = sorted(self._targets)
        if self._probes is not None:
            out["compile_s"] = round(self._probes.compile_s, 3)
            out["attach_s"] = round(self._probes.attach_s, 3)
            out["missing_tracepoints"] = list(self._probes.missing)
        return out

    def program_run_stats(self) -> dict[str, dict[str, int]]:
        """Runs and run time of each BPF program (needs BPF run-time statistics enabled)."""
        if self._probes is None:
            return {}
        return self._probes.run_stats()

    def clock_info(self) -> dict:
        return self._clock.info() if self._clock else {}

    @property
    def attached(self) -> list[tuple[str, str]]:
        """(program, tracepoint) pairs attached now."""
        return list(self._probes.attached) if self._probes else []

    def probe_program_ids(self) -> set[int]:
        """Kernel ids of this collector's programs while attached (empty once stopped)."""
        if self._probes is None:
            return set()
        with self._lock:
            return self._probes.program_ids()


def _sigterm_to_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _descendants(pid: int) -> list[int]:
    """Processes below ``pid`` now, from /proc/<pid>/task/<tid>/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out
