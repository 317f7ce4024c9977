"""Start-up: from `obsconform run` being started to the probes attached, as a user waits for it.

The real CLI (`obsconform -v run --exec ...`) is started a few times; the moment its log
says the probes are attached is taken as it is read from its stderr, then the run is
stopped with SIGTERM (probes detach on that path too). The same log line gives BPF compile
and attach times; the rest is interpreter start-up, imports and the SUT's launch.
"""

from __future__ import annotations

import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.ports import free_port

_ATTACHED = re.compile(r"eBPF probes attached in ([\d.]+)s \(compile ([\d.]+)s\)")
CLI = Path(sys.executable).with_name("obsconform")


def once(tmp: Path) -> dict:
    port = free_port()
    argv = [str(CLI), "-v", "run", "--exec", f"{sys.executable} -m http.server --bind 127.0.0.1 {port}",
            "--url", f"http://127.0.0.1:{port}", "--out", str(tmp), "-n", "1"]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in p.stderr:
            m = _ATTACHED.search(line)
            if m:
                took = time.monotonic() - t0
                break
        else:
            raise RuntimeError(f"obsconform run ended (exit {p.wait()}) without attaching probes")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return {"to_attached_s": round(took, 3), "bpf_compile_s": float(m[2]),
            "bpf_compile_and_attach_s": float(m[1])}


def measure(runs: int = 3) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="obsconform-startup-") as d:
        rows = [once(Path(d)) for _ in range(runs)]
    return {
        "runs": rows,
        "median_to_attached_s": statistics.median(r["to_attached_s"] for r in rows),
        "median_bpf_compile_and_attach_s": statistics.median(r["bpf_compile_and_attach_s"] for r in rows),
    }
