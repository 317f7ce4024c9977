"""A wheel carries what a run needs outside the checkout: the BPF C sources (compiled on the
host at run time) under share/obsconform/bpf, where agent/kernel/probes.py looks for them,
and the JSON schemas as package data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_bpf_sources_and_the_schemas(tmp_path):
    # No build isolation: the venv's setuptools builds it, offline, in about a second.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, timeout=300, capture_output=True)
    (wheel,) = tmp_path.glob("obsconform-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        sources = sorted(ROOT.glob("bpf/*.[ch]"))
        assert sources, "no BPF sources in the checkout"
        for src in sources:
            inside = [n for n in names if n.endswith(f".data/data/share/obsconform/bpf/{src.name}")]
            assert len(inside) == 1, f"{src.name} is not in the wheel's share/obsconform/bpf"
            assert z.read(inside[0]) == src.read_bytes()
    for schema in ("conformance/CNCF-compliance-report.schema.json", "agent/scenario.schema.json",
                   "agent/daemon/run-spec.schema.json", "conformance/catalogue.yaml"):
        assert schema in names, f"{schema} is not in the wheel"
