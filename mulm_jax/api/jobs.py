"""Background jobs (data set assembly, training) run as subprocesses, with their records kept in SQLite.

Each record names its owner, the API key that started it (keys.ApiKey.owner: a name or a fingerprint, never the
key); the methods that read or stop jobs take `owner` to see only that owner's (None: every job), and answer 404 for
another's as for a job that does not exist."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Optional

from mulm_jax.api.errors import ApiError
from mulm_jax.config import Config, ServeConfig, dump_config

KINDS = ("dataset", "training")
STATES = ("running", "succeeded", "failed", "cancelled", "interrupted")
RESUMABLE_STATES = ("interrupted", "cancelled", "failed")
ERROR_LOG_LINES = 20  # a failed job's `error`: the end of its log
SHUTDOWN_WAIT_S = 30.0  # how long close() lets running children save their state before killing them

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    created INTEGER NOT NULL,
    started INTEGER,
    finished INTEGER,
    request TEXT NOT NULL,
    command TEXT NOT NULL,
    workdir TEXT,
    log_path TEXT NOT NULL,
    pid INTEGER,
    exit_code INTEGER,
    error TEXT,
    result TEXT,
    owner TEXT,
    steps INTEGER
)
"""
ADDED_COLUMNS = {"owner": "TEXT", "steps": "INTEGER"}  # after the first release: added to older databases


def _now() -> int:
    return int(time.time())


def new_job_id() -> str:
    return f"job-{secrets.token_hex(6)}"


