"""`obsconform run --agent URL`: submit a run to a remote daemon, follow it, fetch report and evidence."""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable
from urllib.parse import urlsplit

from agent import REPORT_NAME
from agent.errors import ObsconformError
from agent.evidence import write_json_atomic

log = logging.getLogger(__name__)

POLL_S = 1.0
HTTP_TIMEOUT_S = 30.0
# Bound on what an evidence archive may unpack to, so a hostile agent cannot fill the disk.
MAX_EVIDENCE_BYTES = 2 * 1024**3


class RemoteError(ObsconformError):
    """The remote agent refused the run, failed it, or could not be reached."""


@dataclass
class RemoteResult:
    run_id: str
    report: dict
    report_path: Path  # local copy
    run_dir: Path | None  # local copy of the evidence directory
    exit_code: int


class AgentClient:
    """A small HTTP(S) client of the daemon API; TLS trust comes from the system (or SSL_CERT_FILE)."""

    def __init__(self, base_url: str, token: str, timeout_s: float = HTTP_TIMEOUT_S) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"--agent {base_url!r} is not an http(s):// URL, e.g. http://testhost:9477")
        self.base_url = base_url.rstrip("/")
        self._parts = parts
        self._token = token
        self._timeout = timeout_s

    def _conn(self) -> http.client.HTTPConnection:
        p = self._parts
        if p.scheme == "https":
            return http.client.HTTPSConnection(p.hostname, p.port or 443, timeout=self._timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(p.hostname, p.port or 80, timeout=self._timeout)

    def request(self, method: str, path: str, body: Any = None, *, stream_to: Path | None = None) -> tuple[int, Any]:
        """One API call; returns (status, decoded JSON or None). ``stream_to`` saves the body to a file."""
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._conn()
        try:
            conn.request(method, self._parts.path.rstrip("/") + path, body=data, headers=headers)
            resp = conn.getresponse()
            if stream_to is not None and resp.status == 200:
                with open(stream_to, "wb") as f:
                    while chunk := resp.read(256 * 1024):
                        f.write(chunk)
                return resp.status, None
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise RemoteError(f"cannot reach the agent at {self.base_url}: {e}; check --agent and that "
                              "`obsconform serve` runs there") from e
        finally:
            conn.close()
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = {"error": raw[:200].decode("utf-8", "replace")}
        return resp.status, decoded

    def call(self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200,)) -> Any:
        status, data = self.request(method, path, body)
        if status not in expect:
            message = data.get("error") if isinstance(data, dict) else None
            raise RemoteError(f"the agent answered {status} to {method} {path}: {message or 'no detail'}")
        return data


def spec_from_options(**opts: Any) -> dict:
    """A run spec from `obsconform run` options (None and empty values left out)."""
    rename = {"exec_cmd": "exec"}
    spec: dict[str, Any] = {}
    for key, value in opts.items():
        if value is None or value == [] or value == () or value is False:
            continue
        spec[rename.get(key, key)] = list(value) if isinstance(value, tuple) else value
    return spec


def _safe_extract(archive: Path, dest: Path) -> None:
    """Unpack an evidence archive, refusing links, devices and members that leave ``dest``."""
    total = 0
    with tarfile.open(archive, "r:gz") as tar:
        members = []
        for m in tar.getmembers():
            name = PurePosixPath(m.name)
            if name.is_absolute() or ".." in name.parts or not (m.isfile() or m.isdir()):
                raise RemoteError(f"the evidence archive holds an unsafe member {m.name!r}; not unpacked")
            total += m.size
            members.append(m)
        if total > MAX_EVIDENCE_BYTES:
            raise RemoteError(f"the evidence archive unpacks to {total} bytes, over the {MAX_EVIDENCE_BYTES} limit")
        # Members were vetted above; the stdlib "data" filter (Python >= 3.11.4) re-checks them.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:
            tar.extractall(dest, members=members)


