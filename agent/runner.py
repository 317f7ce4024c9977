"""One conformance run end to end: probes, SUT, intake, load, settle, evidence, checks, report."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agent import REPORT_NAME, __version__
from agent._http import parse_listen
from agent import scenario as scenario_mod
from agent.errors import InputError, ObsconformError, ProbeError
from agent.evidence import EvidenceWriter, RunMeta, load_evidence
from agent.hostinfo import host_info
from agent.scenario import DEFAULT_PROFILE, PROFILES
from agent.sut import (
    LaunchedSut, host_port, otel_environment, process_environ, span_export_delay_s, tcp_open,
)
from agent.urlpath import UrlPlan, plan_url, targets_sent

log = logging.getLogger(__name__)

DEFAULT_SETTLE_QUIET_S = 1.0
DEFAULT_SETTLE_TIMEOUT_S = 15.0
# On top of the SUT's span export delay: one export's own time and scheduling jitter.
EXPORT_MARGIN_S = 0.5
# Where the OTLP receiver listens when the SUT is already running (--pid/--port/--cgroup, daemon
# runs): the OTLP/HTTP default its exporters post to. An --exec SUT is told a free port instead.
DEFAULT_OTLP_LISTEN = "127.0.0.1:4318"
ANY_LOOPBACK_PORT = "127.0.0.1:0"


@dataclass
class RunConfig:
    url: str
    exec_cmd: str | None = None
    pid: int | None = None
    port: int | None = None  # --port: the process tree listening on this TCP port
    cgroup: str | None = None  # --cgroup: a cgroup v2 directory, filtered in the kernel
    metrics_url: str | None = None
    paths: list[str] | None = None  # default scenario's load paths (none: the --url endpoint)
    requests: int = 200
    concurrency: int = 4
    out_dir: Path = Path("reports")
    junit: Path | None = None
    capture_bytes: int = 1024
    ringbuf_pages: int = 4096  # ring-buffer size in pages (power of two; 16 MiB)
    max_connections: int = 65536  # connections the kernel map tracks at once
    no_ebpf: bool = False
    checks: list[str] | None = None
    settle_quiet_s: float = DEFAULT_SETTLE_QUIET_S
    settle_timeout_s: float = DEFAULT_SETTLE_TIMEOUT_S
    scenario: dict = field(default_factory=dict)  # inline scenario (daemon run specs)
    scenario_file: Path | None = None  # --scenario
    catalog: Path | None = None  # --catalog: overrides the scenario's catalogue
    profile: str = DEFAULT_PROFILE
    otlp_listen: str | None = None  # --otlp-listen HOST:PORT (default: see otlp_address)
    otlp_grpc_listen: str | None = None  # --otlp-grpc-listen HOST:PORT: an OTLP/gRPC receiver too
    sink_listen: str | None = None  # --sink-listen HOST:PORT (default: a free loopback port)

    def validate(self) -> None:
        if sum(x is not None for x in (self.exec_cmd, self.pid, self.port, self.cgroup)) != 1:
            raise InputError("give exactly one target: --exec CMD, --pid PID, --port PORT or --cgroup PATH")
        host_port(self.url)
        self.url_plan()
        if self.metrics_url:
            host_port(self.metrics_url)
        if self.requests < 1:
            raise InputError("--requests must be at least 1")
        if not 1 <= self.concurrency <= 1024:
            raise InputError("--concurrency must be between 1 and 1024")
        if not 256 <= self.capture_bytes <= 4096:
            raise InputError("--capture-bytes must be between 256 and 4096")
        if not 1 <= self.ringbuf_pages <= 1 << 18 or self.ringbuf_pages & (self.ringbuf_pages - 1):
            raise InputError("--ringbuf-pages must be a power of two between 1 and 262144")
        if not 64 <= self.max_connections <= 1 << 22:
            raise InputError("--max-connections must be between 64 and 4194304")
        if self.profile not in PROFILES:
            raise InputError(f"--profile {self.profile!r} is not supported; supported: {', '.join(PROFILES)}")
        self.otlp_address()
        self.otlp_grpc_address()
        self.sink_address()
        self.validate_checks()
        given = [n for n, v in (("--scenario", self.scenario_file), ("an inline scenario", self.scenario),
                                ("--path", self.paths)) if v]
        if len(given) > 1:
            raise InputError(f"give only one of {' and '.join(given)} (a scenario's load mix says what to request)")
        if not self.no_ebpf:
            from agent.kernel.probes import may_load_bpf

            if not may_load_bpf():
                raise ProbeError("eBPF probes need root (or CAP_BPF+CAP_PERFMON+CAP_SYS_RESOURCE): "
                                 "run with sudo, or pass --no-ebpf for a degraded run")

    def validate_checks(self) -> None:
        """--check ids or prefixes the catalogue knows (InputError before anything runs)."""
        if self.checks:
            import conformance

            conformance.select_checks(conformance.load_catalogue(), self.checks)

    def otlp_address(self) -> tuple[str, int]:
        """The receiver's (host, port): --otlp-listen, else 4318 for a running SUT, a free port for --exec."""
        default = ANY_LOOPBACK_PORT if self.exec_cmd else DEFAULT_OTLP_LISTEN
        return parse_listen(self.otlp_listen or default, "--otlp-listen", DEFAULT_OTLP_LISTEN)

    def otlp_grpc_address(self) -> tuple[str, int] | None:
        """The OTLP/gRPC receiver's (host, port), None unless --otlp-grpc-listen is given."""
        if not self.otlp_grpc_listen:
            return None
        return parse_listen(self.otlp_grpc_listen, "--otlp-grpc-listen", "127.0.0.1:4317")

    def sink_address(self) -> tuple[str, int]:
        return parse_listen(self.sink_listen or ANY_LOOPBACK_PORT, "--sink-listen", "127.0.0.1:8099")

    def url_plan(self) -> UrlPlan:
        """Where the requests go: --url's path prefixes every scenario path, or (no scenario,
        no --path) is the load path itself (agent.urlpath)."""
        return plan_url(self.url, bool(self.scenario_file is not None or self.scenario or self.paths))

    def resolved_scenario(self) -> dict:
        """The validated scenario as stored in RunMeta.scenario (InputError when malformed)."""
        if self.scenario_file is not None:
            return scenario_mod.from_file(self.scenario_file, catalog=self.catalog, metrics_url=self.metrics_url)
        if self.scenario:
            return scenario_mod.from_inline(self.scenario, catalog=self.catalog, metrics_url=self.metrics_url)
        paths = self.paths or [self.url_plan().load_path or "/"]
        return scenario_mod.from_paths(paths, catalog=self.catalog, metrics_url=self.metrics_url)

    def metrics_url_for(self, scenario: dict) -> str | None:
        """--metrics-url, else the scenario's metrics_path under --url, else None (no scrapes)."""
        if self.metrics_url or not scenario["metrics_path"]:
            return self.metrics_url
        return self.url_plan().base_url + scenario["metrics_path"]


