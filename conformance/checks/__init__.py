"""Check implementations, one small function per catalogue id; importing registers them."""

from conformance.checks import kt, kt_metrics  # noqa: F401