class JobManager:
    """Starts jobs, watches them to their end, and answers for their records; safe to call from any thread.

    Records live in `state_dir/mulm.sqlite3`, logs (stdout and stderr together) in `state_dir/logs/<id>.log`, the
    configs that jobs are handed in `state_dir/jobs/<id>.yaml`.
    """

    def __init__(self, settings: ServeConfig):
        state_dir = Path(settings.state_dir).resolve()
        self.logs_dir = state_dir / "logs"
        self.configs_dir = state_dir / "jobs"
        for folder in (self.logs_dir, self.configs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(state_dir / "mulm.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._processes: dict[str, subprocess.Popen] = {}
        self._watchers: dict[str, threading.Thread] = {}
        self._cancel_asked: set[str] = set()
        self._closing = False
        with self._lock:
            self._db.execute(_SCHEMA)
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for column, sql_type in ADDED_COLUMNS.items():
                if column not in columns:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {sql_type}")
            self._interrupt_orphans()

    def _interrupt_orphans(self) -> None:
        """Records still `running` belong to a server process that died. A child that outlived it is stopped
        the way cancel stops one (SIGTERM: a trainer saves a checkpoint), so that a resume is the only writer."""
        for row in self._db.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall():
            pid, command = row["pid"], json.loads(row["command"])
            if pid is not None and _runs(pid, command):
                os.killpg(pid, signal.SIGTERM)
                deadline = time.monotonic() + SHUTDOWN_WAIT_S
                while _runs(pid, command) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if _runs(pid, command):
                    os.killpg(pid, signal.SIGKILL)
            self._db.execute("UPDATE jobs SET state = 'interrupted', finished = ? WHERE id = ?", (_now(), row["id"]))

    def start(
        self,
        kind: str,
        command: list[str],
        *,
        workdir: Optional[str],
        request: dict,
        config: Optional[Config] = None,
        job_id: Optional[str] = None,
        owner: Optional[str] = None,
        steps: Optional[int] = None,
    ) -> dict:
        """Launch `command` as a new job (id: `job_id`, or a fresh one) for `owner` and return its record; with
        `config`, the command is handed it as `--config FILE`; `steps`: a training job's, for the quotas."""
        if kind not in KINDS:
            raise ValueError(f"job kind {kind!r} is not one of {', '.join(KINDS)}")
        job_id = job_id or new_job_id()
        now = _now()
        with self._lock:
            self._check_workdir_free(workdir, job_id)
            if config is not None:
                command = [*command, "--config", str(self._write_config(job_id, config))]
            self._db.execute(
                "INSERT INTO jobs (id, kind, state, created, started, request, command, workdir, log_path, owner, "
                "steps) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    kind,
                    now,
                    now,
                    json.dumps(request),
                    json.dumps(command),
                    workdir,
                    str(self.logs_dir / f"{job_id}.log"),
                    owner,
                    steps,
                ),
            )
            self._launch(job_id)
        return self.get(job_id)

    def get(self, job_id: str, kind: Optional[str] = None, owner: Optional[str] = None) -> dict:
        """The job's record as clients see it; 404 when no job of that id (and `kind`, and `owner`, when given)
        exists."""
        return _public(self._row(job_id, kind, owner))

    def list(self, kind: str, owner: Optional[str] = None) -> list[dict]:
        """The jobs of one kind (and `owner`, when given), newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE kind = ? AND (? IS NULL OR owner = ?) ORDER BY created DESC, rowid DESC",
                (kind, owner, owner),
            ).fetchall()
        return [_public(row) for row in rows]

    def running(self, owner: Optional[str]) -> list[dict]:
        """The owner's running jobs, of both kinds."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE state = 'running' AND owner IS ?", (owner,)).fetchall()
        return [_public(row) for row in rows]

    def workdir_owners(self, workdir: str) -> set[Optional[str]]:
        """The owners of the training jobs that wrote to run folder `workdir` (empty: no job made it)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT owner FROM jobs WHERE kind = 'training' AND workdir = ?", (workdir,)
            ).fetchall()
        return {row["owner"] for row in rows}

    def cancel(self, job_id: str, kind: Optional[str] = None, owner: Optional[str] = None) -> dict:
        """Ask a running job to stop (SIGTERM to its process group); its state becomes `cancelled` when it exits."""
        with self._lock:
            row = self._row_locked(job_id, kind, owner)
            process = self._processes.get(job_id)
            if row["state"] != "running" or process is None:
                raise ApiError(
                    409,
                    f"job {job_id!r} is {row['state']}, not running: there is nothing to cancel",
                    code="job_not_running",
                )
            self._cancel_asked.add(job_id)
            _signal_group(process, signal.SIGTERM)
            return _public(row)

    def resume(self, job_id: str, owner: Optional[str] = None) -> dict:
        """Relaunch a stopped training job with its command and id; the trainer resumes from its checkpoint."""
        with self._lock:
            row = self._row_locked(job_id, "training", owner)
            if row["state"] not in RESUMABLE_STATES:
                raise ApiError(
                    409,
                    f"job {job_id!r} is {row['state']}: only a job that is "
                    f"{', '.join(RESUMABLE_STATES)} can be resumed",
                    code="job_not_resumable",
                )
            self._check_workdir_free(row["workdir"], job_id)
            self._db.execute(
                "UPDATE jobs SET state = 'running', started = ?, finished = NULL, exit_code = NULL, "
                "error = NULL, result = NULL WHERE id = ?",
                (_now(), job_id),
            )
            self._launch(job_id)
        return self.get(job_id)

    def counts_by_state(self, kind: str) -> dict[str, int]:
        """Jobs of one kind per state, every state present (zero included)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT state, COUNT(*) FROM jobs WHERE kind = ? GROUP BY state", (kind,)
            ).fetchall()
        return {state: 0 for state in STATES} | {state: n for state, n in rows}

    def close(self) -> None:
        """On shutdown: SIGTERM every running child, wait for them (then kill), record them `interrupted`."""
        with self._lock:
            self._closing = True
            for process in self._processes.values():
                _signal_group(process, signal.SIGTERM)
            running = [(self._processes[job_id], watcher) for job_id, watcher in self._watchers.items()]
        deadline = time.monotonic() + SHUTDOWN_WAIT_S
        for process, watcher in running:
            watcher.join(max(deadline - time.monotonic(), 0.0))
            if watcher.is_alive():
                _signal_group(process, signal.SIGKILL)
                watcher.join()
        self._db.close()

    def _launch(self, job_id: str) -> None:
        """Start the job's command (lock held); a command that cannot start fails the job at once."""
        row = self._row_locked(job_id, None)
        try:
            with open(row["log_path"], "ab") as log:
                process = subprocess.Popen(
                    json.loads(row["command"]),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=_child_env(),
                )
        except OSError as e:
            self._db.execute(
                "UPDATE jobs SET state = 'failed', finished = ?, error = ? WHERE id = ?",
                (_now(), f"the command could not start: {e}", job_id),
            )
            return
        self._db.execute("UPDATE jobs SET pid = ? WHERE id = ?", (process.pid, job_id))
        self._processes[job_id] = process
        watcher = threading.Thread(target=self._watch, args=(job_id, process), name=f"mulm-{job_id}", daemon=True)
        self._watchers[job_id] = watcher
        watcher.start()

    def _watch(self, job_id: str, process: subprocess.Popen) -> None:
        exit_code = process.wait()
        with self._lock:
            row = self._row_locked(job_id, None)
            result, problem = None, f"exit code {exit_code}"
            if self._closing:
                state = "interrupted"
            elif job_id in self._cancel_asked:
                state = "cancelled"  # before the exit code: a trainer stopped by SIGTERM saves and exits 0
            elif exit_code != 0:
                state = "failed"
            elif row["kind"] == "dataset" and (result := _manifest_from_log(Path(row["log_path"]))) is None:
                state, problem = "failed", "exit code 0, but the log's last line is not a manifest"
            else:
                state = "succeeded"
            error = f"{problem}; the log ends:\n{_log_tail(Path(row['log_path']))}" if state == "failed" else None
            self._db.execute(
                "UPDATE jobs SET state = ?, finished = ?, exit_code = ?, error = ?, result = ? WHERE id = ?",
                (state, _now(), exit_code, error, None if result is None else json.dumps(result), job_id),
            )
            self._cancel_asked.discard(job_id)
            self._processes.pop(job_id, None)
            self._watchers.pop(job_id, None)

    def _write_config(self, job_id: str, config: Config) -> Path:
        """The job's config file, written whole or not at all (a temporary file, then renamed)."""
        path = self.configs_dir / f"{job_id}.yaml"
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(dump_config(config))
        os.replace(temporary, path)
        return path

    def _check_workdir_free(self, workdir: Optional[str], job_id: str) -> None:
        if workdir is None:
            return
        other = self._db.execute(
            "SELECT id FROM jobs WHERE state = 'running' AND workdir = ? AND id != ?", (workdir, job_id)
        ).fetchone()
        if other is not None:
            raise ApiError(
                409,
                f"run folder {workdir!r} is in use by running job {other['id']!r}; cancel it or choose another name",
                code="workdir_in_use",
            )

    def _row(self, job_id: str, kind: Optional[str], owner: Optional[str] = None) -> sqlite3.Row:
        with self._lock:
            return self._row_locked(job_id, kind, owner)

    def _row_locked(self, job_id: str, kind: Optional[str], owner: Optional[str] = None) -> sqlite3.Row:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if (
            row is None
            or (kind is not None and row["kind"] != kind)
            or (owner is not None and row["owner"] != owner)  # another key's job: as if there were none
        ):
            what = f"{kind} job" if kind else "job"
            raise ApiError(
                404, f"no {what} with id {job_id!r}", type="not_found_error", param="id", code="job_not_found"
            )
        return row


