"""The obsconform daemon (`obsconform serve`): HTTP API, run queue, run index, containment."""

from agent.daemon.config import DEFAULT_LISTEN, DEFAULT_PORT, DaemonConfig, StartupRefused, read_token_file
from agent.daemon.server import Daemon, serve

__all__ = ["DEFAULT_LISTEN", "DEFAULT_PORT", "Daemon", "DaemonConfig", "StartupRefused", "read_token_file", "serve"]
