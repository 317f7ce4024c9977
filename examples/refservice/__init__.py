"""The obsconform reference service: a Flask app under gunicorn implementing errortrace 0.4.

Only data helpers live here, and nothing heavy is imported: prometheus_client picks its
multiprocess mode from the environment at import time, so `__main__` must set
`PROMETHEUS_MULTIPROC_DIR` before the service modules are imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
SCENARIO_PATH = PACKAGE_DIR / "scenario.json"
CATALOGUE_PATH = PACKAGE_DIR / "errcodes.json"


def load_scenario() -> dict[str, Any]:
    """scenario.json, with `catalogue` resolved to an absolute path."""
    scenario = json.loads(SCENARIO_PATH.read_text(encoding="utf-8"))
    scenario["catalogue"] = str(PACKAGE_DIR / scenario["catalogue"])
    return scenario


def demo_paths() -> list[str]:
    """The GET request targets `make demo` drives load with."""
    return [r["path"] for r in load_scenario()["load"] if r["method"] == "GET"]


__all__ = ["CATALOGUE_PATH", "SCENARIO_PATH", "demo_paths", "load_scenario"]
