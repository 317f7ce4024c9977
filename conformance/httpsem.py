"""HTTP semantics shared by checks: span attribute lookup (current and legacy semconv
names), the server span status rule, and route templates of the common frameworks matched
against request paths."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Iterable

from agent.evidence import Span

# Current OTel HTTP semconv name first, then the pre-1.21 names instrumentations still emit.
METHOD_ATTRS = ("http.request.method", "http.method")
PATH_ATTRS = ("url.path", "http.target")
ROUTE_ATTRS = ("http.route",)
STATUS_ATTRS = ("http.response.status_code", "http.status_code")
USER_AGENT_ATTRS = ("user_agent.original", "http.user_agent")
# The client's port on a server span: stable, then pre-1.21, then the network-level name.
PEER_PORT_ATTRS = ("client.port", "net.peer.port", "network.peer.port")


def _first(attrs: dict[str, Any], names: Iterable[str]) -> Any:
    for name in names:
        value = attrs.get(name)
        if value not in (None, ""):
            return value
    return None


def span_method(span: Span) -> str | None:
    value = _first(span.attributes, METHOD_ATTRS)
    return str(value).upper() if value is not None else None


def span_path(span: Span) -> str | None:
    value = _first(span.attributes, PATH_ATTRS)
    return str(value).split("?", 1)[0] if value is not None else None


def span_route(span: Span) -> str | None:
    value = _first(span.attributes, ROUTE_ATTRS)
    return str(value) if value is not None else None


def span_status(span: Span) -> int | None:
    value = _first(span.attributes, STATUS_ATTRS)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def span_peer_port(span: Span) -> int | None:
    value = _first(span.attributes, PEER_PORT_ATTRS)
    try:
        port = int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
    return port if port and 0 < port < 65536 else None


SPAN_STATUS_RULE = "ERROR for 5xx, unset for 4xx (and below unless another error)"


def server_span_status_problem(http_status: Any, span_status: str) -> str | None:
    """OTel HTTP semconv, server spans: status ERROR for a 5xx; left unset for a 4xx (the
    client's error: OK is as wrong as ERROR). Below 400 ERROR is wrong too (the wire shows no
    error); OK is allowed there. None when the status follows the rule or is unknown."""
    if isinstance(http_status, bool) or not isinstance(http_status, int):
        return None
    if http_status >= 500:
        if span_status != "ERROR":
            return f"span status {span_status} on a {http_status}: must be ERROR"
    elif http_status >= 400:
        if span_status != "UNSET":
            return (f"span status {span_status} on a {http_status}: must be left unset (OTel "
                    "HTTP semconv: a 4xx on a server span is the client's error)")
    elif span_status == "ERROR":
        return f"span status ERROR on a {http_status}: must be left unset (no error on the wire)"
    return None


# Path parameters as the common frameworks write them:
#   {id} {id:int} {rest:path}   Starlette/FastAPI, aiohttp, OTel http.route
#   <id> <int:id> <path:rest>   Flask/Werkzeug, Django path()
#   :id                         Express-style routers
#   #val                        express-prom-bundle's path label (ids replaced by "#val")
_PARAM = re.compile(
    r"\{(?P<b_name>[^{}:]+)(?::(?P<b_conv>[^{}]+))?\}"
    r"|<(?:(?P<a_conv>[^<>:]+):)?(?P<a_name>[^<>]+)>"
    r"|(?<=/):(?P<c_name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?<=/)#val(?=/|$)"
)


@lru_cache(maxsize=4096)
def route_regex(template: str) -> re.Pattern[str] | None:
    """Compile a route template to a full-match regex; None when it has no parameter."""
    parts: list[str] = []
    pos = 0
    params = 0
    for m in _PARAM.finditer(template):
        parts.append(re.escape(template[pos:m.start()]))
        conv = m["b_conv"] or m["a_conv"] or ""
        # "path" converters (and regexes that allow "/") span several segments.
        parts.append(".+" if conv == "path" or "/" in conv or ".*" in conv else "[^/]+")
        pos = m.end()
        params += 1
    if not params:
        return None
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts))


def route_specificity(template: str) -> tuple[int, int]:
    """Sort key: more literal characters first, then fewer parameters."""
    literal = _PARAM.sub("", template)
    return (-len(literal), len(_PARAM.findall(template)))


class RouteMatcher:
    """Maps request paths to the best of a fixed set of route labels (templates or paths).

    Paths repeat, so each answer is cached: matching n requests costs O(n) lookups after
    the first request of each distinct path.
    """

    def __init__(self, routes: Iterable[str]) -> None:
        self.exact = set(routes)
        self.templates = sorted(
            ((t, rx) for t in self.exact if (rx := route_regex(t)) is not None),
            key=lambda item: route_specificity(item[0]),
        )
        self._cache: dict[str, str | None] = {}

    def match(self, path: str) -> str | None:
        """The route label for ``path``: itself when listed, else the most specific
        matching template, else None."""
        if path in self._cache:
            return self._cache[path]
        found: str | None = path if path in self.exact else None
        if found is None:
            for template, rx in self.templates:
                if rx.fullmatch(path):
                    found = template
                    break
        self._cache[path] = found
        return found


def route_matches(template: str, path: str) -> bool:
    if template == path:
        return True
    rx = route_regex(template)
    return bool(rx and rx.fullmatch(path))
