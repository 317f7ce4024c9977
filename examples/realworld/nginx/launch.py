"""Render nginx.conf.template for one run and run nginx in the foreground until stopped.

nginx has no environment substitution in its config, so the port and the upstream of the
proxied route are written into a config under a temporary directory, removed at exit.
Usage: python -m examples.realworld.nginx.launch --port 8080 [--upstream URL]
(--upstream defaults to $OBSCONFORM_DOWNSTREAM_URL, the downstream sink of an --exec run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

TEMPLATE = Path(__file__).with_name("nginx.conf.template")


def render(port: int, upstream: str, rundir: Path) -> str:
    """The config text for ``port`` proxying /orders to ``upstream`` (http://host:port)."""
    netloc = urlsplit(upstream).netloc
    if not netloc:
        raise ValueError(f"upstream must be an http://host:port URL, got {upstream!r}")
    return (TEMPLATE.read_text().replace("@PORT@", str(port))
            .replace("@UPSTREAM@", netloc).replace("@RUNDIR@", str(rundir)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", default=os.environ.get("OBSCONFORM_DOWNSTREAM_URL", ""),
                   help="where /orders is proxied [default: $OBSCONFORM_DOWNSTREAM_URL]")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    args = p.parse_args(argv)
    # An unroutable upstream when none is given: /orders then answers 502, the rest works.
    upstream = args.upstream or "http://127.0.0.1:9"
    rundir = Path(tempfile.mkdtemp(prefix="obsconform-nginx-"))
    try:
        conf = rundir / "nginx.conf"
        conf.write_text(render(args.port, upstream, rundir))
        proc = subprocess.Popen([args.nginx, "-c", str(conf), "-p", str(rundir),
                                 "-g", "daemon off;"])
        # obsconform signals the whole process group; a lone signal to this launcher is
        # passed on, so nginx never outlives it.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, _f: proc.send_signal(s))
        return proc.wait()
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
