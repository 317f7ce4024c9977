"""The command line refuses bad configuration before gunicorn starts, naming what to fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .service import REPO_ROOT, free_port


@pytest.mark.parametrize(
    "args, env, fragment",
    [
        (["--port", "{port}"], {"FAULT_LEAK_BIZCODE": "maybe"}, "FAULT_LEAK_BIZCODE: expected"),
        (["--port", "{port}"], {"FAULT_DROP_SPANS": "every:x"}, "FAULT_DROP_SPANS: expected"),
        (["--port", "{port}"], {"OBSCONFORM_DOWNSTREAM_URL": "ftp://inventory"}, "OBSCONFORM_DOWNSTREAM_URL: expected"),
        (["--port", "{port}"], {"OBSCONFORM_DOWNSTREAM_URL": "http://h:99999"}, "OBSCONFORM_DOWNSTREAM_URL: expected"),
        ([], {}, "--port is required when PORT is not set"),
        (["--port", "{port}", "--workers", "0"], {}, "--workers must be >= 1"),
    ],
    ids=["bad-switch", "bad-drop", "bad-scheme", "bad-port-in-url", "no-port", "zero-workers"],
)
def test_bad_configuration_exits_2_with_a_message(args, env, fragment):
    port = str(free_port())
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("FAULT_", "OBSCONFORM_", "PORT"))}
    proc = subprocess.run(
        [sys.executable, "-m", "examples.refservice", *[a.format(port=port) for a in args]],
        cwd=REPO_ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert fragment in proc.stderr