@dataclass
class RunResult:
    run_dir: Path
    report_path: Path
    report: dict
    exit_code: int


def now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_dir(out_dir: Path) -> tuple[str, Path]:
    run_id = str(uuid.uuid4())
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(out_dir).resolve() / "runs" / f"{stamp}-{run_id[:8]}"  # absolute: reports name it
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_id, run_dir


Progress = Callable[[str], None]


def run(cfg: RunConfig, progress: Progress = lambda msg: None) -> RunResult:
    """Run the whole conformance run; always records what it collected and detaches probes."""
    cfg.validate()
    scenario = cfg.resolved_scenario()
    metrics_url = cfg.metrics_url_for(scenario)
    if metrics_url:
        host_port(metrics_url)
    run_id, run_dir = new_run_dir(cfg.out_dir)
    writer = EvidenceWriter(run_dir)
    name, _, version = cfg.profile.rpartition("-")
    meta = RunMeta(run_id=run_id, started_at=now_rfc3339(), tool_version=__version__, host=host_info(),
                   target={"url": cfg.url, "metrics_url": metrics_url or "",
                           "base_url": cfg.url_plan().base_url, "base_path": cfg.url_plan().prefix},
                   profile={"name": name, "version": version},
                   requests_sent=0, concurrency=cfg.concurrency, ebpf=not cfg.no_ebpf,
                   capture_bytes=cfg.capture_bytes, scenario=scenario)
    if scenario["errcodes_error"]:
        progress(f"the errcode catalogue does not parse ({scenario['errcodes_error']}); EC-005 will fail")
    if cfg.no_ebpf:
        meta.degraded_reason = "--no-ebpf: kernel truth was not collected"
    writer.meta(meta)
    try:
        with contextlib.ExitStack() as stack:
            _collect(cfg, meta, writer, stack, progress, metrics_url)
    finally:
        meta.finished_at = now_rfc3339()
        writer.meta(meta)
        writer.close()
    progress("judging the evidence")
    return judge(run_dir, cfg.out_dir, junit=cfg.junit, checks=cfg.checks)


