"""Reading big JSONL evidence files fast and small: chunked decoding, repeated values shared.

A million-request run holds five million records; read one ``json.loads`` per line, each
record carries its own copy of every key and value. Here a chunk of lines is decoded by one
call (the decoder's key memo then gives each distinct key one string per chunk), and values
that repeat across records (methods, routes, header and attribute values) are replaced by
one shared object per distinct value: strings and ints, lists of strings (header values),
and whole values that repeat as they are (a resource, an empty list). Strings and ints are
immutable, so sharing them is invisible; the shared containers make loaded records read-only
(a change to one would show in all), which every reader of a run directory already is.
"""

from __future__ import annotations

import json
from itertools import repeat
from typing import Any, Iterator, TextIO

# Text decoded per json.loads call: small enough that the chunk's records are still in the
# CPU cache when they are shared and built (13% faster than 1 MiB chunks), large enough
# that the per-call cost does not show.
CHUNK_BYTES = 1 << 16
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
    # The checks run in C (map) for the writer's lines: no blank line, none indented.
    kept = [line for line in lines if not line.isspace()] if any(map(str.isspace, lines)) \
        else lines
    if not all(map(str.startswith, kept, repeat("{"))) \
            and not all(line.lstrip().startswith("{") for line in kept):
        return None
    try:
        data = json.loads("[" + ",".join(kept) + "]")
    except ValueError:
        return None
    if len(data) != len(kept) or set(map(type, data)) - {dict}:
        return None
    return data


# Types a shared whole value may hold: equal means identical for these (floats are left out:
# 0.0 == -0.0; bool is kept apart from int by the type in the key, as True == 1).
_SCALARS = frozenset({str, int, bool, type(None)})


def _content_key(value: Any) -> tuple[Any, ...] | None:
    """A hashable key that is equal only for equal dicts or lists of plain scalars (type
    included); None for anything else."""
    if type(value) is dict:
        types = tuple(map(type, value.values()))
        return (dict, tuple(value.items()), types) if _SCALARS.issuperset(types) else None
    if type(value) is list:
        types = tuple(map(type, value))
        return (list, tuple(value), types) if _SCALARS.issuperset(types) else None
    return None


# A whole value is looked up while it repeats: a field whose values turn out mostly distinct
# (attributes with a per-request value, say) stops being tried after WHOLE_TRIAL misses.
WHOLE_TRIAL = 2048
WHOLE_MAX = 1 << 14  # distinct whole values kept per field
# Ints worth sharing: CPython already shares -5..256; ports and status codes fit below this.
INT_MAX = 1 << 16
# Distinct strings, ints and header lists kept for sharing: values that repeat show up early;
# past this, values are only looked up, so per-request values (a client connection, a body
# with an order id) no longer grow a table that, at a million requests, fell out of the
# CPU cache and made every lookup slow.
TABLE_MAX = 1 << 16


class CrossFile:
    """Per-request strings shared across the files of one run directory: the trace-id of a
    span is also in its log line and driver record, a traceparent in the kernel's and the
    driver's headers. Kept only while a directory is read (it holds millions of entries)."""

    __slots__ = ("strings", "lists")

    def __init__(self) -> None:
        self.strings: dict[str, str] = {}
        self.lists: dict[str, list[str]] = {}  # traceparent → its one-value header list


class _Whole:
    """Sharing state of one field whose whole value may repeat."""

    __slots__ = ("name", "nested", "table", "hits", "misses", "active")

    def __init__(self, name: str, nested: bool) -> None:
        self.name = name
        self.nested = nested  # its values are shared one by one when it is not found whole
        self.table: dict[tuple[Any, ...], Any] = {}
        self.hits = self.misses = 0
        self.active = True


