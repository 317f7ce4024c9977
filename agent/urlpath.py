"""How ``--url`` and the scenario's paths make the request targets sent on the wire.

The rule (README, CLI reference; docs/SCENARIO.md): the URL's path is a base prefix put
before every scenario path, as written (``/api`` + ``/items/7`` → ``/api/items/7``; a
trailing ``/`` of the URL is dropped first). When nothing names a load path (no scenario,
no ``--path``), the URL names the endpoint itself: the load path is its path and query
exactly, with no prefix (``--url http://h:8000/api/items/7`` loads ``GET /api/items/7``).

A prefix is never its parent "directory": ``--url http://h/api/items/7`` with a scenario
path ``/hello`` sends ``/api/items/7/hello``. A URL either names the endpoint or the
mount point of the app; only the mount point reading keeps every scenario path apart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.errors import InputError

TARGETS_SENT_LIMIT = 20  # RunMeta.target["targets_sent"] names at most this many


@dataclass(frozen=True)
class UrlPlan:
    """Where a run's requests go: ``origin`` + ``prefix`` + each scenario path."""

    url: str  # --url as given
    origin: str  # scheme://host[:port]
    prefix: str  # put before every scenario path; "" when the URL names the load path
    load_path: str | None  # the load path when nothing names one (None: a scenario or --path does)

    @property
    def base_url(self) -> str:
        """The URL the driver and the health probe are given (its path is the prefix)."""
        return self.origin + self.prefix

    def wire(self, path: str) -> str:
        return wire_path(self.prefix, path)


def plan_url(url: str, paths_named: bool) -> UrlPlan:
    """The UrlPlan of ``--url``; ``paths_named``: a scenario or ``--path`` names the paths.

    InputError when the URL has a query that no load path can carry (prefix mode)."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    if not paths_named:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return UrlPlan(url, origin, "", target)
    if parts.query:
        raise InputError(f"--url {url!r}: a query is only allowed when the URL names the "
                         "endpoint (no --scenario, no --path); put it in the scenario's paths")
    return UrlPlan(url, origin, parts.path.rstrip("/"), None)


def wire_path(prefix: str, path: str) -> str:
    """``prefix`` + ``path`` (a path without its leading ``/`` gets one)."""
    return prefix + (path if path.startswith("/") else f"/{path}")


def scenario_path(prefix: str, target: str) -> str:
    """The scenario's path of a target as sent: ``target`` without ``prefix`` (unchanged when
    it does not start with the prefix followed by ``/``)."""
    if prefix and target.startswith(prefix) and target[len(prefix):len(prefix) + 1] == "/":
        return target[len(prefix):]
    return target


def targets_sent(requests: Iterable[tuple[str, str]], limit: int = TARGETS_SENT_LIMIT
                 ) -> tuple[dict[str, int], int]:
    """``({"GET /api/items/7": 180, ...}, distinct)`` of (method, target as sent) pairs: the
    ``limit`` targets sent most (ties in first-sent order) and how many distinct there were."""
    counts = Counter(f"{method.upper()} {target}" for method, target in requests)
    return dict(counts.most_common(limit)), len(counts)
