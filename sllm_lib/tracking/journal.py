"""The tracking journal: what could not reach the tracking server, kept on disk until it can.

A training run must never stall or die because the tracking server is down or hung, and must
lose nothing. `BoundedClient` runs every tracking call in a helper thread and waits at most
`call_timeout_s`; a call that fails or times out is appended to `tracking_journal.jsonl` in the
stage (or run) folder, and later calls skip the server for a cool-down instead of each waiting
out the timeout. The journal is replayed in order when the server answers again: automatically at
stage end, and by `sllm tracking sync RUN_DIR`.

Replays are idempotent, so nothing is duplicated: metrics carry their original timestamp and step
(MLflow keeps one row per key/timestamp/step/value), params are rewritten with the same value,
tags and statuses overwrite, artifacts overwrite the same path. A replayed entry gets a `done`
line appended, so a second sync does nothing. Journal lines are appended whole with fsync; a line
torn by a crash is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

JOURNAL = "tracking_journal.jsonl"
SPOOL = "tracking_spool"


@dataclass
class ReplayStats:
    replayed: int = 0
    failed: int = 0
    pending: int = 0
    error: str | None = None


class Journal:
    """Append-only JSONL of tracking operations and their `done` markers."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a line torn by a crash stays alone on its line, skipped on read
                os.write(fd, line)  # one write of the whole line: O_APPEND keeps lines whole
                os.fsync(fd)
            finally:
                os.close(fd)

    def add(self, op: str, run_id: str, payload: dict[str, Any]) -> str:
        """Record one operation; files named in an artifact payload are copied into the spool first."""
        entry_id = uuid.uuid4().hex
        if op == "log_artifact":
            src = Path(payload["local_path"])
            dst = self.path.parent / SPOOL / entry_id / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
            payload = {**payload, "local_path": str(dst)}
        self._append({"id": entry_id, "op": op, "run_id": run_id, "time": time.time(), "payload": payload})
        return entry_id

    def mark_done(self, entry_id: str) -> None:
        self._append({"done": entry_id})

    def entries(self) -> list[dict[str, Any]]:
        """Pending operations in the order they were recorded."""
        if not self.path.is_file():
            return []
        ops: list[dict[str, Any]] = []
        done: set[str] = set()
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    log.warning("%s:%d: torn journal line skipped", self.path, n)
                    continue
                if "done" in entry:
                    done.add(entry["done"])
                else:
                    ops.append(entry)
        return [e for e in ops if e["id"] not in done]

    def replay(self, client: Any) -> ReplayStats:
        """Apply pending operations in order; stop at the first failure (the server is still away)."""
        stats = ReplayStats()
        pending = self.entries()
        for i, entry in enumerate(pending):
            try:
                apply_op(client, entry["op"], entry["run_id"], entry["payload"])
            except Exception as exc:
                stats.failed += 1
                stats.pending = len(pending) - i
                stats.error = f"{type(exc).__name__}: {exc}"
                return stats
            self.mark_done(entry["id"])
            stats.replayed += 1
        if not self.entries():
            shutil.rmtree(self.path.parent / SPOOL, ignore_errors=True)
        return stats


def apply_op(client: Any, op: str, run_id: str, p: dict[str, Any]) -> None:
    """Perform one journaled operation against the tracking server."""
    from mlflow.entities import Metric, Param, RunTag

    if op == "log_batch":
        metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in p.get("metrics", [])]
        params = [Param(k, v) for k, v in p.get("params", [])]
        tags = [RunTag(k, v) for k, v in p.get("tags", [])]
        for i in range(0, max(len(metrics), len(params), len(tags), 1), 100):
            client.log_batch(run_id, metrics=metrics[i:i + 100], params=params[i:i + 100], tags=tags[i:i + 100])
    elif op == "log_artifact":
        path = Path(p["local_path"])
        if path.is_dir():
            client.log_artifacts(run_id, str(path), p.get("artifact_path"))
        else:
            client.log_artifact(run_id, str(path), p.get("artifact_path"))
    elif op == "log_inputs":
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [DatasetInput(Dataset(**d["dataset"]), tags=[InputTag(k, v) for k, v in d["tags"]])
                  for d in p["datasets"]]
        client.log_inputs(run_id, datasets=inputs)
    elif op == "set_status":
        if p["status"] == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_terminated(run_id, status=p["status"], end_time=p.get("end_time"))
    elif op == "set_tag":
        client.set_tag(run_id, p["key"], p["value"])
    else:
        raise ValueError(f"unknown journal operation {op!r}")


class BoundedClient:
    """Runs tracking calls with a deadline; failures go to the journal (or raise when strict).

    After a failure the server is presumed away for `cooldown_s`: calls go straight to the journal
    without waiting, then one call probes it again. So an outage costs training one timeout, not
    one per logging step.
    """

    def __init__(self, journal: Journal | None, *, call_timeout_s: float = 5.0, strict: bool = False,
                 cooldown_s: float = 30.0) -> None:
        self.journal = journal
        self.call_timeout_s = call_timeout_s
        self.strict = strict
        self.cooldown_s = cooldown_s
        self._down_until = 0.0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sllm-tracking")
        self._inflight: Any = None
        self.journaled = 0
        self.longest_wait_s = 0.0

    def call(self, what: str, fn: Callable[[], Any], *, op: str, run_id: str, payload: dict[str, Any]) -> Any:
        now = time.monotonic()
        if now < self._down_until or (self._inflight is not None and not self._inflight.done()):
            # server presumed away, or the previous call is still stuck in the helper thread
            return self._journal(what, op, run_id, payload, reason="server unavailable (cool-down)")
        t0 = time.monotonic()
        future = self._pool.submit(fn)
        self._inflight = future
        try:
            result = future.result(timeout=self.call_timeout_s)
        except FutureTimeout:
            self.longest_wait_s = max(self.longest_wait_s, time.monotonic() - t0)
            if self.strict:
                raise TimeoutError(f"tracking: {what} took longer than {self.call_timeout_s:.0f} s "
                                   f"(tracking.strict is set)") from None
            self._down_until = time.monotonic() + self.cooldown_s
            return self._journal(what, op, run_id, payload, reason=f"no answer in {self.call_timeout_s:.0f} s")
        except Exception as exc:
            self.longest_wait_s = max(self.longest_wait_s, time.monotonic() - t0)
            if self.strict:
                raise
            self._down_until = time.monotonic() + self.cooldown_s
            return self._journal(what, op, run_id, payload, reason=f"{type(exc).__name__}: {exc}")
        self.longest_wait_s = max(self.longest_wait_s, time.monotonic() - t0)
        return result

    def _journal(self, what: str, op: str, run_id: str, payload: dict[str, Any], *, reason: str) -> None:
        from sllm_lib.secrets import redact_text

        if self.journal is None:
            log.warning("tracking: %s for run %s failed (%s); not journaled (no journal)", what, run_id,
                        redact_text(reason))
            return None
        first = self.journaled == 0
        self.journal.add(op, run_id, payload)
        self.journaled += 1
        if first or self.journaled % 100 == 0:
            log.warning("tracking: %s for run %s failed (%s); journaled to %s (%d entries so far; replayed at "
                        "stage end or by `sllm tracking sync`)", what, run_id, redact_text(reason), self.journal.path,
                        self.journaled)
        return None

    def settle(self, timeout_s: float | None = None) -> bool:
        """Wait (bounded) for a call still in flight; True when nothing is stuck."""
        f = self._inflight
        if f is None or f.done():
            return True
        try:
            f.result(timeout=self.call_timeout_s if timeout_s is None else timeout_s)
        except Exception:
            return f.done()
        return True

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
