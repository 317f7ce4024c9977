"""The errcode catalogue (errcodes.json), the exception handlers raise, and the error response."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Response, jsonify
from opentelemetry import trace

from . import CATALOGUE_PATH
from .faults import ActiveFaults

ENV_ERROR_CODE = "refservice.error_code"  # WSGI environ key read by the request log line
SEVERITIES = ("INFO", "WARN", "FATAL")
# FAULT_WRONG_ERRCODE_STATUS answers this errcode with this status instead of the catalogue's.
WRONG_STATUS_FOR = ("PAYMENT_INSUFFICIENT_FUNDS", 400)


@dataclass(frozen=True)
class ErrCode:
    name: str
    domain: str
    severity: str
    reason: int
    http_status: int
    grpc_code: str
    retryable: bool
    trigger: dict[str, Any] = field(default_factory=dict)

    @property
    def code(self) -> str:
        """The wire code: `<domain>_<reason as 3 upper-case hex digits>`."""
        return f"{self.domain}_{self.reason:03X}"


def load_catalogue(path: Path = CATALOGUE_PATH) -> dict[str, ErrCode]:
    """Entries by name; raises ValueError on a catalogue this service could not serve."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    entries = [ErrCode(**e) for e in raw["errcodes"]]
    by_name = {e.name: e for e in entries}
    codes = [e.code for e in entries]
    if len(by_name) != len(entries) or len(set(codes)) != len(codes):
        raise ValueError(f"{path}: errcode names and wire codes must be unique")
    for e in entries:
        if e.severity not in SEVERITIES or not 0 <= e.reason <= 0xFFF or not 400 <= e.http_status <= 599:
            raise ValueError(f"{path}: bad entry {e.name}: severity, reason (0..0xFFF) or http_status")
    return by_name


class ServiceError(Exception):
    """Raised by handlers to answer with a catalogue errcode."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class ErrorResponder:
    """Builds the errortrace error response and annotates the current server span."""

    def __init__(self, catalogue: dict[str, ErrCode], faults: ActiveFaults) -> None:
        self._catalogue = catalogue
        self._faults = faults

    def respond(self, name: str, message: str, environ: dict) -> tuple[Response, int]:
        err = self._catalogue[name]
        span = trace.get_current_span()
        trace_id = format(span.get_span_context().trace_id, "032x")
        if self._faults.wrong_error_trace_id:
            trace_id = uuid.uuid4().hex  # a locally made request id passed off as the trace id
        span.set_attribute("error.type", err.code)
        span.set_attribute("retryable", err.retryable)
        environ[ENV_ERROR_CODE] = err.code
        status = err.http_status
        if self._faults.wrong_errcode_status and name == WRONG_STATUS_FOR[0]:
            status = WRONG_STATUS_FOR[1]
        response = jsonify(code=err.code, trace_id=trace_id, message=message)
        if not self._faults.missing_error_code_header:
            response.headers["X-Error-Code"] = err.code
        response.headers["X-Error-Trace-ID"] = trace_id
        return response, status
