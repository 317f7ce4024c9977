"""Benchmarks for `make bench`: kernel collector costs, sustained rate without loss, drift resolution."""
