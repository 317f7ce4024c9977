"""obsconform agent: loads the eBPF probes and collects kernel truth and the SUT's telemetry."""

__version__ = "0.1.0"
# The report's file name, in every run directory and the output directory (SPEC §6).
REPORT_NAME = "CNCF-compliance-report.json"
