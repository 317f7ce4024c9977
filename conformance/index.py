"""What one evaluation shares read-only: every span indexed by trace (and looked up by parent
through it), and the one empty list that join fields nothing was joined to hold."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent.evidence import Span


class _Empty(list):
    """The one empty list shared by every join field nothing was joined to: a million
    requests would otherwise hold millions of empty lists. Read-only, so a stray append
    fails loudly instead of reaching every request; writers assign a new list (``appended``)."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a shared empty join list: assign a new list instead")

    append = extend = insert = remove = pop = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse


EMPTY: list[Any] = _Empty()


def empty() -> list[Any]:
    """``EMPTY``, as a dataclass default factory."""
    return EMPTY


def put_one_or_many(index: dict[Any, Any], key: Any, value: Any) -> None:
    """index[key] holds one value, or a list once a second one comes: most keys have one, and
    a million one-item lists cost more than the work they index. Readers test for a list."""
    prev = index.setdefault(key, value)
    if prev is not value:
        if type(prev) is list:
            prev.append(value)
        else:
            index[key] = [prev, value]


def appended(items: list[Any], item: Any) -> list[Any]:
    """``items`` with ``item`` appended: a new list in place of the shared EMPTY."""
    if items is EMPTY:
        return [item]
    items.append(item)
    return items


class SpansByParent(Mapping):
    """(trace-id, parent-span-id) → the spans of that trace with that parent, in export
    order, found among the trace's spans instead of kept in a dict of their own (a million
    tuple keys and lists took 230 MB). Each lookup returns a new list."""

    def __init__(self, by_trace: dict[str, list[Span]]) -> None:
        self._by_trace = by_trace

    def get(self, key: tuple[str, str], default: Any = None) -> Any:
        spans = self._by_trace.get(key[0])
        if spans:
            parent = key[1]
            found = [s for s in spans if s.parent_span_id == parent]
            if found:
                return found
        return default

    def __contains__(self, key: object) -> bool:  # no list made to answer
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        parent = key[1]
        for s in self._by_trace.get(key[0], ()):
            if s.parent_span_id == parent:
                return True
        return False

    def __getitem__(self, key: tuple[str, str]) -> list[Span]:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __iter__(self) -> Iterator[tuple[str, str]]:  # trace by trace, each key once
        for trace, spans in self._by_trace.items():
            yield from dict.fromkeys((trace, s.parent_span_id) for s in spans)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass(slots=True)
class SpanIndex:
    """Every span by trace-id (and through it by parent), in export order; built once per
    evaluation and shared by the join, the driver view and the checks."""

    by_trace: dict[str, list[Span]]
    by_key: SpansByParent  # (trace-id, parent-span-id) → spans


def index_spans(spans: list[Span]) -> SpanIndex:
    by_trace: dict[str, list[Span]] = {}
    get = by_trace.get
    for s in spans:
        group = get(s.trace_id)
        if group is None:
            by_trace[s.trace_id] = [s]
        else:
            group.append(s)
    return SpanIndex(by_trace, SpansByParent(by_trace))
