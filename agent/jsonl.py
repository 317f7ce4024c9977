"""Reading big JSONL evidence files fast and small: chunked decoding, repeated values shared.

A million-request run holds five million records; read one ``json.loads`` per line, each
record carries its own copy of every key and value. Here a chunk of lines is decoded by one
call (the decoder's key memo then gives each distinct key one string per chunk), and values
that repeat across records (methods, routes, header and attribute values) are replaced by
one shared string per distinct value. Strings are immutable, so sharing them is invisible to
readers; containers are never shared.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, TextIO

CHUNK_BYTES = 1 << 20  # text decoded per json.loads call
# Header values unique to each request: sharing them would only grow the table.
UNIQUE_KEYS = frozenset({"traceparent", "tracestate"})


def chunks(f: TextIO) -> Iterator[tuple[int, list[str]]]:
    """(number of the first line, lines) of about CHUNK_BYTES each."""
    first = 1
    while lines := f.readlines(CHUNK_BYTES):
        yield first, lines
        first += len(lines)


def decode(lines: list[str]) -> list[dict[str, Any]] | None:
    """The JSON object of each non-blank line, decoded in one call; None when the lines are
    not one object each (then decode them one by one to name the bad line)."""
    kept = [line for line in lines if not line.isspace()]
    if not all(line.lstrip().startswith("{") for line in kept):
        return None
    try:
        data = json.loads("[" + ",".join(kept) + "]")
    except ValueError:
        return None
    if len(data) != len(kept) or not all(type(d) is dict for d in data):
        return None
    return data


class SharedValues:
    """One string object per distinct value of the fields named at construction.

    ``top``: fields whose string value repeats across records; ``nested``: fields holding a
    dict whose string values (or lists of strings, like headers) repeat.
    """

    def __init__(self, top: tuple[str, ...], nested: tuple[str, ...]) -> None:
        self.top = top
        self.nested = nested
        self._table: dict[str, str] = {}

    def share(self, records: list[dict[str, Any]]) -> None:
        shared = self._table.setdefault
        top, nested = self.top, self.nested
        for d in records:
            for name in top:
                v = d.get(name)
                if type(v) is str:
                    d[name] = shared(v, v)
            for name in nested:
                inner = d.get(name)
                if type(inner) is not dict:
                    continue
                for k, v in inner.items():  # replacing values only: the dict keeps its size
                    if type(v) is str:
                        if k not in UNIQUE_KEYS:
                            inner[k] = shared(v, v)
                    elif type(v) is list and k not in UNIQUE_KEYS:
                        inner[k] = [shared(x, x) if type(x) is str else x for x in v]