def _start_probes(cfg: RunConfig, meta: RunMeta, writer: EvidenceWriter, stack: contextlib.ExitStack,
                  progress: Progress):
    """The KernelCollector, or None in degraded mode (--no-ebpf, or probes failed to load as root)."""
    if cfg.no_ebpf:
        return None
    from agent.kernel import KernelCollector

    progress("compiling and attaching eBPF probes")
    t0 = time.monotonic()
    collector = KernelCollector(writer, capture_bytes=cfg.capture_bytes, ringbuf_pages=cfg.ringbuf_pages,
                                map_entries=cfg.max_connections, cgroup=cfg.cgroup)
    stack.callback(collector.stop)  # registered before start: detached on every path
    try:
        collector.start()
    except ProbeError as e:
        # Root, yet this kernel will not load the probes (no BPF, no tracefs, a container):
        # SPEC §3 degraded mode: carry on without kernel truth, and say so loudly.
        meta.ebpf = False
        meta.degraded_reason = f"eBPF probes could not be loaded ({e}); kernel truth was not collected"
        meta.extra["probe_error"] = str(e)
        log.warning("DEGRADED MODE: %s", meta.degraded_reason)
        progress(f"DEGRADED MODE, no kernel truth: {meta.degraded_reason}")
        writer.meta(meta)
        return None
    meta.extra["probe_attach_s"] = round(time.monotonic() - t0, 3)
    # Unwinds before collector.stop (LIFO), after the SUT stops: on success, error and interrupt.
    stack.callback(_keep_kernel_evidence, collector, meta)
    return collector


def _keep_kernel_evidence(collector, meta: RunMeta) -> None:
    """Write what the kernel saw (kernel.jsonl) and its counters (meta.kernel_stats) on every
    path: a failed or interrupted run keeps its kernel evidence. Never masks the run's error."""
    try:
        collector.finish()
    except Exception as e:  # noqa: BLE001 - the run's own outcome matters more
        log.warning("kernel requests could not be written: %s", e)
        log.debug("collector.finish failed", exc_info=True)
    try:
        meta.kernel_stats = collector.stats()
        meta.clock = collector.clock_info()
    except Exception as e:  # noqa: BLE001
        log.warning("kernel counters could not be read: %s", e)
        log.debug("collector.stats failed", exc_info=True)


def _listen(server, option: str, addr: tuple[str, int], points: str) -> None:
    """Start a receiver or sink; a busy or forbidden address is one line naming the option."""
    try:
        server.start()
    except ObsconformError as e:
        cause = e.__cause__
        why = getattr(cause, "strerror", None) or cause or e
        raise InputError(f"{option} {addr[0]}:{addr[1]}: cannot listen ({why}); free that port or give "
                         f"{option} another HOST:PORT ({points} must point there)") from e


