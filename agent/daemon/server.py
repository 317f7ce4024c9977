"""`obsconform serve`: the daemon process — HTTP(S) server, run worker, signals, restart recovery."""

from __future__ import annotations

import fcntl
import logging
import signal
import socket
import ssl
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from agent._http import lingering_close
from agent.daemon.api import ApiHandler
from agent.daemon.config import DaemonConfig, StartupRefused, parse_listen, resolve_token, tls_context
from agent.daemon.metrics import DaemonMetrics
from agent.daemon.store import RunStore
from agent.daemon.worker import RunWorker
from agent.errors import ObsconformError

log = logging.getLogger(__name__)

# TLS handshakes happen on the handler thread, bounded, so one slow client cannot stall accept().
TLS_HANDSHAKE_TIMEOUT_S = 10.0
LOCK_NAME = "daemon.lock"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], daemon: "Daemon", tls: ssl.SSLContext | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.daemon = daemon
        self.tls = tls
        super().__init__(addr, ApiHandler)

    def finish_request(self, request, client_address):  # type: ignore[no-untyped-def]
        if self.tls is not None:
            request.settimeout(TLS_HANDSHAKE_TIMEOUT_S)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                log.debug("TLS handshake with %s failed: %s", client_address[0], e)
                return
        super().finish_request(request, client_address)

    def shutdown_request(self, request):  # type: ignore[no-untyped-def]
        lingering_close(request)  # a refused upload (413) must reach its client intact


def _lock_reports_dir(reports_dir: Path):
    """One daemon per reports directory: a second one would abort the first one's running run."""
    f = open(reports_dir / LOCK_NAME, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise StartupRefused(f"another obsconform daemon already uses --reports-dir {reports_dir}; "
                             "stop it or give another directory") from None
    return f


class Daemon:
    """The daemon's parts wired together; ``start()`` then ``stop()`` (tests drive it in-process too)."""

    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        host, port = parse_listen(cfg.listen)
        self.reports_dir = Path(cfg.reports_dir).resolve()
        try:
            self.reports_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ObsconformError(f"cannot create --reports-dir {cfg.reports_dir}: {e.strerror}") from e
        self._lock = _lock_reports_dir(self.reports_dir)
        self.token, self.token_file = resolve_token(cfg, host)
        tls = tls_context(cfg, host)
        self.store = RunStore(self.reports_dir)
        self.metrics = DaemonMetrics()
        self.metrics.watch_store(self.store)
        self.worker = RunWorker(self.store, self.metrics, reports_dir=self.reports_dir, run_timeout_s=cfg.run_timeout_s,
                                cancel_grace_s=cfg.cancel_grace_s)
        try:
            self.httpd = _Server((host, port), self, tls)
        except OSError as e:
            self.store.close()
            raise ObsconformError(f"cannot listen on {cfg.listen}: {e.strerror}; pick another --listen") from e
        self.scheme = "https" if tls else "http"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{self.scheme}://{'[%s]' % host if ':' in host else host}:{port}"

    def start(self) -> None:
        for run in self.worker.recover():
            log.warning("run %s: aborted (it was running when the previous daemon died)", run.id)
        self.worker.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="api", daemon=True)
        self._thread.start()
        log.warning("obsconform daemon listening on %s (reports in %s, exec %s)", self.url, self.reports_dir,
                    "allowed" if self.cfg.allow_exec else "refused")

    def stop(self, reason: str = "the daemon is stopping") -> None:
        """Stop accepting requests, stop the running run (marked aborted), close the index."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.worker.stop(reason):
            self.store.close()
        else:
            log.error("the run worker did not stop in time; exiting with the run still ending")
        self._lock.close()


def serve(cfg: DaemonConfig) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the process exit code."""
    daemon = Daemon(cfg)
    stop = threading.Event()
    got: list[str] = []

    def on_signal(signum, frame) -> None:
        got.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.start()
    print(f"obsconform: serving on {daemon.url}; token in {daemon.token_file}", flush=True)
    while not stop.wait(1.0):
        pass
    log.warning("received %s: stopping the current run and shutting down", got[0])
    daemon.stop(f"the daemon received {got[0]} during the run")
    return 0
