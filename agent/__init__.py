"""obsconform agent: loads the eBPF probes and collects kernel truth and the SUT's telemetry."""

__version__ = "0.1.0"
