"""RunMeta.kernel_stats: the collector's counters, its self-loss and its blind spots, in one dict."""

from __future__ import annotations

from collections import Counter
from typing import Any

from agent.kernel.events import BLIND_KINDS

# Counters that mean the agent lost sight of something: any of them makes KT inconclusive.
# "map_full" is every full-map event (connections, syscalls in flight, targets).
LOSS_KEYS = ("ring_drops", "truncated_captures", "map_full", "unscanned_captures", "bad_records",
             "callback_errors")
MAP_FULL_KEYS = {"map_full_connections": "map_full", "map_full_syscalls": "io_map_full",
                 "map_full_targets": "targets_full"}
# What the probes cannot see at all, reported with every run (SPEC §3: blind spots are not hidden).
NOT_VISIBLE = [
    "TLS payloads (connections are counted, their requests are not seen)",
    "HTTP/2 and gRPC (counted per connection by the client preface)",
    "sendfile bodies (their bytes are counted, never seen)",
    "iovecs after the 8th of one readv/writev/sendmsg/recvmsg",
    "connections opened before attach that carry no HTTP/1.x bytes afterwards",
]


def blind_spots(kernel: dict[str, int], assembler: Counter | dict, samples: list[dict],
                primer: dict[str, int]) -> dict[str, Any]:
    """Per-kind counts of what the probes saw but could not read, with sample connections.

    Protocol kinds count connections; ``in_flight_at_attach`` counts read/write syscalls
    that a target was already inside when it became one and that could not be primed.
    """
    by_role = {role: {kind: int(assembler.get(f"blind_{role}_{kind}", 0)) for kind in BLIND_KINDS.values()}
               for role in ("server", "client")}
    return {
        "tls": int(kernel.get("blind_tls", 0)),
        "http2": int(kernel.get("blind_http2", 0)),
        "other_protocol": int(kernel.get("blind_other_protocol", 0)),
        "upgraded": int(assembler.get("upgraded", 0)),
        "in_flight_at_attach": int(kernel.get("syscalls_unseen_at_entry", 0)),
        "primed_at_attach": int(primer.get("primed", 0)),
        "orphan_responses": int(assembler.get("orphan_responses", 0)),
        "sendfile_calls": int(kernel.get("sendfile_calls", 0)),
        "by_role": by_role,
        "samples": list(samples),
        "not_visible": list(NOT_VISIBLE),
    }


def compose(kernel: dict[str, int] | None, per_cpu_drops: list[int] | None, user: Counter,
            assembler: Counter, samples: list[dict], primer: dict[str, int], sizes: dict[str, int]
            ) -> dict[str, Any]:
    """The kernel_stats dict: in-kernel counters (map_full summed over every map), per-CPU
    ring-buffer drops, user-space counters, the assembler's, ``loss``, blind spots, sizes."""
    out: dict[str, Any] = dict(kernel or {})
    if kernel is not None:
        for name, raw in MAP_FULL_KEYS.items():
            out[name] = int(kernel.get(raw, 0))
        out["map_full"] = sum(out[name] for name in MAP_FULL_KEYS)
        out["ring_drops_per_cpu"] = list(per_cpu_drops or [])
    out.update({f"user_{k}": v for k, v in user.items()})
    out["bad_records"] = user["bad_records"]
    out["callback_errors"] = user["callback_errors"]
    out["assembler"] = dict(assembler)
    out["primer"] = dict(primer)
    out["loss"] = sum(int(out.get(k, 0)) for k in LOSS_KEYS)
    if "records" in out:  # written after the last drain (after finish): not part of the run
        out["records_not_consumed"] = out["records"] - out.get("user_received", 0)
    out["capture_bytes"] = sizes["capture_bytes"]
    out["sizes"] = dict(sizes)
    out["blind_spots"] = blind_spots(kernel or {}, assembler, samples, primer)
    return out