class SharedValues:
    """One object per distinct value of the fields named at construction.

    ``top``: fields whose string or int value repeats across records; ``nested``: fields
    holding a dict whose values (strings, ints below INT_MAX, lists of strings like header
    values) repeat; ``whole``: fields whose whole value repeats (a resource, an empty list,
    the attributes of every span of a route), shared when it is a dict or list of plain
    scalars. A field may be in both: a whole value seen before needs no walk of its own.
    Shared containers are never changed once shared, and the records built from them are
    read-only by contract (see ``agent.evidence.load_evidence``).
    """

    def __init__(self, top: tuple[str, ...], nested: tuple[str, ...],
                 whole: tuple[str, ...] = (), ids: tuple[str, ...] = (),
                 across: CrossFile | None = None) -> None:
        self.top = top
        self.nested = nested
        # Per-request strings that other files repeat (trace and span ids; the traceparent
        # of a header dict in ``nested``), shared through ``across``.
        self.ids = ids if across is not None else ()
        self._across = across
        self._whole = [_Whole(name, name in nested) for name in whole]
        self._table: dict[Any, Any] = {}  # exact str and int values only (never bool)
        self._lists: dict[tuple[str, ...], list[str]] = {}  # strings → the shared list
        self._singles: dict[str, list[str]] = {}  # the same for lists of one string
        self._empty: dict[type, Any] = {list: [], dict: {}}  # one empty list and dict

    def share(self, records: list[dict[str, Any]]) -> None:
        table = self._table  # full: values only looked up (get(v, v) is v when not shared)
        shared = table.setdefault if len(table) < TABLE_MAX else table.get
        lists, singles, empty = self._lists, self._singles, self._empty
        room = len(singles) + len(lists) < TABLE_MAX
        top, nested = self.top, self.nested
        whole = [w for w in self._whole if w.active]
        ids, across = self.ids, self._across
        if across is not None:
            same, lists_get = across.strings.setdefault, across.lists.get
        for d in records:
            for name in top:
                v = d.get(name)
                if type(v) is str or type(v) is int:
                    d[name] = shared(v, v)
            for name in ids:
                v = d.get(name)
                if type(v) is str and v:
                    d[name] = same(v, v)
            done = None  # a whole value found of a field that is nested too: no walk
            for w in whole:
                v = d.get(w.name)
                if not v and (type(v) is list or type(v) is dict):  # no key needed
                    d[w.name] = empty[type(v)]
                    continue
                key = _content_key(v)
                if key is None:
                    continue
                found = w.table.get(key)
                if found is not None:
                    d[w.name] = found
                    w.hits += 1
                    if w.nested:
                        done = found
                else:  # kept as it is, its values shared below when it is nested too
                    w.misses += 1
                    if len(w.table) < WHOLE_MAX:
                        w.table[key] = d[w.name]
            for name in nested:
                inner = d.get(name)
                if type(inner) is not dict or inner is done:
                    continue
                for k, v in inner.items():  # replacing values only: the dict keeps its size
                    if k in UNIQUE_KEYS:
                        if across is None or k != "traceparent":
                            continue
                        if type(v) is str:  # the driver's: the kernel saw the same one
                            inner[k] = same(v, v)
                        elif type(v) is list and len(v) == 1 and type(v[0]) is str:
                            # The kernel's and the downstream sink's lists of an outbound
                            # request: one list, its string shared with the driver's.
                            found = lists_get(v[0])
                            if found is None:
                                v[0] = same(v[0], v[0])
                                found = across.lists[v[0]] = v
                            inner[k] = found
                        continue
                    if type(v) is str or type(v) is int and 256 < v < INT_MAX:
                        inner[k] = shared(v, v)
                    elif type(v) is list:
                        if len(v) == 1 and type(v[0]) is str:  # most header values
                            found = singles.get(v[0])
                            if found is None:
                                x = shared(v[0], v[0])
                                found = [x]
                                if room:
                                    singles[x] = found
                            inner[k] = found
                        elif all(type(x) is str for x in v):
                            key = tuple(v)
                            found = lists.get(key)
                            if found is None:
                                found = [shared(x, x) for x in v]
                                if room:
                                    lists[key] = found
                            inner[k] = found
                        else:
                            inner[k] = [shared(x, x) if type(x) is str else x for x in v]
        for w in whole:
            if w.misses > WHOLE_TRIAL and w.misses > w.hits:
                w.active = False  # its values are mostly distinct: stop building keys
