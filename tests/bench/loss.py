"""Loss counts are exact: 100k requests to the reference service, one span in N dropped on purpose.

A real run (agent.runner.run: eBPF, the built-in driver, the OTLP receiver, the scraper)
against the reference service with FAULT_DROP_SPANS=every:N. The service counts what it
dropped itself (refservice_fault_dropped_spans_total, in the run's last scrape); the run
must report exactly that many missing spans (KT-001), exactly as many kernel requests as
the driver sent and the Prometheus histogram counted, and no loss of its own.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from agent.evidence import load_evidence
from agent.runner import RunConfig, run
from tests.ports import free_port

DROPPED = "refservice_fault_dropped_spans"


def _service_dropped(run_dir: Path) -> int:
    """The service's own count of dropped spans, from the run's last successful scrape."""
    ev = load_evidence(run_dir)
    for scrape in reversed(ev.scrapes):
        if scrape.status != 200:
            continue
        parse = (openmetrics_families if "openmetrics" in scrape.content_type
                 else text_string_to_metric_families)
        for fam in parse(ev.scrape_text(scrape)):
            for sample in fam.samples:
                if sample.name == DROPPED + "_total":
                    return int(sample.value)
    raise RuntimeError(f"no scrape of the run has {DROPPED}_total")


def measure(requests: int = 100_000, every: int = 100, concurrency: int = 8) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    old = os.environ.get("FAULT_DROP_SPANS")
    os.environ["FAULT_DROP_SPANS"] = f"every:{every}"
    try:
        with tempfile.TemporaryDirectory(prefix="obsconform-loss-") as d:
            cfg = RunConfig(url=url, exec_cmd=f"{sys.executable} -m examples.refservice --port {port}",
                            metrics_url=f"{url}/metrics", paths=["/items/1"], requests=requests,
                            concurrency=concurrency, out_dir=Path(d), checks=["KT-001", "KT-002", "KT-007"])
            t0 = time.monotonic()
            result = run(cfg)
            took = time.monotonic() - t0
            dropped = _service_dropped(result.run_dir)
            sent = sum(1 for r in load_evidence(result.run_dir).driver if r.phase == "load")
    finally:
        if old is None:
            os.environ.pop("FAULT_DROP_SPANS", None)
        else:
            os.environ["FAULT_DROP_SPANS"] = old
    m = result.report["measurements"]
    spans, metrics = m["loss"]["spans"], m["loss"]["metrics"]
    verdicts = {c["id"]: c["status"] for c in result.report["checks"]}
    return {
        "requests": requests, "drop_every": every, "concurrency": concurrency, "run_s": round(took, 1),
        "driver_load_requests": sent, "kernel_requests": spans["kernel_requests"],
        "spans_missing_reported": spans["missing"], "spans_dropped_by_service": dropped,
        "span_loss_exact": spans["missing"] == dropped,
        "metric_count": metrics.get("metric_count"), "kernel_count_for_metric": metrics.get("kernel_count"),
        "metric_count_exact": metrics.get("metric_count") == metrics.get("kernel_count"),
        "agent_loss": m["kernel"]["loss"], "checks": verdicts,
    }
