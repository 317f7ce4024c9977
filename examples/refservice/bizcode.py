"""bizCode per request: carried in the OTel context (right) or a never-reset thread-local (the leak fault)."""

from __future__ import annotations

import threading

from opentelemetry import context

BIZ_CODE_HEADER_ENVIRON = "HTTP_X_BIZ_CODE"
DEFAULT_BIZ_CODE = "default"
_CONTEXT_KEY = context.create_key("refservice.biz_code")


def biz_code_of(environ: dict) -> str:
    """The inbound X-Biz-Code, trimmed; `default` when missing or blank."""
    return environ.get(BIZ_CODE_HEADER_ENVIRON, "").strip() or DEFAULT_BIZ_CODE


def with_biz_code(biz_code: str, ctx: context.Context) -> context.Context:
    """A context carrying this request's bizCode; attached with the server span, gone after it."""
    return context.set_value(_CONTEXT_KEY, biz_code, ctx)


def current_biz_code() -> str:
    value = context.get_value(_CONTEXT_KEY)
    return value if isinstance(value, str) else DEFAULT_BIZ_CODE


class LeakyBizCodeHolder:
    """FAULT_LEAK_BIZCODE: the classic request filter that fills a thread-local when the header
    is present and never clears it, so a pooled thread remembers an earlier request's value."""

    def __init__(self) -> None:
        self._local = threading.local()

    def remember(self, environ: dict) -> None:
        raw = environ.get(BIZ_CODE_HEADER_ENVIRON, "").strip()
        if raw:
            self._local.biz_code = raw

    def current(self) -> str:
        return getattr(self._local, "biz_code", DEFAULT_BIZ_CODE)
