"""Daemon settings: listen address, bearer token, TLS, and the start-up refusals that keep it safe."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from agent import _http
from agent.errors import InputError, ObsconformError

log = logging.getLogger(__name__)

DEFAULT_PORT = 9477
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_REPORTS_DIR = Path("/var/lib/obsconform/reports")
# Bodies larger than this are refused with 413 before they are read: a run spec is small.
MAX_BODY_BYTES = 64 * 1024
# Runs waiting behind the current one; more are refused with 429 instead of piling up.
MAX_QUEUED = 64
# A run still going after this long is stopped and marked aborted.
DEFAULT_RUN_TIMEOUT_S = 1800.0
# How long a cancelled or timed-out run gets to unwind (detach probes, stop the SUT)
# before its whole process tree is killed.
CANCEL_GRACE_S = 20.0
# A token generated for a loopback daemon started without --token-file.
GENERATED_TOKEN_NAME = "daemon.token"
MIN_TOKEN_CHARS = 16


class StartupRefused(ObsconformError):
    """The daemon will not start with these settings (they would be unsafe or cannot work)."""


@dataclass
class DaemonConfig:
    listen: str = DEFAULT_LISTEN
    reports_dir: Path = DEFAULT_REPORTS_DIR
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_exec: bool = False
    run_timeout_s: float = DEFAULT_RUN_TIMEOUT_S
    max_body_bytes: int = MAX_BODY_BYTES
    max_queued: int = MAX_QUEUED
    cancel_grace_s: float = CANCEL_GRACE_S


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` with an IP literal (or ``localhost``) → (host, port)."""
    return _http.parse_listen(listen, "--listen", DEFAULT_LISTEN)


def is_loopback(host: str) -> bool:
    """True only for loopback addresses; the wildcard (0.0.0.0, ::) listens on every interface."""
    return ipaddress.ip_address(host).is_loopback


def read_token_file(path: Path) -> str:
    """The bearer token in ``path`` (surrounding whitespace stripped); a clear error otherwise."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise InputError(f"cannot read the token file {path}: {e.strerror}; give a readable --token-file") from e
    except UnicodeDecodeError as e:
        raise InputError(f"the token file {path} is not UTF-8 text") from e
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise InputError(f"the token file {path} must hold one token of at least {MIN_TOKEN_CHARS} characters "
                         "without spaces; make one with: openssl rand -hex 32")
    return token


def _warn_if_readable_by_others(path: Path) -> None:
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("token file %s is readable by other users; chmod 600 it", path)


def generate_token_file(reports_dir: Path) -> Path:
    """Create (or reuse) a random token under the reports directory, readable by root only."""
    path = Path(reports_dir) / GENERATED_TOKEN_NAME
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_hex(32) + "\n")
    return path


def resolve_token(cfg: DaemonConfig, host: str) -> tuple[str, Path]:
    """The token every /v1 request must carry, and the file it came from.

    Refuses a non-loopback listen without an explicit token file: a generated token
    would be a secret nobody on the remote side has, and no token is not an option.
    """
    if cfg.token_file is None:
        if not is_loopback(host):
            raise StartupRefused(f"refusing to listen on {host} (not loopback) without a token: "
                                 "pass --token-file FILE (make one with: openssl rand -hex 32 > FILE)")
        path = generate_token_file(cfg.reports_dir)
        log.warning("no --token-file given: clients must use the generated token in %s", path)
    else:
        path = Path(cfg.token_file)
    token = read_token_file(path)
    _warn_if_readable_by_others(path)
    return token, path


def tls_context(cfg: DaemonConfig, host: str) -> ssl.SSLContext | None:
    """A server TLS context from --tls-cert/--tls-key, or None (with a warning off loopback)."""
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise InputError("give both --tls-cert and --tls-key, or neither")
    if cfg.tls_cert is None:
        if not is_loopback(host):
            log.warning("listening on %s without TLS: the token and reports cross the network in clear "
                        "text; pass --tls-cert and --tls-key", host)
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
    except (OSError, ssl.SSLError) as e:
        raise InputError(f"cannot load --tls-cert {cfg.tls_cert} / --tls-key {cfg.tls_key}: {e}") from e
    return ctx