def _start_grpc_receiver(cfg: RunConfig, meta: RunMeta, receiver, stack: contextlib.ExitStack):
    """With --otlp-grpc-listen, an OTLP/gRPC front end feeding ``receiver``; else None."""
    addr = cfg.otlp_grpc_address()
    if addr is None:
        return None
    from agent.otlp_grpc import OtlpGrpcReceiver

    grpc_receiver = OtlpGrpcReceiver(receiver, *addr)
    _listen(grpc_receiver, "--otlp-grpc-listen", addr, "the SUT's OTEL_EXPORTER_OTLP_ENDPOINT (protocol grpc)")
    stack.callback(grpc_receiver.stop)
    meta.target["otlp_grpc_endpoint"] = grpc_receiver.endpoint
    return grpc_receiver


def _collect(cfg: RunConfig, meta: RunMeta, writer: EvidenceWriter, stack: contextlib.ExitStack,
             progress: Progress, metrics_url: str | None) -> None:
    from agent.downstream import DownstreamSink
    from agent.driver import LoadDriver
    from agent.otlp import OtlpReceiver
    from agent.otlp_decode import json_log_line
    from agent.phaserun import health_probe, run_phases
    from agent.phases import plan as plan_phases
    from agent.scrape import NO_ENDPOINT, Scraper

    from agent.targets import resolve as resolve_target

    host, port = host_port(cfg.url)
    target = None if cfg.exec_cmd else resolve_target(cfg.pid, cfg.port, cfg.cgroup)  # fails fast
    receiver = OtlpReceiver(writer, *cfg.otlp_address())
    _listen(receiver, "--otlp-listen", cfg.otlp_address(), "the SUT's OTEL_EXPORTER_OTLP_ENDPOINT")
    stack.callback(receiver.stop)
    grpc_receiver = _start_grpc_receiver(cfg, meta, receiver, stack)
    # An --exec SUT exports over gRPC when that receiver is on (SPEC §7), else OTLP/HTTP.
    sut_otlp = (grpc_receiver.endpoint, "grpc") if grpc_receiver else (receiver.endpoint, "http/protobuf")
    sink = DownstreamSink(writer, *cfg.sink_address())
    _listen(sink, "--sink-listen", cfg.sink_address(), "the SUT's downstream URL")
    stack.callback(sink.stop)
    meta.target.update({"otlp_endpoint": receiver.endpoint, "downstream_url": sink.url})
    progress(f"OTLP receiver at {receiver.endpoint}; downstream sink at {sink.url}"
             + (f"; OTLP/gRPC receiver at {grpc_receiver.endpoint}" if grpc_receiver else ""))

    collector = _start_probes(cfg, meta, writer, stack, progress)

    sut = None
    export_delay_s: float | None = None
    if cfg.exec_cmd:
        def on_line(line: str) -> None:
            rec = json_log_line(line)
            if rec is not None:
                writer.logs([rec])

        env = otel_environment(dict(os.environ), sut_otlp[0], sink.url, protocol=sut_otlp[1])
        export_delay_s = span_export_delay_s(env)
        sut = LaunchedSut(cfg.exec_cmd, env, writer.run_dir / "sut.log", on_line=on_line)
        stack.callback(sut.stop)
        meta.target.update({"exec": cfg.exec_cmd, "pid": sut.pid})
        if collector:
            collector.add_target(sut.pid)
        sut.release()
        progress(f"started the SUT (pid {sut.pid}); waiting for {host}:{port}")
        meta.extra["sut_ready_s"] = round(sut.wait_ready(host, port), 3)
    else:
        meta.target.update(target.describe)
        delays = [span_export_delay_s(process_environ(pid)) for pid in target.roots]
        export_delay_s = max((d for d in delays if d is not None), default=None)
        if collector:
            for root in target.roots:  # a cgroup target is selected in the kernel alone
                collector.add_target(root)
        if not tcp_open(host, port):
            raise ObsconformError(f"nothing answers on {host}:{port}; check --url and that the SUT is running")

    scenario = meta.scenario
    if scenario["health_path"]:
        meta.extra["health"] = health = health_probe(cfg.url_plan().base_url, scenario["health_path"])
        if health["status"] is None or not 200 <= health["status"] < 300:
            meta.notes.append(f"health probe GET {health['path']} answered "
                              f"{health['status'] or health['error']}")

    plan = plan_phases(scenario, requests=cfg.requests, concurrency=cfg.concurrency, sink_url=sink.url)
    meta.notes += plan.notes
    sizes: dict[str, int] = {}
    for p in plan.phases:
        sizes[p.name] = sizes.get(p.name, 0) + len(p.requests)
    meta.extra["phases"] = sizes
    scraper = Scraper(metrics_url, writer) if metrics_url else None
    driver = LoadDriver(cfg.url_plan().base_url, writer)
    planned = targets_sent((r.method, driver.target(r.path)) for p in plan.phases for r in p.requests)
    progress(f"sending to {cfg.url_plan().origin}: {_listed(*planned)}")
    records = run_phases(plan, driver, scraper, progress)
    if scraper is not None and scraper.scrapes and scraper.scrapes[0].status in NO_ENDPOINT:
        meta.notes.append(f"no /metrics endpoint: {metrics_url} answered "
                          f"{scraper.scrapes[0].error}; it was not scraped again")
    meta.requests_sent = len(records)
    meta.target["targets_sent"], meta.target["targets_distinct"] = \
        targets_sent((r.method, r.path) for r in records)
    failed = sum(1 for r in records if r.status is None)
    if failed == len(records):
        raise ObsconformError(f"none of the {len(records)} requests got a response from {cfg.url}: "
                              f"{records[0].error}")
    if sut is not None and sut.exited() is not None:
        raise ObsconformError(f"the SUT exited with code {sut.exited()} during the run; see sut.log")

    progress("settling: waiting for telemetry to stop changing")
    t0 = time.monotonic()
    quiet = receiver.wait_quiet(cfg.settle_quiet_s, cfg.settle_timeout_s)
    # A batch span processor exports on its own timer, not when the SUT goes quiet: give it a
    # full period after the last request before the SUT is stopped. Its exit flush is not
    # enough: uvicorn re-raises SIGTERM after its graceful shutdown, so no atexit hook runs.
    left = (export_delay_s or 0.0) + EXPORT_MARGIN_S - (time.monotonic() - t0)
    if export_delay_s is not None and left > 0:
        quiet = receiver.wait_quiet(left, cfg.settle_timeout_s) and quiet
    if sut is not None:
        # A graceful stop makes batch exporters flush what they still hold.
        meta.extra["sut_exit_code"] = sut.stop()
        quiet = receiver.wait_quiet(cfg.settle_quiet_s, cfg.settle_timeout_s) and quiet
    meta.settle = {"waited_s": round(time.monotonic() - t0, 3), "quiet": quiet, **receiver.counts(),
                   "receivers": receiver.transports("http", *(["grpc"] if grpc_receiver else []))}
    if not quiet:
        meta.notes.append("telemetry was still arriving when the settle phase timed out")


def _listed(targets: dict[str, int], distinct: int, shown: int = 3) -> str:
    """``GET /a x180, GET /b x20 (+4 more)``: a progress line's view of targets_sent."""
    items = [f"{t} x{n}" for t, n in list(targets.items())[:shown]]
    more = distinct - len(items)
    return ", ".join(items) + (f" (+{more} more)" if more > 0 else "")


def judge(run_dir: Path, out_dir: Path, *, junit: Path | None = None, checks: list[str] | None = None) -> RunResult:
    """Evaluate a run directory and write its report (also used by `analyze`)."""
    import conformance

    evidence = load_evidence(Path(run_dir).resolve())
    results = conformance.evaluate(evidence, select=checks)
    report = conformance.build_report(evidence, results, tool_version=__version__)
    report_path = run_dir / REPORT_NAME
    conformance.write_report(report, report_path)
    # The latest report also lands at a fixed place under the output directory for CI.
    conformance.write_report(report, Path(out_dir) / REPORT_NAME)
    if junit is not None:
        from agent.evidence import write_text_atomic

        write_text_atomic(junit, conformance.render_junit(report))
    return RunResult(run_dir, report_path, report, conformance.exit_code(report["summary"]["verdict"]))
