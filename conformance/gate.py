"""Can this run's kernel truth be trusted? The agent's self-loss counters and eBPF mode."""

from __future__ import annotations

from agent.evidence import RunMeta

LOSS_COUNTERS = ("ring_drops", "truncated_captures", "map_full")
NO_EBPF, UNREPORTED, LOSS = "no_ebpf", "unreported", "loss"


def agent_loss(meta: RunMeta) -> tuple[dict[str, int], list[str]]:
    """The agent's loss counters that were reported, and the names that were not."""
    stats = meta.kernel_stats or {}
    counters: dict[str, int] = {}
    missing: list[str] = []
    for name in LOSS_COUNTERS:
        value = stats.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            missing.append(name)
        else:
            counters[name] = int(value)
    # "loss" sums every loss the agent counts (also decode errors, unscanned captures): what
    # the named counters do not explain is reported as other_loss.
    total = stats.get("loss")
    if isinstance(total, (int, float)) and not isinstance(total, bool):
        other = int(total) - sum(counters.values())
        if other > 0:
            counters["other_loss"] = other
    return counters, missing


def kernel_gate(meta: RunMeta) -> tuple[str, str] | None:
    """Why kernel truth cannot be trusted for this run: (kind, reason), or None when it can.

    kind is NO_EBPF, UNREPORTED (loss counters missing: loss unknown) or LOSS.
    """
    if not meta.ebpf:
        reason = meta.degraded_reason or "eBPF was off for this run"
        return NO_EBPF, f"no kernel truth: {reason}"
    counters, missing = agent_loss(meta)
    if missing:
        return UNREPORTED, ("kernel truth unverifiable: the agent did not report "
                            f"{', '.join(missing)}")
    lost = {k: v for k, v in counters.items() if v > 0}
    if lost:
        detail = ", ".join(f"{k}={v}" for k, v in lost.items())
        return LOSS, f"kernel truth incomplete: the agent lost events ({detail}), see KT-007"
    return None
