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

from agent import __version__
from agent.errors import InputError, ObsconformError, ProbeError
from agent.evidence import EvidenceWriter, RunMeta, load_evidence
from agent.hostinfo import host_info
from agent.sut import LaunchedSut, check_pid, host_port, otel_environment, tcp_open

log = logging.getLogger(__name__)

REPORT_NAME = "CNCF-compliance-report.json"
DEFAULT_SETTLE_QUIET_S = 1.0
DEFAULT_SETTLE_TIMEOUT_S = 15.0


@dataclass
class RunConfig:
    url: str
    exec_cmd: str | None = None
    pid: int | None = None
    metrics_url: str | None = None
    paths: list[str] = field(default_factory=lambda: ["/"])
    requests: int = 200
    concurrency: int = 4
    out_dir: Path = Path("reports")
    junit: Path | None = None
    capture_bytes: int = 1024
    no_ebpf: bool = False
    checks: list[str] | None = None
    settle_quiet_s: float = DEFAULT_SETTLE_QUIET_S
    settle_timeout_s: float = DEFAULT_SETTLE_TIMEOUT_S
    scenario: dict = field(default_factory=dict)

    def validate(self) -> None:
        if sum(x is not None for x in (self.exec_cmd, self.pid)) != 1:
            raise InputError("give exactly one target: --exec CMD or --pid PID")
        host_port(self.url)
        if self.metrics_url:
            host_port(self.metrics_url)
        if self.requests < 1:
            raise InputError("--requests must be at least 1")
        if not 1 <= self.concurrency <= 1024:
            raise InputError("--concurrency must be between 1 and 1024")
        if not 256 <= self.capture_bytes <= 4096:
            raise InputError("--capture-bytes must be between 256 and 4096")
        if not self.no_ebpf and os.geteuid() != 0:
            raise ProbeError("eBPF probes need root: run with sudo, or pass --no-ebpf for a degraded run")


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
    run_dir = Path(out_dir) / "runs" / f"{stamp}-{run_id[:8]}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_id, run_dir


Progress = Callable[[str], None]


def run(cfg: RunConfig, progress: Progress = lambda msg: None) -> RunResult:
    """Run the whole conformance run; always records what it collected and detaches probes."""
    cfg.validate()
    run_id, run_dir = new_run_dir(cfg.out_dir)
    writer = EvidenceWriter(run_dir)
    meta = RunMeta(run_id=run_id, started_at=now_rfc3339(), tool_version=__version__, host=host_info(),
                   target={"url": cfg.url, "metrics_url": cfg.metrics_url or ""},
                   requests_sent=0, concurrency=cfg.concurrency, ebpf=not cfg.no_ebpf,
                   capture_bytes=cfg.capture_bytes, scenario=cfg.scenario)
    if cfg.no_ebpf:
        meta.degraded_reason = "--no-ebpf: kernel truth was not collected"
    writer.meta(meta)
    try:
        with contextlib.ExitStack() as stack:
            _collect(cfg, meta, writer, stack, progress)
    finally:
        meta.finished_at = now_rfc3339()
        writer.meta(meta)
        writer.close()
    progress("judging the evidence")
    return judge(run_dir, cfg.out_dir, junit=cfg.junit, checks=cfg.checks)


def _collect(cfg: RunConfig, meta: RunMeta, writer: EvidenceWriter, stack: contextlib.ExitStack,
             progress: Progress) -> None:
    from agent.downstream import DownstreamSink
    from agent.driver import LoadDriver, load_plan
    from agent.otlp import OtlpReceiver
    from agent.otlp_decode import json_log_line
    from agent.scrape import Scraper

    host, port = host_port(cfg.url)
    receiver = OtlpReceiver(writer)
    receiver.start()
    stack.callback(receiver.stop)
    sink = DownstreamSink(writer)
    sink.start()
    stack.callback(sink.stop)

    collector = None
    if not cfg.no_ebpf:
        from agent.kernel import KernelCollector

        progress("compiling and attaching eBPF probes")
        t0 = time.monotonic()
        collector = KernelCollector(writer, capture_bytes=cfg.capture_bytes)
        stack.callback(collector.stop)  # registered before start: detached on every path
        collector.start()
        meta.extra["probe_attach_s"] = round(time.monotonic() - t0, 3)

    sut = None
    if cfg.exec_cmd:
        def on_line(line: str) -> None:
            rec = json_log_line(line)
            if rec is not None:
                writer.logs([rec])

        env = otel_environment(dict(os.environ), receiver.endpoint, sink.url)
        sut = LaunchedSut(cfg.exec_cmd, env, writer.run_dir / "sut.log", on_line=on_line)
        stack.callback(sut.stop)
        meta.target.update({"exec": cfg.exec_cmd, "pid": sut.pid})
        if collector:
            collector.add_target(sut.pid)
        sut.release()
        progress(f"started the SUT (pid {sut.pid}); waiting for {host}:{port}")
        meta.extra["sut_ready_s"] = round(sut.wait_ready(host, port), 3)
    else:
        check_pid(cfg.pid)
        meta.target["pid"] = cfg.pid
        if collector:
            collector.add_target(cfg.pid)
        if not tcp_open(host, port):
            raise ObsconformError(f"nothing answers on {host}:{port}; check --url and that the SUT is running")

    scraper = Scraper(cfg.metrics_url, writer) if cfg.metrics_url else None
    if scraper:
        before = scraper.scrape("before", openmetrics=False)
        if before.error:
            raise ObsconformError(f"cannot scrape {cfg.metrics_url}: {before.error}; check --metrics-url")
        scraper.scrape("before", openmetrics=True)

    plan = load_plan(cfg.requests, cfg.paths, phase="load")
    progress(f"sending {cfg.requests} requests at concurrency {cfg.concurrency}")
    driver = LoadDriver(cfg.url, writer)
    records = driver.run(plan, cfg.concurrency)
    meta.requests_sent = len(records)
    failed = sum(1 for r in records if r.status is None)
    if failed == len(records):
        raise ObsconformError(f"none of the {len(records)} requests got a response from {cfg.url}: "
                              f"{records[0].error}")
    if sut is not None and sut.exited() is not None:
        raise ObsconformError(f"the SUT exited with code {sut.exited()} during the run; see sut.log")

    if scraper:
        scraper.scrape("after", openmetrics=False)
        scraper.scrape("after", openmetrics=True)

    progress("settling: waiting for telemetry to stop changing")
    t0 = time.monotonic()
    quiet = receiver.wait_quiet(cfg.settle_quiet_s, cfg.settle_timeout_s)
    if sut is not None:
        # A graceful stop makes batch exporters flush what they still hold.
        meta.extra["sut_exit_code"] = sut.stop()
        quiet = receiver.wait_quiet(cfg.settle_quiet_s, cfg.settle_timeout_s) and quiet
    meta.settle = {"waited_s": round(time.monotonic() - t0, 3), "quiet": quiet, **receiver.counts()}
    if not quiet:
        meta.notes.append("telemetry was still arriving when the settle phase timed out")

    if collector is not None:
        collector.finish()
        meta.kernel_stats = collector.stats()
        meta.clock = collector.clock_info()


def judge(run_dir: Path, out_dir: Path, *, junit: Path | None = None, checks: list[str] | None = None) -> RunResult:
    """Evaluate a run directory and write its report (also used by `analyze`)."""
    import conformance

    evidence = load_evidence(run_dir)
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
