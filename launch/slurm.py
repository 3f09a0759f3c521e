"""SlurmExecutor: one SLURM job per stage through submitit, chained with afterok dependencies.

A stage job is a submitit checkpointable. On the signal SLURM sends before a timeout or a preemption,
the stage checkpoints at the next optimizer step boundary (never mid-step) and submitit requeues it;
the restarted job resumes from that checkpoint in the same MLflow run. `scontrol requeue` from outside
bypasses the handler; the restarted job then resumes from the last periodic checkpoint.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, ClassVar

from launch.executor import ExecutorBase, JobState, LaunchRequest
from sllm_lib.errors import JobSpecError, StageFailedError, SubmissionError
from sllm_lib.spec import SlurmProfile
from sllm_lib.stage import StageResult

log = logging.getLogger(__name__)

_STATES = {
    "PENDING": JobState.PENDING, "REQUEUED": JobState.PENDING, "CONFIGURING": JobState.PENDING,
    "RUNNING": JobState.RUNNING, "COMPLETING": JobState.RUNNING, "COMPLETED": JobState.COMPLETED,
    "CANCELLED": JobState.CANCELLED, "FAILED": JobState.FAILED, "TIMEOUT": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED, "OUT_OF_MEMORY": JobState.FAILED, "PREEMPTED": JobState.PENDING,
    "BOOT_FAIL": JobState.FAILED, "DEADLINE": JobState.FAILED,
}
SBATCH_TIMEOUT_S = 10
_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError as exc:  # the slurm extra
        raise SubmissionError("the SLURM executor needs submitit: pip install 'sllm[slurm]'") from exc
    return submitit


def _master_port(job_id: str) -> int:
    """A port every task of a job derives alike (no rendezvous needed), spread across jobs."""
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return 20000 + int(digits) % 20000


class StageJob:
    """The submitit callable (and checkpointable) that runs one stage on every task of a job."""

    def __init__(self, request: LaunchRequest) -> None:
        self.request = request

    def __call__(self) -> dict[str, Any]:
        submitit = _import_submitit()
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # one process per GPU (or per task on CPU): torch.distributed's env:// variables
            os.environ.update(RANK=str(env.global_rank), LOCAL_RANK=str(env.local_rank),
                              WORLD_SIZE=str(env.num_tasks), MASTER_ADDR=env.hostnames[0],
                              MASTER_PORT=str(_master_port(env.job_id)))
        from launch.worker import configure_logging, run_request
        from sllm_lib.training.interrupt import StageInterrupted, request_stop

        configure_logging(self.request.log_file if env.global_rank == 0 else None)
        usr2 = signal.getsignal(signal.SIGUSR2)
        if not self.request.single_process:
            # training: keep submitit's handler for the requeue, but first let training reach a step boundary.
            # merge/eval keep submitit's handler as is: requeued, they simply run again.
            signal.signal(signal.SIGUSR2, lambda signum, frame: request_stop())
        try:
            return run_request(self.request).to_dict()
        except StageInterrupted:
            if callable(usr2):
                usr2(signal.SIGUSR2, None)  # checkpoint() -> requeue -> exit, as submitit does
            raise
        except Exception as exc:
            log.error("stage %s failed: %s\n%s", self.request.stage, exc, traceback.format_exc())
            raise

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue the same request; the stage resumes from its latest complete checkpoint."""
        submitit = _import_submitit()
        return submitit.helpers.DelayedSubmission(StageJob(self.request))


