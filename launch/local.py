"""LocalExecutor: each stage in its own subprocess on this machine (or in-process, for tests)."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

from launch.executor import JobState, LaunchRequest
from sllm_lib.errors import StageFailedError
from sllm_lib.spec import LocalProfile
from sllm_lib.training.context import StageResult

log = logging.getLogger(__name__)


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


def _failure(req: LaunchRequest, job_id: str, state: str) -> StageFailedError:
    return StageFailedError(
        f"stage {req.stage!r} ({job_id}) ended {state}; last lines of {req.log_file}:\n{_tail(req.log_file)}\n"
        f"fix the cause and run the same command again: completed stages are reused, this one resumes "
        f"from its latest complete checkpoint"
    )


class LocalJob:
    """A stage running in a child process."""

    def __init__(self, req: LaunchRequest, proc: subprocess.Popen) -> None:
        self.req = req
        self.proc = proc
        self.job_id = f"local-{proc.pid}"
        self._cancelled = False

    def state(self) -> JobState:
        code = self.proc.poll()
        if code is None:
            return JobState.RUNNING
        if self._cancelled:
            return JobState.CANCELLED
        return JobState.COMPLETED if code == 0 and self.req.result_file.is_file() else JobState.FAILED

    def result(self, timeout_s: float | None = None) -> StageResult:
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"stage {self.req.stage!r} ({self.job_id}) still running after {timeout_s} s") from exc
        state = self.state()
        if state is not JobState.COMPLETED:
            raise _failure(self.req, self.job_id, state.value)
        return StageResult.from_json(self.req.result_file.read_text(encoding="utf-8"))

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self._cancelled = True
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class InProcessJob:
    """A stage already run in this process (like submitit's DebugExecutor)."""

    def __init__(self, req: LaunchRequest) -> None:
        self.req = req
        self.job_id = f"inproc-{os.getpid()}-{req.stage}"
        self._result: StageResult | None = None
        self._error: BaseException | None = None
        from launch.worker import run_request

        try:
            self._result = run_request(req)
        except Exception as exc:  # surfaced by result(), as a future would
            self._error = exc

    def state(self) -> JobState:
        return JobState.COMPLETED if self._result is not None else JobState.FAILED

    def result(self, timeout_s: float | None = None) -> StageResult:
        if self._error is not None:
            raise StageFailedError(f"stage {self.req.stage!r} ({self.job_id}) failed: {self._error}") from self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        pass


class LocalExecutor:
    """Runs stages on this machine; `isolation: subprocess` frees each stage's memory when it ends."""

    name: ClassVar[str] = "local"
    supports_dependencies: ClassVar[bool] = False

    def __init__(self, profile: LocalProfile) -> None:
        self.profile = profile

    def _env(self, req: LaunchRequest) -> dict[str, str]:
        env = dict(os.environ)
        env.update(req.env)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if self.profile.cpus:
            env["OMP_NUM_THREADS"] = str(self.profile.cpus)
        if self.profile.gpus == 0:
            env["CUDA_VISIBLE_DEVICES"] = ""
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                          env.get("PYTHONPATH", "")]))
        return env

    def command(self, req: LaunchRequest) -> list[str]:
        return [sys.executable, "-m", "launch.worker", str(req.request_file)]

    def render(self, req: LaunchRequest) -> str:
        """The command line a stage runs as (pure; used by `sllm plan`)."""
        extra = dict(req.env)
        if self.profile.cpus:
            extra["OMP_NUM_THREADS"] = str(self.profile.cpus)
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(extra.items()))
        cmd = " ".join(shlex.quote(c) for c in ["python", "-m", "launch.worker", str(req.request_file)])
        return f"{env} {cmd}".strip()

    def submit(self, req: LaunchRequest) -> LocalJob | InProcessJob:
        Path(req.stage_dir).mkdir(parents=True, exist_ok=True)
        req.result_file.unlink(missing_ok=True)
        req.request_file.write_text(req.to_json(), encoding="utf-8")
        if self.profile.isolation == "inprocess":
            return InProcessJob(req)
        proc = subprocess.Popen(self.command(req), env=self._env(req), cwd=os.getcwd())
        log.debug("started %s as pid %d at %s", req.stage, proc.pid, time.strftime("%H:%M:%S"))
        return LocalJob(req, proc)
