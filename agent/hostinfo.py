"""What host a run happened on: the report's `host` block."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path


def bcc_version() -> str:
    try:
        import bcc  # Debian python3-bpfcc

        return str(getattr(bcc, "__version__", "unknown"))
    except Exception:  # bcc missing or broken: the report says so instead of failing
        return ""


def host_info() -> dict:
    uname = platform.uname()
    return {
        "hostname": socket.gethostname(),
        "kernel": uname.release,
        "arch": uname.machine,
        "btf": Path("/sys/kernel/btf/vmlinux").exists(),
        "bcc_version": bcc_version(),
        "cpus": os.cpu_count() or 0,
    }