def _public(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": f"{row['kind']}.job",
        "state": row["state"],
        "created": row["created"],
        "started": row["started"],
        "finished": row["finished"],
        "workdir": row["workdir"],
        "exit_code": row["exit_code"],
        "error": row["error"],
        "request": json.loads(row["request"]),
        "result": None if row["result"] is None else json.loads(row["result"]),
        "owner": row["owner"],
        "steps": row["steps"],  # a training job's train.steps (null: a data set job)
    }


def _child_env() -> dict[str, str]:
    """The server's environment, with unbuffered output (so a job's log reads in the order things happened)."""
    return dict(os.environ, PYTHONUNBUFFERED="1")


def _runs(pid: int, command: list[str]) -> bool:
    """Whether process `pid` is alive and runs `command` (not another process that reuses the pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmdline.split(b"\0")[:-1] == [part.encode() for part in command]


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has exited already
        os.killpg(process.pid, signum)  # start_new_session: the child leads its own group


def _log_lines(path: Path, max_bytes: int = 16384) -> list[str]:
    with open(path, "rb") as f:
        f.seek(max(f.seek(0, os.SEEK_END) - max_bytes, 0))
        return f.read().decode("utf-8", errors="replace").splitlines()


def _log_tail(path: Path) -> str:
    return "\n".join(_log_lines(path)[-ERROR_LOG_LINES:])


def _manifest_from_log(path: Path) -> Optional[dict]:
    """The manifest that `data assemble --json` prints as its last line (trailing blank lines skipped)."""
    lines = [line for line in _log_lines(path, 1 << 22) if line.strip()]
    if not lines:
        return None
    try:
        manifest = json.loads(lines[-1])
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) else None
