"""The Node.js stack of the compatibility matrix: Express 5 on node:http, traced by the
OpenTelemetry Node SDK with the auto-instrumentations (examples/realworld/node), request
metrics from express-prom-bundle; clean, with every 3rd span of GET /items/... dropped,
and with W3C propagation configured away (OTEL_PROPAGATORS=b3). Its npm packages are
installed by the stack's prepare() before the first run (CI starts from a clean clone)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from tests.e2e.conftest import ROOT
from tests.realworld.matrix import SERVICE_COUNT, MatrixRun, NotPass, Stack

NODE_DIR = ROOT / "examples" / "realworld" / "node"
STAMP_NAME = ".obsconform-installed"  # in node_modules/: gone with it
NPM_TIMEOUT_S = 600
NPM_ARGS = ("install", "--no-audit", "--no-fund", "--no-package-lock")
DROP_EVERY = 3


class NpmInstallError(RuntimeError):
    """npm could not install a service's packages; the message carries npm's own."""


def install_signature(directory: Path) -> str:
    """What node_modules was installed for: package.json's bytes and the Node version."""
    node = shutil.which("node")
    if node is None:
        raise NpmInstallError("node not found on PATH: the Node.js stacks need Node.js 20 "
                              "with npm")
    version = subprocess.run([node, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    digest = hashlib.sha256((directory / "package.json").read_bytes()).hexdigest()
    return f"{digest} node {version}\n"


def npm_install(directory: Path, timeout_s: float = NPM_TIMEOUT_S) -> bool:
    """``npm install`` in ``directory`` unless its node_modules was installed for this very
    package.json and Node version (a stamp in node_modules); True when npm ran.

    Concurrent callers wait on a lock on package.json rather than install twice. No lock file
    is written: one would record registry addresses, and package.json pins every version."""
    stamp = directory / "node_modules" / STAMP_NAME
    with open(directory / "package.json", "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        signature = install_signature(directory)
        if stamp.is_file() and stamp.read_text(encoding="utf-8") == signature:
            return False
        npm = shutil.which("npm")
        if npm is None:
            raise NpmInstallError("npm not found on PATH: the Node.js stacks need Node.js 20 "
                                  "with npm")
        try:
            p = subprocess.run([npm, *NPM_ARGS], cwd=directory, capture_output=True, text=True,
                               timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise NpmInstallError(f"npm install in {directory} did not finish in "
                                  f"{timeout_s:.0f} s") from e
        if p.returncode != 0:
            said = (p.stderr.strip() or p.stdout.strip())[-4000:]
            raise NpmInstallError(f"npm install in {directory} failed (exit {p.returncode}):\n"
                                  f"{said}")
        stamp.parent.mkdir(exist_ok=True)  # npm makes none for a package without dependencies
        tmp = stamp.with_name(stamp.name + ".tmp")
        tmp.write_text(signature, encoding="utf-8")
        os.replace(tmp, stamp)
        return True


def _prepare() -> None:
    npm_install(NODE_DIR)


def _arg(path: Path) -> str:
    """A path as one --exec argument that survives str.format (the {placeholders})."""
    return shlex.quote(str(path)).replace("{", "{{").replace("}", "}}")


# --- What the stack does not pass clean, and why: it does not implement the errortrace
# profile, and prom-client exposes no exemplars. ---
EC = ("EC-001", "EC-002", "EC-003", "EC-004", "EC-005")
CLEAN = (
    NotPass(EC, "skip", "no errcode catalogue: the service does not implement the errortrace "
            "profile"),
    NotPass(("BC-001",), "fail", "the service does not forward X-Biz-Code on its outbound "
            "fetch (the undici instrumentation propagates traceparent only)"),
    NotPass(("BC-002",), "skip", "neither outbound calls nor spans carry any bizCode: nothing "
            "can leak (BC-001/BC-003 judge the missing layer)"),
    NotPass(("BC-003",), "fail", "SHOULD: no span carries biz.code"),
    NotPass(("AL-002",), "skip", "no exemplars: express-prom-bundle does not turn on "
            "prom-client's exemplars (and they need the OpenMetrics registry), and the SDK's "
            "OTLP histogram points carry none"),
    NotPass(("AL-003",), "skip", "no OTLP log records and no JSON log lines: nothing to align "
            "(no logging library is instrumented; console output is plain text)"),
)
CLEAN_COUNTS = {
    "KT-001.observed.missing": 0, "KT-001.observed.duplicates": 0,
    # the tc phase's 2 valid-unsampled requests rightly have no span
    "KT-001.observed.unsampled_without_span_excluded": 2,
    "KT-002.observed.prometheus.metric": "http_request_duration_seconds_count",
    "KT-002.observed.prometheus.mismatched_series": 0,
    "KT-002.observed.otlp.metric": "http.server.request.duration",
    "KT-002.observed.otlp.mismatched_series": 0,
    "measurements.kernel.agent_drops": 0,
}
DROP = (
    NotPass(("KT-001",), "fail", f"every {DROP_EVERY}rd server span of the driver's "
            "GET /items/... requests dropped before export; KT-001 counts exactly the spans "
            "the service says it dropped", finding=False),
    NotPass(("TC-005",), "fail", "the dropped server spans' children (the express and router "
            "middleware spans) name a parent that was never exported: orphans, a true "
            "consequence of the loss", finding=False),
)
DROP_COUNTS = {"KT-001.observed.missing": SERVICE_COUNT + "dropped_server_spans",
               "KT-001.observed.duplicates": 0, "measurements.kernel.agent_drops": 0}
B3 = (
    NotPass(("TC-001",), "fail", "OTEL_PROPAGATORS=b3 makes the SDK read and write B3 headers "
            "only: no server span continues the inbound traceparent", finding=False),
    NotPass(("TC-002",), "fail", "with the B3 propagator the outbound fetch carries b3, not "
            "traceparent", finding=False),
)
# KT-001 does not trust the propagation it judges: every span is joined to its request by
# the driver's User-Agent marker, none is lost; with the sampled flag ignored, the tc
# phase's unsampled requests get spans too.
B3_COUNTS = {"KT-001.observed.missing": 0, "KT-001.observed.duplicates": 0,
             "KT-001.observed.joined_by_traceparent": 0,
             "KT-001.observed.unsampled_without_span_excluded": 0,
             "measurements.kernel.agent_drops": 0}

STACKS = [
    Stack(
        name="node-express",
        title="Express 5 on node:http (Node.js 20)",
        command="{node} --require " + _arg(NODE_DIR / "otel.js") + " " +
                _arg(NODE_DIR / "app.js") + " --port {port}",
        scenario=ROOT / "examples" / "realworld" / "node.scenario.json",
        tracing="@opentelemetry/sdk-node + auto-instrumentations-node (http, express, undici)",
        exporter="express-prom-bundle (prom-client)",
        packages=(("npm", "express"), ("npm", "@opentelemetry/sdk-node"),
                  ("npm", "@opentelemetry/auto-instrumentations-node"),
                  ("npm", "@opentelemetry/instrumentation-http"),
                  ("npm", "express-prom-bundle"), ("npm", "prom-client")),
        prepare=_prepare,
        runs=(
            MatrixRun("clean", {}, CLEAN, CLEAN_COUNTS, {}, exit_code=2,
                      description="as the sdk-node docs set it up, everything from OTEL_*"),
            MatrixRun("drop-spans", {"REALWORLD_FAULT": f"drop-spans:{DROP_EVERY}"},
                      CLEAN + DROP, DROP_COUNTS, {}, exit_code=2,
                      description=f"every {DROP_EVERY}rd server span of GET /items/... "
                                  "dropped by a span processor"),
            MatrixRun("propagator-b3", {"OTEL_PROPAGATORS": "b3"}, CLEAN + B3, B3_COUNTS,
                      exit_code=2, description="OTEL_PROPAGATORS=b3: W3C trace context "
                                               "configured away"),
        ),
    ),
]
