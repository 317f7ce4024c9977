"""How long the settle phase waits for a SUT's batch span exports: read from its OTel
environment (the --exec default, the caller's value, the spec default, or none at all)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agent.sut import (
    EXEC_BSP_SCHEDULE_DELAY_MS, OTEL_BSP_DEFAULT_MS, otel_environment, process_environ,
    span_export_delay_s,
)


@pytest.mark.parametrize("env, expected", [
    ({"OTEL_BSP_SCHEDULE_DELAY": "250"}, 0.25),
    ({"OTEL_SERVICE_NAME": "shop"}, OTEL_BSP_DEFAULT_MS / 1000.0),
    ({"OTEL_BSP_SCHEDULE_DELAY": "soon"}, OTEL_BSP_DEFAULT_MS / 1000.0),
    ({"OTEL_BSP_SCHEDULE_DELAY": "-5"}, 0.0),
    ({"PATH": "/usr/bin"}, None),
], ids=["set", "otel-process-spec-default", "bad-value-sdk-default", "negative", "no-otel"])
def test_span_export_delay_from_environment(env, expected):
    assert span_export_delay_s(env) == expected


def test_exec_environment_shortens_the_batch_delay_unless_the_caller_set_one():
    env = otel_environment({}, "http://127.0.0.1:1", "http://127.0.0.1:2")
    assert env["OTEL_BSP_SCHEDULE_DELAY"] == str(EXEC_BSP_SCHEDULE_DELAY_MS)
    env = otel_environment({"OTEL_BSP_SCHEDULE_DELAY": "3000"}, "http://127.0.0.1:1", "x")
    assert env["OTEL_BSP_SCHEDULE_DELAY"] == "3000"


def test_process_environ_reads_a_running_process():
    child = subprocess.Popen([sys.executable, "-c", "print('up', flush=True); input()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env={**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "42"})
    try:
        assert child.stdout.readline() == b"up\n"  # exec is done: its environ is readable
        assert span_export_delay_s(process_environ(child.pid)) == 0.042
    finally:
        child.communicate(b"")
    assert process_environ(2**22 + 7) == {}