def run_remote(agent_url: str, token_file: Path, spec: dict, out_dir: Path,
               progress: Callable[[str], None] = lambda msg: None, poll_s: float = POLL_S) -> RemoteResult:
    """Submit ``spec``, print its progress, then download report and evidence into ``out_dir``.

    The local ``out_dir`` ends up laid out like a local run's: ``runs/<run dir>/...`` plus the
    latest ``CNCF-compliance-report.json``. Ctrl-C (or SIGTERM) cancels the remote run.
    """
    from agent.daemon.config import read_token_file

    client = AgentClient(agent_url, read_token_file(token_file))
    accepted = client.call("POST", "/v1/runs", spec, expect=(202,))
    run_id = accepted["id"]
    progress(f"submitted run {run_id} to {client.base_url}")
    try:
        run = _follow(client, run_id, progress, poll_s)
    except KeyboardInterrupt:
        progress(f"cancelling remote run {run_id}")
        try:
            client.call("POST", f"/v1/runs/{run_id}/cancel", expect=(202, 409))
        except RemoteError as e:
            log.warning("could not cancel remote run %s: %s", run_id, e)
        raise
    out_dir = Path(out_dir)
    local_run_dir = _fetch_evidence(client, run_id, run, out_dir, progress)
    if run["state"] != "done":
        raise RemoteError(f"remote run {run_id} {run['state']}: {run.get('reason') or 'no reason given'}"
                          + (f"; evidence in {out_dir}" if local_run_dir else ""))
    report = client.call("GET", f"/v1/runs/{run_id}/report")
    report_path = out_dir / REPORT_NAME
    write_json_atomic(report_path, report)
    if local_run_dir is not None:
        write_json_atomic(local_run_dir / REPORT_NAME, report)
    from conformance import exit_code

    return RemoteResult(run_id, report, report_path, local_run_dir, exit_code(report["summary"]["verdict"]))


def _follow(client: AgentClient, run_id: str, progress: Callable[[str], None], poll_s: float) -> dict:
    seen = 0
    last_position = None
    while True:
        run = client.call("GET", f"/v1/runs/{run_id}?since={seen}")
        for p in run.get("progress", []):
            progress(p["message"])
            seen = p["n"] + 1
        if run["state"] == "queued" and run.get("position") != last_position:
            last_position = run.get("position")
            progress(f"queued behind {last_position - 1} other runs" if last_position and last_position > 1
                     else "queued: next to run")
        if run["state"] not in ("queued", "running"):
            return run
        time.sleep(poll_s)  # polling interval of a remote API, not synchronisation


def _fetch_evidence(client: AgentClient, run_id: str, run: dict, out_dir: Path,
                    progress: Callable[[str], None]) -> Path | None:
    """Download and unpack the evidence; returns the local evidence directory (None if absent)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".evidence-", suffix=".tar.gz", dir=out_dir)
    os.close(fd)
    try:
        status, data = client.request("GET", f"/v1/runs/{run_id}/evidence", stream_to=Path(tmp))
        if status == 404:
            return None
        if status != 200:
            raise RemoteError(f"cannot download the evidence of run {run_id}: {status} "
                              f"{(data or {}).get('error', '')}")
        _safe_extract(Path(tmp), out_dir)
    finally:
        os.unlink(tmp)
    remote_dir = run.get("run_dir")
    local = out_dir / "runs" / PurePosixPath(remote_dir).name if remote_dir else None
    if local is not None and local.is_dir():
        progress(f"evidence downloaded to {local}")
        return local
    return None


def run_from_cli(agent_url: str, token_file: Path | None, *, out_dir: Path, junit: Path | None,
                 progress: Callable[[str], None], **run_options: Any) -> RemoteResult:
    """`obsconform run --agent`: the options become a run spec; JUnit is written locally."""
    if token_file is None:
        raise RemoteError("--agent needs --token-file FILE holding the agent's bearer token")
    result = run_remote(agent_url, token_file, spec_from_options(**run_options), out_dir, progress)
    if junit is not None:
        from agent.evidence import write_text_atomic
        from conformance import render_junit

        write_text_atomic(junit, render_junit(result.report))
    return result
