"""The process one daemon run executes in: ``python -m agent.daemon.child`` (never called by hand).

It holds the run's eBPF probes, so the kernel detaches them whenever it ends: normally,
on cancel (SIGTERM unwinds the run like Ctrl-C), or killed with the daemon (parent-death
signal). It reports to the daemon as JSON lines on the file descriptor the daemon passed:
``{"progress": msg}`` while running, then one ``{"result": ...}`` or ``{"error": ...}``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

from agent.daemon.worker import ENV_CGROUP, ENV_FD, ENV_OUT, ENV_PARENT, ENV_SPEC

EXIT_CANCELLED = 130


def _on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    from agent.daemon.containment import join_cgroup, set_parent_death_signal

    set_parent_death_signal()
    if str(os.getppid()) != os.environ.get(ENV_PARENT):
        return 1  # the daemon died before the signal was armed: nobody wants this run
    join_cgroup(os.environ.get(ENV_CGROUP, ""))
    signal.signal(signal.SIGTERM, _on_sigterm)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    events = os.fdopen(int(os.environ[ENV_FD]), "w", buffering=1, encoding="utf-8")

    def emit(**record) -> None:
        events.write(json.dumps(record, default=str) + "\n")

    try:
        from agent.daemon.spec import run_config
        from agent.errors import ObsconformError
        from agent.runner import run

        spec = json.loads(Path(os.environ[ENV_SPEC]).read_text(encoding="utf-8"))
        cfg = run_config(spec, Path(os.environ[ENV_OUT]))
        try:
            result = run(cfg, progress=lambda msg: emit(progress=msg))
        except ObsconformError as e:
            emit(error=str(e))
            return e.exit_code
        emit(result={"exit_code": result.exit_code, "verdict": result.report["summary"]["verdict"],
                     "run_dir": str(result.run_dir), "report_path": str(result.report_path)})
        return 0
    except KeyboardInterrupt:
        emit(error="cancelled; probes detached, evidence recorded so far kept")
        return EXIT_CANCELLED
    except Exception as e:  # a bug must still reach the daemon as a failed run, with its cause
        logging.exception("run failed")
        emit(error=f"internal error: {type(e).__name__}: {e}")
        return 1
    finally:
        events.close()


if __name__ == "__main__":
    sys.exit(main())
