"""LocalExecutor: each stage in its own subprocess on this machine (or in-process, for tests)."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

from launch.executor import ExecutorBase, JobState, LaunchRequest
from launch.warm_start import ForkedProcess, StarterUnavailable, WarmStarter
from sllm_lib.errors import StageFailedError
from sllm_lib.ports import free_port
from sllm_lib.spec import LocalProfile
from sllm_lib.stage import StageResult

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


# after one rank fails, the others get this long to fail on their own before they are stopped (they may sit in a
# collective the failed rank will never join)
PEER_GRACE_S = 10.0


class PolledJob:
    """`result()` for a job of this machine whose `state()` is read from its processes and files."""

    req: LaunchRequest
    job_id: str

    def state(self) -> JobState:
        raise NotImplementedError

    def result(self, timeout_s: float | None = None) -> StageResult:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.state() is JobState.RUNNING:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"stage {self.req.stage!r} ({self.job_id}) still running after {timeout_s} s")
            time.sleep(0.2)
        state = self.state()
        if state is not JobState.COMPLETED:
            raise _failure(self.req, self.job_id, state.value)
        return StageResult.from_json(self.req.result_file.read_text(encoding="utf-8"))


class LocalJob(PolledJob):
    """A stage running in child processes: one, or one per rank (`nproc`), rank 0 first."""

    def __init__(self, req: LaunchRequest, procs: list[subprocess.Popen | ForkedProcess]) -> None:
        self.req = req
        self.procs = procs
        self.job_id = f"local-{procs[0].pid}"
        self._cancelled = False
        self._failed_at: float | None = None

    def _reap_peers(self) -> None:
        """Once a rank has failed, stop the ranks still running after a grace period."""
        codes = [p.poll() for p in self.procs]
        if not any(c not in (None, 0) for c in codes):
            return
        if self._failed_at is None:
            self._failed_at = time.monotonic()
        if time.monotonic() - self._failed_at >= PEER_GRACE_S:
            for p in self.procs:
                if p.poll() is None:
                    log.warning("stage %s: rank pid %d still running after a peer failed; stopping it", self.req.stage,
                                p.pid)
                    _stop(p)

    def state(self) -> JobState:
        self._reap_peers()
        codes = [p.poll() for p in self.procs]
        if any(c is None for c in codes):
            return JobState.RUNNING
        if self._cancelled:
            return JobState.CANCELLED
        ok = all(c == 0 for c in codes) and self.req.result_file.is_file()
        return JobState.COMPLETED if ok else JobState.FAILED

    def cancel(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                self._cancelled = True
                p.terminate()
        for p in self.procs:
            _stop(p)


def _stop(proc: subprocess.Popen | ForkedProcess) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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


def _to_background(pid: int) -> None:
    """Idle priority for a process beside training (the checkpoint watcher's evaluations): SCHED_IDLE runs it only
    on cycles no normal process wants, and a training thread that wakes preempts it at once; nice 19 where the
    policy is not available. Set from here, not in the child, so its imports already run at that priority (the
    policy is inherited by every thread it starts)."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, 19)


class LocalExecutor(ExecutorBase):
    """Runs stages on this machine; `isolation: subprocess` frees each stage's memory when it ends."""

    name: ClassVar[str] = "local"
    supports_dependencies: ClassVar[bool] = False

    def __init__(self, profile: LocalProfile) -> None:
        self.profile = profile
        self._starter: WarmStarter | None = None
        self._starter_lock = threading.Lock()
        self._warm = profile.warm and profile.isolation == "subprocess" and hasattr(os, "fork")

    def nproc(self, req: LaunchRequest) -> int:
        """Processes for this stage: the profile's nproc for training, one for merge/eval."""
        return 1 if req.single_process else self.profile.nproc

    def _threads(self, n: int) -> int | None:
        """OMP threads per process: the profile's cpus, else the cores shared out (torch would take all per rank)."""
        if self.profile.cpus:
            return self.profile.cpus
        return max(1, (os.cpu_count() or 1) // n) if n > 1 else None

    def _env(self, req: LaunchRequest, *, rank: int = 0, world: int = 1, port: int = 0) -> dict[str, str]:
        env = dict(os.environ)
        env.update(req.env)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        threads = self._threads(world)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        if self.profile.gpus == 0:
            env["CUDA_VISIBLE_DEVICES"] = ""
            env.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed's accelerator probe warns on every import otherwise
        if world > 1:  # torch.distributed's env:// rendezvous on this machine, as torchrun sets it
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                          env.get("PYTHONPATH", "")]))
        return env

    def command(self, req: LaunchRequest) -> list[str]:
        return [sys.executable, "-m", "launch.worker", str(req.request_file)]

    def render(self, req: LaunchRequest) -> str:
        """The command line a stage runs as (pure; used by `sllm plan`)."""
        extra = dict(req.env)
        n = self.nproc(req)
        threads = self._threads(n)
        if threads:
            extra["OMP_NUM_THREADS"] = str(threads)
        if n > 1:
            extra.update(RANK="{0.." + str(n - 1) + "}", WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1")
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(extra.items()))
        cmd = " ".join(shlex.quote(c) for c in ["python", "-m", "launch.worker", str(req.request_file)])
        line = f"{env} {cmd}".strip()
        return f"{line}  # x{n} processes" if n > 1 else line

    def _start(self, req: LaunchRequest) -> subprocess.Popen | ForkedProcess:
        """A single-process stage: forked by the warm starter when its environment is the starter's (the first
        such stage starts it; later ones skip torch's and transformers' imports), else a fresh interpreter."""
        env, cwd = self._env(req), os.getcwd()
        if self._warm:
            with self._starter_lock:
                if self._starter is not None and not self._starter.alive:
                    self._starter = None  # it left (idle) or failed: a new one for this stage
                if self._starter is None:
                    try:
                        self._starter = WarmStarter(env, cwd)
                    except OSError as exc:
                        log.warning("could not start the warm starter (%s); stages start in new interpreters", exc)
                        self._warm = False
                starter = self._starter
            if starter is not None and starter.env == env:
                try:
                    return starter.spawn(req.request_file, env, cwd, req.result_file)
                except StarterUnavailable as exc:
                    log.warning("stage %s: the warm starter could not start it (%s); starting it in a new "
                                "interpreter", req.stage, exc)
                    if starter.failed:
                        self._warm = False  # it cannot import here: every stage starts the usual way
            elif starter is not None:
                log.debug("stage %s: environment differs from the warm starter's; starting a new interpreter",
                          req.stage)
        return subprocess.Popen(self.command(req), env=env, cwd=cwd)

    def close(self) -> None:
        with self._starter_lock:
            if self._starter is not None:
                self._starter.close()
                self._starter = None

    def submit(self, req: LaunchRequest) -> LocalJob | InProcessJob:
        Path(req.stage_dir).mkdir(parents=True, exist_ok=True)
        req.result_file.unlink(missing_ok=True)
        req.request_file.write_text(req.to_json(), encoding="utf-8")
        if self.profile.isolation == "inprocess":
            return InProcessJob(req)
        n = self.nproc(req)
        if n == 1:
            procs = [self._start(req)]
        else:
            port = free_port()
            procs = []
            for rank in range(n):
                # rank 0 writes stage.log and the console; the others keep their own output in rankN.log
                out = None if rank == 0 else open(Path(req.stage_dir) / f"rank{rank}.log", "ab")  # noqa: SIM115
                try:
                    procs.append(subprocess.Popen(self.command(req), env=self._env(req, rank=rank, world=n, port=port),
                                                  cwd=os.getcwd(), stdout=out, stderr=subprocess.STDOUT if out else None))
                finally:
                    if out is not None:
                        out.close()
        if req.background:
            for p in procs:
                _to_background(p.pid)
        log.debug("started %s as pids %s at %s", req.stage, [p.pid for p in procs], time.strftime("%H:%M:%S"))
        return LocalJob(req, procs)