class SlurmJob:
    """JobHandle over a submitit job."""

    STATE_REFRESH_S = 1.0  # the most often state() asks sacct itself

    def __init__(self, req: LaunchRequest, job: Any) -> None:
        self.req = req
        self.job = job
        self.job_id = str(job.job_id)
        self._checked = float("-inf")

    def state(self) -> JobState:
        """The job's state now. submitit's `job.state` reads a cache it refreshes on a back-off (2, 4, 8 ... 60 s
        after the latest submission, core.InfoWatcher.update_if_long_enough), so a job already training could read
        PENDING for up to a minute (seen in the soak of the executor contract): ask sacct, at most once a second."""
        now = time.monotonic()
        mode = "standard"
        if now - self._checked >= self.STATE_REFRESH_S:
            mode, self._checked = "force", now
        raw = str(self.job.watcher.get_state(self.job.job_id, mode=mode)).split()[0].upper()
        return _STATES.get(raw, JobState.PENDING)

    def result(self, timeout_s: float | None = None) -> StageResult:
        submitit = _import_submitit()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.job.done():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"stage {self.req.stage!r} (SLURM job {self.job_id}) not done after {timeout_s} s")
            time.sleep(1.0)
        try:
            return StageResult(**self.job.results()[0])  # one result per task; rank 0 speaks for the stage
        except submitit.core.utils.UncompletedJobError as exc:
            raise self._failure(exc) from exc

    def _failure(self, exc: BaseException) -> StageFailedError:
        submitit = _import_submitit()
        if self.req.log_file.is_file():
            tail = "\n".join(self.req.log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
        else:
            tail = "\n".join((self.job.stderr() or "").splitlines()[-40:])
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        if isinstance(exc, submitit.core.utils.FailedJobError):  # its text is the job's traceback, then log paths
            raised = [ln.strip() for ln in lines if _EXC_LINE.match(ln.strip())]
            what = f"failed: {raised[-1] if raised else lines[0] if lines else type(exc).__name__}"
        else:
            self.job.watcher.update()  # the cached state can predate the end
            what = f"did not complete ({self.job.state}): {lines[0] if lines else type(exc).__name__}"
        return StageFailedError(
            f"stage {self.req.stage!r} (SLURM job {self.job_id}) {what}\n"
            f"last lines of its log:\n{tail}\nrun `sllm status {self.req.run_dir}`; fix the cause and submit again"
        )

    def cancel(self) -> None:
        self.job.cancel(check=False)


class SlurmExecutor(ExecutorBase):
    """Submits stages as SLURM jobs; `render()` gives the sbatch script submitit will write."""

    name: ClassVar[str] = "slurm"
    supports_dependencies: ClassVar[bool] = True
    supports_arrays: ClassVar[bool] = True

    def __init__(self, profile: SlurmProfile) -> None:
        self.profile = profile

    def _tasks_per_node(self) -> int:
        return self.profile.tasks_per_node or max(1, self.profile.gpus_per_node)  # world_size = nodes x this

    def parameters(self, req: LaunchRequest) -> dict[str, Any]:
        """submitit parameters from the profile (units in names, as submitit takes them)."""
        p = self.profile
        extra = dict(p.additional_parameters)
        nodes, tasks, gpus = (1, 1, min(1, p.gpus_per_node)) if req.single_process else (
            p.nodes, self._tasks_per_node(), p.gpus_per_node)
        params: dict[str, Any] = dict(
            name=f"{req.job_name}.{req.stage}", nodes=nodes, tasks_per_node=tasks,
            cpus_per_task=p.cpus_per_task, timeout_min=p.timeout_min, slurm_signal_delay_s=p.signal_delay_s,
            slurm_setup=list(p.setup), slurm_additional_parameters=extra,
        )
        if req.after:
            params["slurm_dependency"] = "afterok:" + ":".join(req.after)
            extra["kill-on-invalid-dep"] = "yes"  # a failed upstream cancels its dependents (none pend forever)
        if gpus:
            params["gpus_per_node"] = gpus
        if p.mem_gb:
            params["mem_gb"] = p.mem_gb
        optional = {"slurm_partition": p.partition, "slurm_account": p.account, "slurm_qos": p.qos,
                    "slurm_constraint": p.constraint}
        params.update({k: v for k, v in optional.items() if v})
        if p.exclusive:
            params["slurm_exclusive"] = True
        return params

    def _folder(self, req: LaunchRequest) -> Path:
        return Path(req.run_dir) / "slurm" / req.stage

    def _executor(self, req: LaunchRequest, folder: Path) -> Any:
        submitit = _import_submitit()
        # slurm_python: the command after the setup lines that unpickles and runs StageJob (submitit's default,
        # its own sys.executable, would bypass the environment the setup lines activate on the nodes)
        ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm",
                                   slurm_max_num_timeout=self.profile.max_num_timeout,
                                   slurm_python=self.profile.python_command())
        ex.update_parameters(**self.parameters(req))
        return ex

    def render(self, req: LaunchRequest) -> str:
        """The sbatch script of this stage (pure: nothing is written or submitted; no SLURM needed, so `sllm plan`
        shows the script on a laptop)."""
        if shutil.which("srun") is None:
            from unittest import mock

            submitit = _import_submitit()
            # submitit's SlurmExecutor refuses to be built without srun on PATH (its affinity() check in
            # __init__), even though writing the script needs no cluster: pretend for this construction only
            with mock.patch.object(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2)):
                ex = self._executor(req, self._folder(req))
        else:
            ex = self._executor(req, self._folder(req))
        inner = ex._executor  # submitit's SlurmExecutor renders the script; AutoExecutor only forwards
        return inner._make_submission_file_text(inner._submitit_command_str, "<uid>")

    def preflight(self, req: LaunchRequest) -> None:
        """`sbatch --test-only` with the stage's script: partition, limits and resources checked by SLURM."""
        if shutil.which("sbatch") is None:
            raise SubmissionError("sbatch not found on PATH: install slurm-client or run on a SLURM login node")
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "probe.sh"
            text = self.render(LaunchRequest(**{**req.__dict__, "after": []}))
            script.write_text(text.replace("%j", "probe"), encoding="utf-8")
            try:
                out = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True,
                                     timeout=SBATCH_TIMEOUT_S)
            except subprocess.TimeoutExpired as exc:
                raise SubmissionError(
                    f"sbatch --test-only did not answer in {SBATCH_TIMEOUT_S} s: is slurmctld up? (`scontrol ping`)"
                ) from exc
        if out.returncode != 0:
            msg = (out.stderr or out.stdout).strip()
            if "contact slurm controller" in msg:
                raise SubmissionError(f"slurmctld is not reachable ({msg}); check `scontrol ping`; nothing submitted")
            raise JobSpecError(f"cluster profile {self.profile.name!r}: SLURM rejects stage {req.stage!r}: {msg}")

    def submit_array(self, reqs: list[LaunchRequest], *, max_parallel: int | None = None) -> list[SlurmJob]:
        """Submit requests that share resources as one SLURM job array (one sbatch, N tasks)."""
        for req in reqs:
            Path(req.stage_dir).mkdir(parents=True, exist_ok=True)
            req.result_file.unlink(missing_ok=True)
            req.request_file.write_text(req.to_json(), encoding="utf-8")
        ex = self._executor(reqs[0], self._folder(reqs[0]))
        if max_parallel:
            ex.update_parameters(slurm_array_parallelism=max_parallel)
        try:
            with ex.batch():
                jobs = [ex.submit(StageJob(r)) for r in reqs]
        except subprocess.CalledProcessError as exc:
            raise SubmissionError(f"sbatch failed for the array of stage {reqs[0].stage!r}: {exc}") from exc
        log.info("stage %s: %d points submitted as SLURM array %s", reqs[0].stage, len(jobs),
                 str(jobs[0].job_id).split("_")[0])
        return [SlurmJob(r, j) for r, j in zip(reqs, jobs)]

    def submit(self, req: LaunchRequest) -> SlurmJob:
        Path(req.stage_dir).mkdir(parents=True, exist_ok=True)
        req.result_file.unlink(missing_ok=True)
        req.request_file.write_text(req.to_json(), encoding="utf-8")
        ex = self._executor(req, self._folder(req))
        try:
            job = ex.submit(StageJob(req))
        except subprocess.CalledProcessError as exc:
            out = (exc.output or b"").decode(errors="replace") if isinstance(exc.output, bytes) else str(exc.output)
            raise SubmissionError(f"sbatch failed for stage {req.stage!r}: {out.strip() or exc}") from exc
        log.info("stage %s submitted as SLURM job %s", req.stage, job.job_id)
        return SlurmJob(req, job)
