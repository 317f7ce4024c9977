"""The service under test as a process: launch it (--exec) or find it, wait until it answers."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from agent.errors import InputError, TargetError

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# The batch span processor's export timer. The OTel spec's default is 5 s; an --exec SUT gets
# this shorter one (unless the caller set its own) so that a run need not wait that long.
OTEL_BSP_DEFAULT_MS = 5000
EXEC_BSP_SCHEDULE_DELAY_MS = 200


def host_port(url: str) -> tuple[str, int]:
    """The (host, port) a base URL points at; a clear error when it is not http(s)://host[:port]."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"--url {url!r} is not an http:// URL; give the SUT's base URL, e.g. http://127.0.0.1:8080")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise InputError(f"--url {url!r} has an invalid port") from e
    return parts.hostname, port


def tcp_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def otel_environment(base: dict[str, str], otlp_endpoint: str, downstream_url: str,
                     protocol: str = "http/protobuf") -> dict[str, str]:
    """The caller's environment with the standard OTel variables pointed at our receiver
    (``protocol`` "grpc" when the endpoint is the OTLP/gRPC receiver)."""
    env = dict(base)
    env.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OBSCONFORM_DOWNSTREAM_URL": downstream_url,
        }
    )
    # Signal-specific endpoints or protocols in the caller's env would send telemetry elsewhere.
    for signal_name in ("TRACES", "METRICS", "LOGS"):
        env.pop(f"OTEL_EXPORTER_OTLP_{signal_name}_ENDPOINT", None)
        env.pop(f"OTEL_EXPORTER_OTLP_{signal_name}_PROTOCOL", None)
    env.setdefault("OTEL_SERVICE_NAME", "sut")
    env.setdefault("OTEL_BSP_SCHEDULE_DELAY", str(EXEC_BSP_SCHEDULE_DELAY_MS))
    return env


def span_export_delay_s(env: dict[str, str]) -> float | None:
    """How long the SUT's batch span processor may hold a finished span (its export timer),
    from its environment; None when nothing in it says the process uses OpenTelemetry."""
    raw = env.get("OTEL_BSP_SCHEDULE_DELAY")
    if raw is None:
        return OTEL_BSP_DEFAULT_MS / 1000.0 if any(k.startswith("OTEL_") for k in env) else None
    try:
        return max(0.0, float(raw)) / 1000.0
    except ValueError:
        return OTEL_BSP_DEFAULT_MS / 1000.0  # the SDK ignores a bad value the same way


def process_environ(pid: int) -> dict[str, str]:
    """A running process's initial environment (empty when it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


class LaunchedSut:
    """A SUT started by ``--exec``: its whole process tree is the target.

    The child blocks on a pipe between fork and exec until ``release()``: the caller adds
    the child's pid to the kernel target set first, so no fork of the SUT escapes the probes.
    """

    def __init__(self, command: str, env: dict[str, str], log_path: Path,
                 on_line: Callable[[str], None] | None = None) -> None:
        argv = shlex.split(command)
        if not argv:
            raise InputError("--exec needs a command, e.g. --exec 'gunicorn app:app'")
        if shutil.which(argv[0]) is None:
            raise InputError(f"--exec: command {argv[0]!r} not found; give a path or a command on PATH")
        self.command = command
        # The child waits in a tiny shell reading its stdin (our pipe) until release(), then
        # execs the SUT in place (same pid) with stdin from /dev/null. A preexec_fn would do
        # the same but is unsafe with our threads.
        gate_r, self._gate_w = os.pipe()
        gate = ["/bin/sh", "-c", 'read _; exec "$@" </dev/null', "obsconform-gate"]
        self._log = open(log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                gate + argv, env=env, stdin=gate_r, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as e:
            self._log.close()
            os.close(self._gate_w)
            raise TargetError(f"cannot start the --exec command: {e.strerror}") from e
        finally:
            os.close(gate_r)
        self.pid = self.proc.pid
        self._stopped = False
        self._on_line = on_line
        self._pump = threading.Thread(target=self._pump_output, name="sut-output", daemon=True)
        self._pump.start()

    def release(self) -> None:
        """Let the child exec the SUT (after its pid is a kernel target)."""
        if self._gate_w >= 0:
            try:
                os.write(self._gate_w, b"\n")
            except BrokenPipeError:  # the gate shell died; wait_ready reports the exit
                pass
            os.close(self._gate_w)
            self._gate_w = -1

    def _pump_output(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._log.write(raw)
            self._log.flush()
            if self._on_line is not None:
                try:
                    self._on_line(raw.decode("utf-8", "replace"))
                except Exception:  # one odd line must not stop the pump
                    log.debug("SUT output line not handled", exc_info=True)

    def exited(self) -> int | None:
        return self.proc.poll()

    def wait_ready(self, host: str, port: int, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Poll until the SUT accepts TCP connections; returns seconds waited."""
        t0 = time.monotonic()
        delay = 0.02
        while True:
            code = self.exited()
            if code is not None:
                raise TargetError(
                    f"the SUT exited with code {code} before it listened on {host}:{port}; "
                    f"see {self._log.name} for its output"
                )
            if tcp_open(host, port):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise TargetError(
                    f"the SUT did not listen on {host}:{port} within {timeout_s:.0f} s; "
                    "check --url matches the port the command serves on"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the whole process group (lets exporters flush), SIGKILL it after the timeout.

        The group is signalled even when the leader already exited: a shell wrapper that
        dies leaves its children (the real server) running in the group. Idempotent.
        """
        self.release()
        if self._stopped:  # never signal the pgid again: its number may belong to others by now
            return self.proc.returncode
        self._stopped = True
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        deadline = time.monotonic() + timeout_s
        _killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        # With the leader reaped, the group lives on only in its other members.
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.proc.poll() is None or _group_alive(pgid):
            log.warning("SUT did not exit %.0f s after SIGTERM; killing its process group", timeout_s)
            _killpg(pgid, signal.SIGKILL)
            self.proc.wait()
        # The pump ends at EOF, once no process of the group holds the pipe: join it before
        # closing the log it writes to.
        self._pump.join(timeout=5)
        if self._pump.is_alive():
            log.warning("SUT output still open after stop (a process outside the group holds it)")
        elif not self._log.closed:
            self._log.close()
        return self.proc.returncode


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone (or the pgid was never ours to signal)


def _group_alive(pgid: int) -> bool:
    """True while a live process (not a zombie: an orphan's zombie waits on whoever reaps
    for PID 1, which in a container may be nobody) is in the process group."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False
