"""Score a join against the ground truth of synthetic evidence (tests.conformance.joinsynth):
mis-joins per key, the loss it would report against the spans truly dropped, unjoinable
share, duplicates; and the conditions measured, printed as a table by ``main``."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

from tests.conformance.joinsynth import MS, US, Condition, Truth, generate

KEYS = ("traceparent", "marker", "peer", "time")
LEGACY_KEYS = {"heuristic": "time"}  # what the join before the propagation-free keys said
UNJOINABLE = "unjoinable"

# Every condition the test and the table measure; ids read "<key>-c<conns>-q<quantum>-...".
CONDITIONS = (
    Condition("traceparent-c8-q0", "traceparent"),
    Condition("traceparent-c32-q10ms-dups", "traceparent", concurrency=32,
              quantum_ns=10 * MS, duplicate_share=0.05),
    Condition("traceparent-c1-q1ms-stable", "traceparent", concurrency=1, quantum_ns=MS,
              attrs="stable"),
    Condition("marker-c8-q1ms", "marker", propagation=False, marker=True, quantum_ns=MS),
    Condition("marker-c32-q10ms-dups", "marker", concurrency=32, propagation=False,
              marker=True, quantum_ns=10 * MS, duplicate_share=0.05),
    Condition("marker-mixed-missing-tp", "marker", concurrency=8, marker=True,
              no_traceparent_share=0.2, quantum_ns=MS),
    Condition("peer-c8-q1ms-old", "peer", propagation=False, peer=True, quantum_ns=MS,
              attrs="old"),
    Condition("peer-c32-q10ms", "peer", concurrency=32, propagation=False, peer=True,
              quantum_ns=10 * MS),
    Condition("peer-c32-q0-dups", "peer", concurrency=32, propagation=False, peer=True,
              duplicate_share=0.05),
    Condition("time-c1-q0", "time", concurrency=1, propagation=False),
    Condition("time-c1-q1ms-before-write", "time", concurrency=1, propagation=False,
              quantum_ns=MS, end="before-write"),
    Condition("time-c1-q1ms-after-write", "time", concurrency=1, propagation=False,
              quantum_ns=MS, end="after-write"),
    Condition("time-c1-q1ms-unsampled", "time", n=600, concurrency=1, quantum_ns=MS,
              unsampled_share=0.05, unsampled_then_missing=True, drop_share=0.0),
    Condition("time-c1-q10ms", "time", concurrency=1, propagation=False, quantum_ns=10 * MS),
    Condition("time-c1-q1ms-jitter200us", "time", concurrency=1, propagation=False,
              quantum_ns=MS, jitter_ns=200 * US),
    Condition("time-c8-q0", "time", propagation=False),
    Condition("time-c8-q1ms", "time", propagation=False, quantum_ns=MS),
    Condition("time-c32-q1ms", "time", concurrency=32, propagation=False, quantum_ns=MS),
    Condition("time-c32-q10ms-route-only", "time", concurrency=32, propagation=False,
              quantum_ns=10 * MS, attrs="route-only"),
    Condition("time-c8-q1ms-dups", "time", propagation=False, quantum_ns=MS,
              duplicate_share=0.05),
)


def strict(c: Condition) -> bool:
    """Must the time join be without a single mis-join here? One request at a time on a
    start grid of at most 1 ms (identifiers must be, always)."""
    return c.concurrency == 1 and c.quantum_ns <= MS


@dataclass
class Score:
    """One join of one condition's evidence, judged against its truth."""

    condition: str
    requests: int = 0  # answered requests under test
    joined: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KEYS, 0))
    misjoined: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KEYS, 0))
    misjoin_ids: list[str] = field(default_factory=list)
    unjoinable: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)  # what KT-001 would count as lost
    dropped: set[str] = field(default_factory=set)  # truly dropped (ground truth)
    unsampled: set[str] = field(default_factory=set)  # sent with flags 00 (ground truth)
    unsampled_taken: list[str] = field(default_factory=list)  # unsampled, span not theirs
    duplicated: int = 0  # truly duplicated requests joined to their own span
    duplicates_counted: int = 0  # of those, with both spans on the request
    agent_misjoined: int = 0  # spans the join gave the agent's requests that were not theirs
    driver_misjoined: int = 0  # driver records joined to the wrong kernel request
    seconds: float = 0.0

    @property
    def dropped_decidable(self) -> set[str]:
        """Truly dropped, neither unjoinable nor unsampled (KT-001 excludes both)."""
        return self.dropped - self.unjoinable - self.unsampled

    @property
    def false_losses(self) -> set[str]:
        """Requests counted lost whose span exists."""
        return self.missing - self.dropped

    @property
    def unjoinable_share(self) -> float:
        return len(self.unjoinable) / self.requests if self.requests else 0.0


