"""SC-003: HTTP server spans follow the stable OTel HTTP semantic conventions (v1.23+): kind
SERVER, required attributes with the values seen on the wire, name ``{method} {target}``,
status ERROR for 5xx and unset below.

The pre-1.21 names (``http.method``, ``http.status_code``, ``http.target``, ...) fail with a
message naming OTEL_SEMCONV_STABILITY_OPT_IN=http: they are what OTel Python
instrumentations emit by default, but the stable conventions are required here. Spans that
carry both (``http/dup``) pass with a note.
"""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from agent.evidence import Span
from conformance.httpsem import (
    SPAN_STATUS_RULE, route_matches, route_regex, server_span_status_problem,
)
from conformance.model import Finding
from conformance.registry import CheckContext, check
from conformance.scenario import base_path, local_path, route_of, route_templates
from conformance.telemetry import with_no_spans
from conformance.view import RequestView, view_of

SAMPLES = 10
OLD_NAMES = ("http.method", "http.status_code", "http.target", "http.scheme", "http.url")
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
                 "QUERY")
OPT_IN = ("uses the pre-1.21 HTTP attribute names (http.method, http.status_code, http.target) "
          "instead of the stable ones: set OTEL_SEMCONV_STABILITY_OPT_IN=http (or http/dup)")


def _name_ok(span: Span, method: str, path: str, template: str | None, base: str = "") -> bool:
    """``{method}`` or ``{method} {target}`` with a low-cardinality target: http.route, the
    scenario's template (with or without the --url prefix ``base``: an app may be mounted
    under it), or any template that matches the path (aiohttp-server names spans by the
    resource's canonical path but sets http.route to the handler name)."""
    m = "HTTP" if method == "_OTHER" else method
    if span.name == m:
        return True
    if not span.name.startswith(m + " "):
        return False
    target = span.name[len(m) + 1:]
    route = span.attributes.get("http.route")
    if target in ({str(route)} if route else set()) | route_templates(base, template):
        return True
    return route_regex(target) is not None and any(
        route_matches(target, p) for p in {path, local_path(base, path)})


def span_problems(r: RequestView, span: Span, scheme: str, template: str | None,
                  base: str = "") -> list[str]:
    """What is wrong with one server span against the request the driver sent (``base``:
    the --url path prefix, on the wire and in url.path, not in the scenario's routes)."""
    d, a = r.driver, span.attributes
    path, _, query = d.path.partition("?")
    problems = []
    if span.kind != "SERVER":
        problems.append(f"kind {span.kind}, not SERVER")
    if "http.request.method" not in a and any(n in a for n in OLD_NAMES):
        return problems + [OPT_IN]
    method = d.method.upper()
    want_method = method if method in KNOWN_METHODS else "_OTHER"
    checks: list[tuple[str, Any]] = [("http.request.method", want_method), ("url.path", path),
                                     ("url.scheme", scheme)]
    if d.status is not None:
        checks.append(("http.response.status_code", d.status))
    for name, want in checks:
        got = a.get(name)
        if got is None:
            problems.append(f"required attribute {name} is missing")
        elif name == "http.response.status_code" and (isinstance(got, bool) or not isinstance(got, int)):
            problems.append(f"{name} is {got!r} ({type(got).__name__}), not an int")
        elif got != want:
            problems.append(f"{name} is {got!r}, the wire says {want!r}")
    if query and "url.query" not in a:
        problems.append("url.query is missing (required when the target has a query)")
    if want_method == "_OTHER" and "http.request.method_original" not in a:
        problems.append("http.request.method_original is missing for a non-standard method")
    if d.status is not None and d.status >= 500 and "error.type" not in a:
        problems.append(f"error.type is missing on a {d.status} (required when the request failed)")
    if not _name_ok(span, str(a.get("http.request.method") or want_method), path, template, base):
        route = a.get("http.route")
        problems.append(f"name {span.name!r} is not '{{method}} {{route}}' ("
                        f"{want_method} {route or template or ''}".rstrip() + ")")
    if (bad := server_span_status_problem(d.status, span.status_code)) is not None:
        problems.append(bad)
    return problems


@check("SC-003")
def server_span_semconv(ctx: CheckContext) -> Finding:
    ev = ctx.evidence
    view = view_of(ctx)
    scheme = urlsplit(str(ev.meta.target.get("url") or "http://")).scheme or "http"
    scenario = ev.meta.scenario or {}
    base = base_path(ev.meta)
    judged, failures, dual, ok_status = 0, [], 0, 0
    counts: Counter[str] = Counter()
    ambiguous = 0
    for r in view.requests:
        span = r.span
        if span is not None and not r.span_certain:
            ambiguous += 1  # concurrent twins without continued context: which span is whose?
            continue
        if span is None and r.driver.trace_id:  # continued context, but not as a SERVER span
            others = view.spans_by_key.get((r.driver.trace_id, r.driver.parent_id), [])
            span = others[0] if others else None
        if span is None:
            continue
        judged += 1
        dual += "http.request.method" in span.attributes and "http.method" in span.attributes
        ok_status += span.status_code == "OK"
        problems = span_problems(r, span, scheme,
                                 route_of(scenario, local_path(base, r.driver.path)), base)
        if problems:
            counts.update(p.split(" is ")[0].split(":")[0] for p in problems)
            failures.append(r.ref(name=span.name, kind=span.kind, status_code=span.status_code,
                                  attributes={k: v for k, v in span.attributes.items()
                                              if k.startswith(("http.", "url.", "error."))},
                                  problems=problems))
    expected = {"kind": "SERVER", "required": ["http.request.method", "url.path", "url.scheme",
                                               "http.response.status_code"],
                "name": "{method} {route}", "status": SPAN_STATUS_RULE}
    observed = {"server_spans": judged, "failing": len(failures),
                "problem_kinds": dict(counts.most_common(8)),
                "dual_emission_spans": dual, "status_ok_spans": ok_status,
                "ambiguous_not_judged": ambiguous}
    notes = []
    if dual:
        notes.append(f"{dual} span(s) carry both stable and pre-1.21 attribute names "
                     "(OTEL_SEMCONV_STABILITY_OPT_IN=http/dup): judged on the stable ones")
    if ok_status:
        notes.append(f"{ok_status} span(s) have status OK: allowed below 400 (never on a 4xx "
                     "or 5xx), though instrumentations leave it unset")
    evidence = {"failures": failures[:SAMPLES], "notes": notes}
    if failures:
        f = failures[0]
        return Finding.failed(f"{len(failures)} of {judged} server spans break HTTP semconv, "
                              f"e.g. {f['case']} {f['request']} -> {f['status']}: span "
                              f"{f['name']!r}: {f['problems'][0]}", observed, expected, **evidence)
    if not judged:
        return Finding.inconclusive(with_no_spans(ctx.evidence, "no server span was joined to "
                                                  "any request"), observed,
                                    expected, **evidence)
    return Finding.passed(f"{judged} server spans follow the stable HTTP semconv", observed,
                          expected, **evidence)
