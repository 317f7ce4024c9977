"""Check implementations, one small function per catalogue id; importing registers them."""

from conformance.checks import (  # noqa: F401
    al, al_logs, bc, ec, ec_catalogue, kt, kt_metrics, kt_more, sc, sc_spans, tc, tc_tree,
)
