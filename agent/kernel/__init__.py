"""Kernel truth: eBPF probes on syscall tracepoints, assembled into KernelRequest records."""

from agent.kernel.collector import KernelCollector
from agent.kernel.probes import DEFAULT_CAPTURE_BYTES, ProbeConfig, attached_program_ids, bpf_source

__all__ = ["KernelCollector", "ProbeConfig", "attached_program_ids", "bpf_source", "DEFAULT_CAPTURE_BYTES"]
