"""The run directory: plain records every collector writes and every check reads.

This is the only meeting point between collection (agent/) and judgement
(conformance/): collectors turn bytes into these dataclasses and append them to the run
directory; ``load_evidence`` reads a directory back so ``obsconform analyze RUN_DIR``
recomputes a report offline with the same result.

Layout of a run directory::

    meta.json            RunMeta (what was targeted, when, how, agent self-stats)
    kernel.jsonl         KernelRequest, one per HTTP request the kernel saw
    spans.jsonl          Span, flattened from OTLP trace exports
    metrics.jsonl        MetricPoint, flattened from OTLP metric exports
    logs.jsonl           LogRecord, from OTLP logs and the SUT's JSON stdout lines
    driver.jsonl         DriverRecord, one per request the load driver sent
    downstream.jsonl     DownstreamRecord, what the downstream sink received
    scrapes.jsonl        Scrape index; the raw bodies are in scrapes/NNNN.txt
    sut.log              the SUT's stdout+stderr (--exec only)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import itertools
import json
import math
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

from agent import jsonl
from agent.errors import ObsconformError

EVIDENCE_VERSION = 1

# Requests the agent itself makes to the SUT (scrapes, health probes) carry this
# User-Agent prefix so that the kernel view can tell them apart from requests under test.
AGENT_USER_AGENT = "obsconform-agent"
# Requests of the load driver carry this one, then a marker unique in the run:
# "obsconform-driver/0.1.0 req/<marker>". Instrumentations record User-Agent on the server
# span (user_agent.original, http.user_agent), so the marker joins a span to its request
# without trusting the SUT's trace-context propagation, which is what the checks judge.
DRIVER_USER_AGENT = "obsconform-driver"
DRIVER_MARKER = " req/"


def driver_marker(user_agent: object) -> str | None:
    """The per-request marker of a driver User-Agent, else None (any other client's)."""
    if type(user_agent) is not str or not user_agent.startswith(DRIVER_USER_AGENT):
        return None
    _, sep, marker = user_agent.partition(DRIVER_MARKER)
    return marker.split(None, 1)[0] if sep and marker else None

META_FILE = "meta.json"
KERNEL_FILE = "kernel.jsonl"
SPANS_FILE = "spans.jsonl"
METRICS_FILE = "metrics.jsonl"
LOGS_FILE = "logs.jsonl"
DRIVER_FILE = "driver.jsonl"
DOWNSTREAM_FILE = "downstream.jsonl"
SCRAPES_FILE = "scrapes.jsonl"
SCRAPES_DIR = "scrapes"
SUT_LOG_FILE = "sut.log"


@dataclass(slots=True)
class KernelRequest:
    """One HTTP/1.x request as the kernel saw it on a target socket.

    ``direction`` is ``server`` (the SUT received it) or ``client`` (the SUT sent it to
    another service). All times are Unix nanoseconds, converted from the monotonic clock.
    """

    id: str  # unique in the run, e.g. "k17"
    conn: str  # unique connection id in the run: "tgid:fd:n"
    seq: int  # 0-based position of the request on its connection
    direction: str  # "server" | "client"
    tgid: int
    tid: int  # thread that read (server) or wrote (client) the request line
    fd: int
    method: str
    target: str  # request-target as sent, e.g. "/items/7?x=1"
    version: str  # "1.1"
    headers: dict[str, list[str]]  # lower-case names → values, in wire order
    headers_complete: bool  # the header block ended inside the captured bytes
    t_req_first: int  # exit of the read (server) / write (client) carrying the request line
    status: int | None = None  # final status (1xx interim responses skipped)
    t_resp_first: int | None = None  # first byte of the final response
    t_resp_last: int | None = None  # last write (server) / read (client) of the response
    req_bytes: int = 0
    resp_bytes: int = 0
    interim_statuses: list[int] = field(default_factory=list)  # e.g. [100]
    parent_request: str | None = None  # client only: id of the inbound request being served
    aborted: bool = False  # connection closed before a final response
    # The other end of the connection as the kernel saw it (server: the client's address
    # from accept; client: the address connected to); "" / 0 when not seen.
    peer_addr: str = ""
    peer_port: int = 0

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def duration_ns(self) -> int | None:
        if self.t_resp_last is None:
            return None
        return self.t_resp_last - self.t_req_first


@dataclass(slots=True)
class Span:
    """One span from the SUT's OTLP trace export, flattened."""

    trace_id: str  # 32 lower-case hex
    span_id: str  # 16 lower-case hex
    parent_span_id: str  # "" for a root span
    name: str
    kind: str  # UNSPECIFIED | INTERNAL | SERVER | CLIENT | PRODUCER | CONSUMER
    start_ns: int
    end_ns: int
    status_code: str = "UNSET"  # UNSET | OK | ERROR
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""
    trace_state: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    received_ns: int = 0  # when the agent's receiver got it (Unix ns)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(slots=True)
class MetricPoint:
    """One data point of an OTLP metric export, flattened."""

    name: str
    kind: str  # sum | gauge | histogram | exponential_histogram | summary
    unit: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""
    start_ns: int = 0
    time_ns: int = 0
    value: float | None = None  # sum / gauge
    count: int | None = None  # histogram
    sum: float | None = None  # histogram
    bucket_bounds: list[float] = field(default_factory=list)
    bucket_counts: list[int] = field(default_factory=list)
    exemplars: list[dict[str, Any]] = field(default_factory=list)  # {value, time_ns, trace_id, span_id}
    monotonic: bool | None = None
    temporality: str = ""  # CUMULATIVE | DELTA | ""
    received_ns: int = 0


@dataclass(slots=True)
class LogRecord:
    """One log record from OTLP logs or a JSON line of the SUT's stdout."""

    source: str  # "otlp" | "stdout"
    time_ns: int = 0
    severity_text: str = ""
    severity_number: int = 0
    body: Any = None
    trace_id: str = ""
    span_id: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    received_ns: int = 0


@dataclass(slots=True)
class DriverRecord:
    """One request the load driver sent and what came back, from the client's view."""

    seq: int
    phase: str  # "load", "tc", "bc", "ec", ...
    method: str
    path: str
    request_headers: dict[str, str]  # as sent (lower-case names)
    trace_id: str  # trace-id of the traceparent sent, "" when none/invalid was sent
    parent_id: str  # parent-id of the traceparent sent
    t_send_ns: int  # Unix ns just before the request was written
    t_recv_ns: int = 0  # Unix ns when the full response was read
    status: int | None = None  # None when no response (see error)
    response_headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    response_body: str = ""  # first 4 KiB, decoded as UTF-8 with replacement
    error: str = ""
    case: str = ""  # scenario case name, e.g. "tc/version-ff"


@dataclass(slots=True)
class DownstreamRecord:
    """One request the downstream sink received (a second witness for outbound calls)."""

    t_ns: int
    method: str
    path: str
    headers: dict[str, list[str]]  # lower-case names
    body: str = ""


@dataclass
class Scrape:
    """One scrape of the SUT's /metrics; the raw body lives in ``file``."""

    seq: int
    phase: str  # "before" | "during" | "after"
    t_ns: int
    url: str
    accept: str  # the Accept header sent
    content_type: str = ""
    status: int | None = None
    file: str = ""  # relative to the run directory
    error: str = ""


@dataclass
class RunMeta:
    """What was run, against what, and the agent's own bookkeeping."""

    run_id: str
    started_at: str  # RFC 3339
    finished_at: str = ""
    evidence_version: int = EVIDENCE_VERSION
    tool_version: str = ""
    host: dict[str, Any] = field(default_factory=dict)  # hostname, kernel, arch, btf, bcc_version
    target: dict[str, Any] = field(default_factory=dict)  # how it was found; pids; url; metrics_url
    profile: dict[str, Any] = field(default_factory=dict)  # name, version, thresholds
    scenario: dict[str, Any] = field(default_factory=dict)
    requests_sent: int = 0
    concurrency: int = 0
    ebpf: bool = True  # False in degraded mode
    degraded_reason: str = ""
    capture_bytes: int = 0
    # Agent self-loss and kernel counters: ring_drops, truncated_captures, map_full,
    # events, blind spots ... (see agent/kernel). Any non-zero loss makes KT inconclusive.
    kernel_stats: dict[str, Any] = field(default_factory=dict)
    # monotonic→realtime conversion: offset_ns, uncertainty_ns, measured at start and end.
    clock: dict[str, Any] = field(default_factory=dict)
    # Settle phase: how long we waited for telemetry to stop changing, and whether it did.
    settle: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evidence:
    """Everything a run collected, as loaded from its directory."""

    run_dir: Path
    meta: RunMeta
    kernel: list[KernelRequest] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    metrics: list[MetricPoint] = field(default_factory=list)
    logs: list[LogRecord] = field(default_factory=list)
    driver: list[DriverRecord] = field(default_factory=list)
    downstream: list[DownstreamRecord] = field(default_factory=list)
    scrapes: list[Scrape] = field(default_factory=list)

    def scrape_text(self, scrape: Scrape) -> str:
        if not scrape.file:
            return ""
        return (self.run_dir / scrape.file).read_text(encoding="utf-8", errors="replace")


T = TypeVar("T")


def to_dict(record: Any) -> dict[str, Any]:
    # Records hold only plain values (str, int, lists, dicts), so a shallow view serialises
    # the same as dataclasses.asdict at a fraction of its cost (the receiver's hot path).
    # The bulk records have __slots__ (no __dict__: 56 bytes less each, 280 MB at a million
    # requests), so each class gets a dict display of its fields (0.25 us a record, where
    # dict(zip(names, attrgetter)) took 0.65).
    return _dict_maker(type(record))(record)


@functools.cache
def _dict_maker(cls: type) -> Any:
    # Field names are identifiers (dataclasses enforces it): the source below is only
    # attribute reads, as dataclasses itself generates __init__.
    body = ", ".join(f"{name!r}: r.{name}" for name in _field_order(cls))
    return eval(f"lambda r: {{{body}}}", {})  # noqa: S307


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


@functools.cache
def _field_order(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a dict, ignoring keys a newer writer added."""
    names = _field_names(cls)
    if names.issuperset(data):  # the usual case: no filtered copy of the record
        return cls(**data)
    return cls(**{k: v for k, v in data.items() if k in names})


def json_safe(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, ±inf from a scrape) as None: strict JSON
    has no such numbers, and many readers reject Python's NaN/Infinity tokens."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def write_json_atomic(path: Path, data: Any) -> None:
    """Write strict JSON (non-finite numbers as null) to ``path`` through a temp file and
    rename, so readers never see half."""
    text = json.dumps(json_safe(data), indent=2, default=str, allow_nan=False)
    write_text_atomic(path, text + "\n")


_encode_line = json.JSONEncoder(separators=(",", ":"), default=str).encode  # one encoder, reused


class EvidenceWriter:
    """Appends records to a run directory; safe to call from several threads."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._files: dict[str, Any] = {}
        self._scrape_seq = 0

    def _append(self, name: str, records: Iterable[Any]) -> int:
        # Serialised in batches: a million kernel requests must not be held twice as text.
        n = 0
        with self._lock:
            f = self._files.get(name)
            it = iter(records)
            while batch := list(itertools.islice(it, 4096)):
                if f is None:
                    f = self._files[name] = open(self.run_dir / name, "a", encoding="utf-8")
                f.write("".join(_encode_line(to_dict(r)) + "\n" for r in batch))
                n += len(batch)
            if n:
                f.flush()
        return n

    def kernel(self, records: Iterable[KernelRequest]) -> int:
        return self._append(KERNEL_FILE, records)

    def spans(self, records: Iterable[Span]) -> int:
        return self._append(SPANS_FILE, records)

    def metrics(self, records: Iterable[MetricPoint]) -> int:
        return self._append(METRICS_FILE, records)

    def logs(self, records: Iterable[LogRecord]) -> int:
        return self._append(LOGS_FILE, records)

    def driver(self, records: Iterable[DriverRecord]) -> int:
        return self._append(DRIVER_FILE, records)

    def downstream(self, records: Iterable[DownstreamRecord]) -> int:
        return self._append(DOWNSTREAM_FILE, records)

    def scrape(self, scrape: Scrape, body: bytes | None) -> Scrape:
        """Store a scrape's raw body under scrapes/ and index it; returns it with seq/file set."""
        with self._lock:
            scrape.seq = self._scrape_seq
            self._scrape_seq += 1
        if body is not None:
            rel = f"{SCRAPES_DIR}/{scrape.seq:04d}-{scrape.phase}.txt"
            (self.run_dir / SCRAPES_DIR).mkdir(exist_ok=True)
            (self.run_dir / rel).write_bytes(body)
            scrape.file = rel
        self._append(SCRAPES_FILE, [scrape])
        return scrape

    def meta(self, meta: RunMeta) -> None:
        write_json_atomic(self.run_dir / META_FILE, to_dict(meta))

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()


# Per record type: fields whose values repeat across records, read as one shared object per
# distinct value (agent.jsonl.SharedValues): (string or int fields, fields holding dicts of
# strings, fields whose whole value repeats).
_REPEATING: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "KernelRequest": (("conn", "direction", "method", "target", "version", "tgid", "tid", "peer_addr",
                       "peer_port"),
                      ("headers",), ("interim_statuses",)),
    "Span": (("name", "kind", "status_code", "scope"), ("attributes",),
             ("attributes", "resource", "events")),
    "MetricPoint": (("name", "kind", "unit", "scope", "temporality"), ("attributes",),
                    ("attributes", "resource")),
    "LogRecord": (("source", "severity_text", "body"), ("attributes",), ("attributes", "resource")),
    "DriverRecord": (("phase", "method", "path", "case", "error", "response_body"),
                     ("request_headers", "response_headers"), ("response_headers",)),
    "DownstreamRecord": (("method", "path", "body"), ("headers",), ()),
}


# Per record type: string fields unique to a request but repeated by another file (a span's
# trace-id in its log line and driver record), shared across files (agent.jsonl.CrossFile).
# The traceparent header of the ``nested`` header dicts is shared that way too.
_ACROSS: dict[str, tuple[str, ...]] = {
    "Span": ("trace_id", "span_id", "parent_span_id"),
    "LogRecord": ("trace_id", "span_id"),
    "DriverRecord": ("trace_id", "parent_id"),
}


def _read_jsonl(path: Path, cls: type[T], across: jsonl.CrossFile | None = None) -> Iterator[T]:
    """The records of a JSONL file, decoded a chunk of lines at a time (see agent.jsonl); a
    chunk that is not one JSON object per line is read line by line, so errors name the line."""
    if not path.exists():
        return
    shared = jsonl.SharedValues(*_REPEATING.get(cls.__name__, ((), (), ())),
                                ids=_ACROSS.get(cls.__name__, ()), across=across)
    order = _field_order(cls)
    with open(path, encoding="utf-8") as f:
        for first, lines in jsonl.chunks(f):
            data = jsonl.decode(lines)
            if data is not None:
                shared.share(data)
                # The writer's records have every field in order: positional is 2x faster.
                # Compared with the chunk's own key strings (one per key in a chunk), the
                # check is by identity.
                keys = tuple(data[0]) if data else ()
                expect = keys if keys == order else order
                try:
                    yield from [cls(*d.values()) if tuple(d) == expect else from_dict(cls, d)
                                for d in data]
                    continue
                except (ValueError, TypeError):
                    pass  # read line by line below to name the line
            for n, line in enumerate(lines, first):
                line = line.strip()
                if not line:
                    continue
                try:
                    data = json.loads(line)
                    if type(data) is not dict:
                        raise TypeError(f"a JSON {type(data).__name__}, not an object")
                    yield from_dict(cls, data)
                except (ValueError, TypeError) as e:
                    raise EvidenceError(f"{path}:{n}: not a valid {cls.__name__} record ({e})") from e


class EvidenceError(ObsconformError, ValueError):
    """A run directory is missing or malformed (a ValueError too, for older callers)."""


def load_meta(run_dir: Path) -> RunMeta:
    path = Path(run_dir) / META_FILE
    if not path.exists():
        raise EvidenceError(f"{run_dir} is not a run directory: {META_FILE} is missing; give "
                            "a directory a run wrote (e.g. reports/runs/<run id>)")
    try:
        return from_dict(RunMeta, json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as e:
        raise EvidenceError(f"{path}: unreadable ({e})") from e


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of acyclic records are built: each
    full collection walks every object alive, which cost 40% of loading a large run.

    On the way out, what was built moves to the oldest generation (freeze, then unfreeze)
    instead of being walked by the first young collection after ``gc.enable``: that walk
    alone took 10% of analysing a million requests. Nothing is exempted from collection:
    cycles among these objects are still found by the next full collection.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if was:
            gc.enable()


def load_evidence(run_dir: Path) -> Evidence:
    """Read a run directory back. The records are read-only: values that repeat across
    records are one shared object (strings, header value lists, resources, empty lists; see
    agent.jsonl), so a change to one record's list or dict would show in others. Trace and
    span ids and traceparents are one string for all the files that repeat them."""
    run_dir = Path(run_dir)
    across = jsonl.CrossFile()  # dropped on return: it only finds the repeats
    with gc_paused():
        return Evidence(
            run_dir=run_dir,
            meta=load_meta(run_dir),
            kernel=list(_read_jsonl(run_dir / KERNEL_FILE, KernelRequest, across)),
            spans=list(_read_jsonl(run_dir / SPANS_FILE, Span, across)),
            metrics=list(_read_jsonl(run_dir / METRICS_FILE, MetricPoint)),
            logs=list(_read_jsonl(run_dir / LOGS_FILE, LogRecord, across)),
            driver=list(_read_jsonl(run_dir / DRIVER_FILE, DriverRecord, across)),
            downstream=list(_read_jsonl(run_dir / DOWNSTREAM_FILE, DownstreamRecord, across)),
            scrapes=list(_read_jsonl(run_dir / SCRAPES_FILE, Scrape)),
        )


def write_text_atomic(path: Path, text: str) -> None:
    """Write text through a temp file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
