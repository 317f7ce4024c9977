"""Parsing captured HTTP/1.x bytes: request messages (httptools), their boundaries, status lines."""

from __future__ import annotations

import re

import httptools

_STATUS = re.compile(rb"HTTP/1\.(\d) (\d{3})")

# Header names and short values repeat from request to request ("host", "keep-alive",
# "*/*"): one shared string each instead of one per request, which was most of the ~2.4 KB
# an assembled request held. Bounded, so unique values (ids) cannot grow it without end.
_SHARE_MAX_LEN = 48  # a traceparent (55) is unique per request: not worth keeping
_SHARE_MAX = 50_000
_shared_strings: dict[str, str] = {}


def _shared(text: str) -> str:
    got = _shared_strings.get(text)
    if got is not None:
        return got
    if len(_shared_strings) < _SHARE_MAX:
        _shared_strings[text] = text
    return text


class _Messages:
    """httptools callbacks: collects the request messages of one capture."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.msgs: list[dict] = []

    def on_message_begin(self) -> None:
        self.msgs.append({"method": "", "url": bytearray(), "headers": {}, "complete": False,
                          "version": ""})

    def on_url(self, url: bytes) -> None:
        m = self.msgs[-1]
        if not m["method"]:
            m["method"] = self.parser.get_method().decode("latin-1")
        m["url"] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # httptools calls this only for complete values: a cut header is never guessed.
        key = _shared(name.decode("latin-1").lower())
        text = value.decode("latin-1")
        if len(text) <= _SHARE_MAX_LEN:
            text = _shared(text)
        self.msgs[-1]["headers"].setdefault(key, []).append(text)

    def on_headers_complete(self) -> None:
        m = self.msgs[-1]
        m["complete"] = True
        m["version"] = self.parser.get_http_version()


def parse_requests(data: bytes) -> tuple[list[dict], bool]:
    """Parse the request messages in a capture; returns them and whether parsing failed."""
    p = _Messages()
    failed = False
    try:
        p.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass  # CONNECT / Upgrade: what follows is not HTTP/1.x
    except httptools.HttpParserError:
        failed = True
    if p.msgs and not p.msgs[0]["version"] and b"\r\n" in data:
        # headers cut short: the version still comes from a complete request line
        first = data.split(b"\r\n", 1)[0].split(b" ")
        if len(first) == 3 and first[2].startswith(b"HTTP/"):
            p.msgs[0]["version"] = first[2][5:].decode("latin-1")
    return [m for m in p.msgs if m["method"]], failed


def message_starts(data: bytes, msgs: list[dict]) -> list[int]:
    """Offsets of each pipelined message in a capture: header block, then a body of
    Content-Length bytes or chunks up to the last chunk and trailers."""
    if len(msgs) == 1:  # the common capture: nothing to find
        return [0]
    starts, pos = [], 0
    for m in msgs:
        starts.append(pos)
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        pos = end + 4
        headers = m["headers"]
        if "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
            pos = _chunked_end(data, pos)
            if pos < 0:
                break
            continue
        try:
            pos += int(headers.get("content-length", ["0"])[0])
        except ValueError:
            pass
    return starts


def _chunked_end(data: bytes, pos: int) -> int:
    """Where a chunked body that starts at ``pos`` ends (after its trailers); -1 if cut."""
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return -1
        try:
            size = int(data[pos:eol].split(b";", 1)[0].strip(), 16)
        except ValueError:
            return -1
        pos = eol + 2
        if size == 0:
            break
        pos += size + 2  # chunk data and its CRLF
    while True:  # trailer fields, up to the empty line
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return -1
        if eol == pos:
            return pos + 2
        pos = eol + 2


def parse_statuses(data: bytes) -> list[int]:
    """Status codes of the status lines at the start of a response capture (interim first)."""
    out, pos = [], 0
    while True:
        m = _STATUS.match(data, pos)
        if not m:
            return out
        code = int(m.group(2))
        out.append(code)
        if not 100 <= code < 200 or code == 101:
            return out
        end = data.find(b"\r\n\r\n", m.end())
        if end < 0:
            return out
        pos = end + 4


