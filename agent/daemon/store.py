"""The daemon's run index: SQLite under the reports directory, so runs survive a restart."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INDEX_NAME = "runs.sqlite"
STATES = ("queued", "running", "done", "failed", "aborted", "cancelled")
ACTIVE = ("queued", "running")
# Progress messages kept per run; a chatty run cannot grow the index without bound.
MAX_PROGRESS = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- FIFO order of submission
    id           TEXT UNIQUE NOT NULL,
    state        TEXT NOT NULL,
    spec         TEXT NOT NULL,
    out_dir      TEXT NOT NULL,     -- the run's directory (absolute)
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    run_dir      TEXT,              -- the evidence directory, once the run reported it
    exit_code    INTEGER,
    verdict      TEXT,
    reason       TEXT,
    child_pid    INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_state ON runs(state, seq);
CREATE TABLE IF NOT EXISTS progress (
    run_id  TEXT NOT NULL,
    n       INTEGER NOT NULL,
    t       TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (run_id, n)
);
"""


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class RunRow:
    id: str
    state: str
    spec: dict
    out_dir: str
    created_at: str
    seq: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    run_dir: str | None = None
    exit_code: int | None = None
    verdict: str | None = None
    reason: str | None = None
    child_pid: int | None = None
    cancel_requested: bool = False
    progress: list[dict[str, Any]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        """The run as the API shows it (no host-internal pids)."""
        return {
            "id": self.id, "state": self.state, "label": self.spec.get("label", ""),
            "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
            "exit_code": self.exit_code, "verdict": self.verdict, "reason": self.reason,
            "run_dir": self.run_dir, "spec": self.spec, "progress": self.progress,
        }


class RunStore:
    """Thread-safe access to the run index; every write is one transaction."""

    def __init__(self, reports_dir: Path) -> None:
        self.path = Path(reports_dir) / INDEX_NAME
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a run's final state must survive power loss
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def _rows(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    @staticmethod
    def _row(r: sqlite3.Row) -> RunRow:
        d = dict(r)
        d["spec"] = json.loads(d["spec"])
        d["cancel_requested"] = bool(d["cancel_requested"])
        return RunRow(**d)

    def add(self, run_id: str, spec: dict, out_dir: Path) -> RunRow:
        text = json.dumps(spec)
        with self._lock:  # stamped where its queue position (seq) is taken: created_at order is FIFO order
            self._db.execute("INSERT INTO runs (id, state, spec, out_dir, created_at) VALUES (?, 'queued', ?, ?, ?)",
                             (run_id, text, str(out_dir), now()))
        return self.get(run_id)  # type: ignore[return-value]

    def get(self, run_id: str, since: int = 0) -> RunRow | None:
        rows = self._rows("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            return None
        run = self._row(rows[0])
        run.progress = [dict(p) for p in self._rows(
            "SELECT n, t, message FROM progress WHERE run_id = ? AND n >= ? ORDER BY n", (run_id, since))]
        return run

    def list(self, limit: int = 100) -> list[RunRow]:
        return [self._row(r) for r in self._rows("SELECT * FROM runs ORDER BY seq DESC LIMIT ?", (limit,))]

    def next_queued(self) -> RunRow | None:
        rows = self._rows("SELECT * FROM runs WHERE state = 'queued' ORDER BY seq LIMIT 1")
        return self._row(rows[0]) if rows else None

    def queue_position(self, run_id: str) -> int | None:
        """1 for the next run to start; None when the run is not queued."""
        rows = self._rows("SELECT COUNT(*) FROM runs WHERE state = 'queued' AND seq <= "
                          "(SELECT seq FROM runs WHERE id = ? AND state = 'queued')", (run_id,))
        n = rows[0][0]
        return n or None

    def count(self, state: str) -> int:
        return self._rows("SELECT COUNT(*) FROM runs WHERE state = ?", (state,))[0][0]

    def counts(self) -> dict[str, int]:
        got = {r[0]: r[1] for r in self._rows("SELECT state, COUNT(*) FROM runs GROUP BY state")}
        return {s: got.get(s, 0) for s in STATES}

    def start(self, run_id: str, child_pid: int) -> None:
        self._write("UPDATE runs SET state = 'running', started_at = ?, child_pid = ? WHERE id = ?",
                    (now(), child_pid, run_id))

    def set_run_dir(self, run_id: str, run_dir: str) -> None:
        self._write("UPDATE runs SET run_dir = ? WHERE id = ?", (run_dir, run_id))

    def finish(self, run_id: str, state: str, *, reason: str | None = None, exit_code: int | None = None,
               verdict: str | None = None, run_dir: str | None = None, message: str | None = None) -> None:
        """End a run; ``message`` is its last progress line, written in the same transaction
        (a client polling for the end state must find the closing line with it)."""
        assert state in STATES and state not in ACTIVE, state
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("UPDATE runs SET state = ?, finished_at = ?, reason = ?, exit_code = ?, "
                                 "verdict = ?, run_dir = COALESCE(?, run_dir), child_pid = NULL WHERE id = ?",
                                 (state, now(), reason, exit_code, verdict, run_dir, run_id))
                if message is not None:
                    self._insert_progress(run_id, message)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def cancel_queued(self, run_id: str) -> bool:
        """Cancel a run that has not started; False when it already left the queue."""
        return self._write("UPDATE runs SET state = 'cancelled', finished_at = ?, reason = ?, "
                           "cancel_requested = 1 WHERE id = ? AND state = 'queued'",
                           (now(), "cancelled before it started", run_id)) == 1

    def request_cancel(self, run_id: str) -> None:
        self._write("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (run_id,))

    def add_progress(self, run_id: str, message: str) -> None:
        with self._lock:
            self._insert_progress(run_id, message)

    def _insert_progress(self, run_id: str, message: str) -> None:  # the lock is held
        n = self._db.execute("SELECT COALESCE(MAX(n) + 1, 0) FROM progress WHERE run_id = ?",
                             (run_id,)).fetchone()[0]
        if n < MAX_PROGRESS:
            self._db.execute("INSERT INTO progress (run_id, n, t, message) VALUES (?, ?, ?, ?)",
                             (run_id, n, now(), message[:2000]))

    def recover(self, reason: str) -> list[RunRow]:
        """Mark runs left ``running`` by a previous daemon as aborted; returns them (with pids)."""
        stale = [self._row(r) for r in self._rows("SELECT * FROM runs WHERE state = 'running'")]
        for run in stale:
            self.finish(run.id, "aborted", reason=reason, message=f"aborted: {reason}")
        return stale
