"""Command line: `python -m examples.refservice --port PORT [--host H] [--workers N]`."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.refservice",
        description="obsconform reference service (errortrace 0.4), served by gunicorn gthread.",
        epilog="Telemetry follows the standard OTEL_* environment; fault switches are FAULT_* "
        "variables (see examples/refservice/README.md).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=os.environ.get("PORT"), help="listen port (default: $PORT)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    args = parser.parse_args(argv)
    if args.port is None:
        parser.error("--port is required when PORT is not set")
    if not 0 < int(args.port) < 65536:
        parser.error(f"--port must be 1..65535, got {args.port}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    args.port = int(args.port)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    own_multiproc_dir = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Must be set before prometheus_client is first imported (it picks its value class then).
        own_multiproc_dir = tempfile.mkdtemp(prefix="refservice-prom-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_multiproc_dir

    from .errcodes import load_catalogue
    from .faults import ActiveFaults
    from .logs import setup_logging
    from .outbound import parse_downstream_url
    from .server import RefServiceApplication

    log = setup_logging()
    # Validate here, in the master: a worker that fails to boot only says "Worker failed to boot".
    try:
        faults = ActiveFaults.from_env()
        load_catalogue()
        if os.environ.get("OBSCONFORM_DOWNSTREAM_URL", "").strip():
            parse_downstream_url(os.environ["OBSCONFORM_DOWNSTREAM_URL"].strip())
    except (ValueError, OSError, KeyError, TypeError) as exc:
        print(f"refservice: {exc}", file=sys.stderr)
        if own_multiproc_dir:
            shutil.rmtree(own_multiproc_dir, ignore_errors=True)
        return 2
    log.info(
        "starting",
        extra={
            "fields": {
                "host": args.host,
                "port": args.port,
                "workers": args.workers,
                "faults": faults.describe(),
                "prometheus_multiproc_dir": os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
            }
        },
    )
    try:
        RefServiceApplication(args.host, args.port, args.workers, faults).run()
    finally:
        if own_multiproc_dir:
            shutil.rmtree(own_multiproc_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
