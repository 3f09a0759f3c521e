"""A stage's tracking in a helper process: the stage starts without loading MLflow and never waits on it.

Loading the MLflow client costs a stage process 2-3 s of CPU before its first line (mlflow's package import,
~1.4 s, pulls pandas and its GenAI modules; a sqlite store adds SQLAlchemy and alembic), and then every
logging call waits on the server. `SidecarTracker` is the `Tracker` a stage's rank 0 gets instead: it starts
`python -m sllm_lib.tracking.sidecar`, which builds the ordinary `MlflowTracker` (bounded calls, journal,
cool-down: nothing changes in what reaches the server or the journal) while the stage imports torch and loads
its model on another core. Calls cross a pipe as JSON lines, in order:

- fire-and-forget (params, metrics, datasets, tags, status): the stage never waits, whatever the server does;
- with a result (artifacts, `last_step`, `log_model`, `flush`): the stage waits for that call, which runs after
  everything sent before it.

If the helper dies, nothing is lost: the calls it had not acknowledged run again, in order, on an in-process
`MlflowTracker` that takes over (replays are idempotent: metrics and end times carry the stage's own
timestamps). The helper ignores the signals a scheduler sends the job's processes to stop training (it keeps
draining what the stage sent until its pipe closes), and exits when the stage process is gone.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 60.0  # the longest a stage's end waits for the helper to drain and exit after `flush`
_ASYNC = frozenset({"log_params", "log_metrics", "log_datasets", "set_tags", "set_status"})


def enabled() -> bool:
    """`SLLM_TRACKING_SIDECAR=0` keeps tracking in the stage process (debugging; the behaviour before it)."""
    return os.environ.get("SLLM_TRACKING_SIDECAR", "1").strip().lower() not in ("0", "false", "no", "off")


class SidecarError(RuntimeError):
    """A call the helper ran raised (its type and message; e.g. a model registration refused)."""


class SidecarTracker:
    """The `Tracker` protocol over a helper process (see the module doc)."""

    def __init__(self, tracking_uri: str, run_id: str, *, journal_path: Path, call_timeout_s: float = 5.0) -> None:
        from sllm_lib.secrets import export_registry

        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.journal_path = Path(journal_path)
        self.call_timeout_s = call_timeout_s
        self._lock = threading.Condition()
        self._seq = 0
        self._unacked: OrderedDict[int, str] = OrderedDict()  # seq -> the call's JSON line, until acknowledged
        self._results: dict[int, tuple[Any, str | None]] = {}
        self._waiting: set[int] = set()
        self._dead = False
        self._closed = False
        self._fallback: Any = None
        self._fallback_lock = threading.Lock()
        self._outbox: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        root = str(Path(__file__).resolve().parents[2])  # the folder holding sllm_lib (a source checkout too)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "sllm_lib.tracking.sidecar", tracking_uri, run_id, str(self.journal_path),
             str(call_timeout_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, encoding="utf-8", bufsize=1,
            start_new_session=False)
        self._outbox.put(json.dumps({"secrets": export_registry()}))  # over the pipe: never in argv or env
        self._writer = threading.Thread(target=self._write_loop, name="sllm-tracking-out", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="sllm-tracking-in", daemon=True)
        self._writer.start()
        self._reader.start()

    # -- the Tracker protocol ---------------------------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        self._dispatch("log_params", [params], {})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._dispatch("log_metrics", [metrics], {"step": step, "timestamp_ms": int(time.time() * 1000)})

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self._dispatch("log_artifact", [str(local_path), artifact_path], {})  # waits: the caller may then delete it

    def log_datasets(self, datasets: list[Any]) -> None:
        self._dispatch("log_datasets", [[asdict(d) for d in datasets]], {})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._dispatch("set_tags", [tags], {})

    def set_status(self, status: str) -> None:
        self._dispatch("set_status", [status], {"timestamp_ms": int(time.time() * 1000)})

    def last_step(self, key: str) -> int | None:
        return self._dispatch("last_step", [key], {})

    def log_model(self, local_dir: str | Path, *, name: str, registered_name: str | None = None,
                  alias: str | None = None, model_type: str = "model", source_model_ids: Sequence[str] = (),
                  metrics: dict[str, float] | None = None, step: int = 0, files: str = "all",
                  params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._dispatch("log_model", [str(local_dir)], dict(
            name=name, registered_name=registered_name, alias=alias, model_type=model_type,
            source_model_ids=list(source_model_ids), metrics=metrics, step=step, files=files, params=params))

    def flush(self) -> Any:
        """At stage end: the helper settles, replays its journal (bounded, as in-process), then exits."""
        from sllm_lib.tracking.journal import ReplayStats

        stats = self._dispatch("flush", [], {})
        self.close()
        return ReplayStats(**stats) if isinstance(stats, dict) else stats

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Close the pipe and wait (bounded) for the helper to finish what it holds; a helper that does not exit
        is killed and what it had not acknowledged runs here."""
        self._closed = True
        self._outbox.put(None)
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("tracking: the helper process (pid %d) did not exit %.0f s after the stage ended; killed",
                        self._proc.pid, timeout_s)
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=5)
        with self._lock:
            left = bool(self._unacked)
        if left:
            self._take_over()

    # -- plumbing -----------------------------------------------------------------------------------------------

    def _dispatch(self, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        reply = method not in _ASYNC
        seq = None
        with self._lock:
            if not self._dead:
                self._seq += 1
                seq = self._seq
                # encoded now: what runs (here or there) is the call as made, whatever the caller changes later.
                # default=str: params and paths become the strings MlflowTracker would make of them anyway
                line = json.dumps({"seq": seq, "method": method, "args": args, "kwargs": kwargs, "reply": reply},
                                  ensure_ascii=False, default=str)
                self._unacked[seq] = line
                if reply:
                    self._waiting.add(seq)
                self._outbox.put(line)
                if not reply:
                    return None
                while seq not in self._results and not self._dead:
                    self._lock.wait(timeout=1.0)
        # the helper is gone: what it had not acknowledged (this call too, once sent) runs here, in order
        if seq is None or seq not in self._results:
            self._take_over()
        if seq is None:
            call = json.loads(json.dumps({"args": args, "kwargs": kwargs}, ensure_ascii=False, default=str))
            return self._run_here(method, call["args"], call["kwargs"])
        with self._lock:
            self._waiting.discard(seq)
            return _unwrap(method, *self._results.pop(seq))

    def _take_over(self) -> None:
        with self._fallback_lock:
            if self._fallback is None:
                from sllm_lib.tracking.journal import Journal
                from sllm_lib.tracking.tracker import MlflowTracker

                if not self._closed:
                    log.warning("tracking: the helper process ended (exit %s); tracking goes on in the stage "
                                "process", self._proc.poll())
                self._fallback = MlflowTracker(self.tracking_uri, self.run_id, journal=Journal(self.journal_path),
                                               call_timeout_s=self.call_timeout_s)
            with self._lock:
                self._dead = True
                pending = list(self._unacked.items())
                self._unacked.clear()
            for seq, line in pending:
                msg = json.loads(line)
                method = msg["method"]
                try:
                    out: tuple[Any, str | None] = (self._run_here(method, msg["args"], msg["kwargs"]), None)
                except Exception as exc:  # noqa: BLE001 - handed to the caller waiting for it, or logged
                    out = (None, f"{type(exc).__name__}: {exc}")
                with self._lock:
                    if seq in self._waiting:
                        self._results[seq] = out
                        self._lock.notify_all()
                    elif out[1]:
                        log.warning("tracking: %s failed: %s", method, out[1])

    def _run_here(self, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return _call(self._fallback, method, args, kwargs)

    def _write_loop(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        while True:
            line = self._outbox.get()
            try:
                if line is None:
                    stdin.close()
                    return
                stdin.write(line + "\n")
                stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                return  # the helper is gone: the reader sees its end and the calls run here

    def _read_loop(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        for line in stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "log" in msg:  # the helper's warnings, in this stage's log
                name, level, text = msg["log"]
                logging.getLogger(name).log(int(level), "%s", text)
                continue
            seq = msg.get("ack")
            with self._lock:
                self._unacked.pop(seq, None)
                if seq in self._waiting:
                    self._results[seq] = (msg.get("result"), msg.get("error"))
                self._lock.notify_all()
        with self._lock:
            self._dead = True
            self._lock.notify_all()


def _unwrap(method: str, result: Any, error: str | None) -> Any:
    if error is not None:
        raise SidecarError(f"tracking: {method} failed: {error}")
    return result


def _call(tracker: Any, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run one call on an in-process MlflowTracker (in the helper, or in the stage after a take-over)."""
    if method == "log_datasets":
        from sllm_lib.tracking.tracker import DatasetRecord

        args = [[DatasetRecord(**d) for d in args[0]]]
    out = getattr(tracker, method)(*args, **kwargs)
    return asdict(out) if is_dataclass(out) and not isinstance(out, type) else out


class _Forward(logging.Handler):
    """The helper's log records go back to the stage process (its stage.log), one JSON line each."""

    def __init__(self, send: Any) -> None:
        super().__init__(logging.INFO)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send({"log": [record.name, record.levelno, record.getMessage()]})
        except Exception:  # noqa: BLE001 - logging must never fail a call
            pass


def main(argv: list[str] | None = None) -> int:
    """The helper: `python -m sllm_lib.tracking.sidecar URI RUN_ID JOURNAL CALL_TIMEOUT_S`, calls on stdin."""
    import signal

    uri, run_id, journal_path, call_timeout = (sys.argv[1:] if argv is None else argv)
    # stdout is the reply channel: anything a library prints goes to stderr instead
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    # a scheduler's stop signals go to every process of the job: the stage decides when to stop, and the helper
    # drains what it sent until the pipe closes (SIGKILL at the end of the job still ends it)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    write_lock = threading.Lock()

    def send(msg: dict[str, Any]) -> None:
        line = json.dumps(msg, ensure_ascii=False, default=str)
        with write_lock:
            out.write(line + "\n")
            out.flush()

    root = logging.getLogger()
    root.handlers = [_Forward(send)]
    root.setLevel(logging.INFO)
    from sllm_lib.secrets import import_registry, install_log_filter
    from sllm_lib.tracking.journal import Journal
    from sllm_lib.tracking.tracker import MlflowTracker

    stdin = sys.stdin
    stdin.reconfigure(encoding="utf-8")
    first = stdin.readline()
    if first:
        import_registry(json.loads(first).get("secrets", {}))
    install_log_filter()
    tracker = MlflowTracker(uri, run_id, journal=Journal(Path(journal_path)), call_timeout_s=float(call_timeout))
    for line in stdin:
        msg = json.loads(line)
        try:
            result, error = _call(tracker, msg["method"], msg["args"], msg["kwargs"]), None
        except Exception as exc:  # noqa: BLE001 - returned to the stage (a call it waits for) or logged
            result, error = None, f"{type(exc).__name__}: {exc}"
            if not msg.get("reply"):
                log.warning("tracking: %s failed: %s", msg["method"], error)
        send({"ack": msg["seq"], "result": result if msg.get("reply") else None, "error": error})
    tracker.bounded.settle()
    out.flush()
    # not a normal exit: the interpreter would join a helper thread still stuck in a call to a hung server
    # (concurrent.futures joins its workers at exit); whatever failed is already in the journal, fsynced
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