def score(c: Condition, truth: Truth, joined: Any) -> Score:
    """Judge ``joined`` (the join's result on ``generate(c)``) against ``truth``."""
    out = Score(c.name)
    owner = truth.span_owner
    for r in joined.requests:
        k = r.kernel
        if k.status is None or k.t_resp_last is None:
            continue
        out.requests += 1
        key = LEGACY_KEYS.get(r.span_join, r.span_join)
        spans = list(r.spans) + list(getattr(r, "nested_spans", ()))
        wrong = [s for s in spans if owner.get(s.span_id) != k.id]
        if r.spans and key in out.joined:
            out.joined[key] += 1
            if wrong:
                out.misjoined[key] += 1
                out.misjoin_ids.append(k.id)
        elif wrong:  # spans under another name: every one of them wrong counts
            out.misjoin_ids.append(k.id)
        if k.id in truth.unsampled and wrong:
            out.unsampled_taken.append(k.id)
        if key == UNJOINABLE:
            out.unjoinable.add(k.id)
        elif not r.spans and k.id not in truth.unsampled:
            # KT-001's loss: decided and without span; unsampled without span excluded.
            out.missing.add(k.id)
        if k.id in truth.duplicated and r.spans and not wrong:
            out.duplicated += 1
            out.duplicates_counted += len(spans) > 1
        if r.driver is not None and truth.driver_owner.get(r.driver.seq) != k.id:
            out.driver_misjoined += 1
    out.agent_misjoined = sum(1 for s in getattr(joined, "agent_spans", ())
                              if owner.get(s.span_id) not in truth.agent)
    out.dropped, out.unsampled = set(truth.dropped), set(truth.unsampled)
    return out


def measure(c: Condition, join: Callable[[Any], Any]) -> Score:
    ev, truth = generate(c)
    t = time.perf_counter()
    joined = join(ev)
    s = score(c, truth, joined)
    s.seconds = time.perf_counter() - t
    return s


def _load_join(path: str | None) -> Callable[[Any], Any]:
    if path is None:
        from conformance.join import join
        return join
    spec = importlib.util.spec_from_file_location("measured_join", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--join: cannot load {path}")
    mod: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod.join


HEADER = (f"{'condition':<26} {'key':<11} {'joined':>6} {'mis':>4} {'mis%':>5} {'unj%':>5} "
          f"{'lost/drp':>8} {'dup':>7}")


def rows(s: Score, c: Condition) -> list[str]:
    """Table lines of one score: one per key that joined anything (the condition's own key
    always), the loss and duplicates on the first."""
    keys = [k for k in KEYS if s.joined[k] or k == c.key]
    lost = f"{len(s.missing)}/{len(s.dropped_decidable)}"
    dup = f"{s.duplicates_counted}/{s.duplicated}" if s.duplicated else "-"
    out = []
    for i, k in enumerate(keys):
        rate = 100.0 * s.misjoined[k] / s.joined[k] if s.joined[k] else 0.0
        first = i == 0
        out.append(f"{c.name if first else '':<26} {k:<11} {s.joined[k]:>6} "
                   f"{s.misjoined[k]:>4} {rate:>5.{2 if rate < 10 else 1}f} "
                   f"{100 * s.unjoinable_share if first else 0:>5.1f} "
                   f"{lost if first else '':>8} {dup if first else '':>7}".rstrip())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.conformance.joinsynth",
                                description="Measure the join on synthetic evidence.")
    p.add_argument("--table", action="store_true", help="print the scores of every condition")
    p.add_argument("--join", metavar="FILE", help="a join.py to measure instead of today's")
    p.add_argument("-k", metavar="TEXT", default="", help="only conditions whose name has TEXT")
    args = p.parse_args(argv)
    if not args.table:
        p.print_help()
        return 1
    join = _load_join(args.join)
    print(HEADER)
    for c in CONDITIONS:
        if args.k not in c.name:
            continue
        s = measure(c, join)
        print("\n".join(rows(s, c)))
        extra = []
        if s.false_losses:
            extra.append(f"{len(s.false_losses)} counted lost with a span")
        if s.unsampled_taken:
            extra.append(f"{len(s.unsampled_taken)} unsampled took a span")
        if s.agent_misjoined or s.driver_misjoined:
            extra.append(f"agent {s.agent_misjoined}, driver {s.driver_misjoined} mis-joined")
        if extra:
            print(f"{'':<26} ! " + "; ".join(extra))
        sys.stdout.flush()
    print("lost/drp: requests left without span (KT-001's missing) / truly dropped among\n"
          "  the decidable; unj%: unjoinable share; dup: duplicates counted / truly duplicated")
    return 0
