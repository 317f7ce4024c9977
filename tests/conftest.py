"""Suite-wide rule: where OBSCONFORM_REQUIRE_KERNEL=1 (make test, so CI), a kernel test that
skips is a failure. Kernel truth is the product; a CI run that skipped it proves nothing."""

from __future__ import annotations

import os

import pytest

REQUIRE_KERNEL = os.environ.get("OBSCONFORM_REQUIRE_KERNEL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    needs_kernel = item.get_closest_marker("kernel") is not None or "kernel_ok" in getattr(item, "fixturenames", ())
    if REQUIRE_KERNEL and report.skipped and needs_kernel:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"kernel test skipped where kernel tests are required: {reason}"
