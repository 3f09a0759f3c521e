"""Remote Ray clusters through the Ray Jobs API: the whole plan runs on the cluster as one Ray job.

`sllm submit SPEC --cluster PROFILE` with `address: http(s)://HEAD:8265` submits the entrypoint
`python -m launch.cli submit SPEC --cluster PROFILE` to the cluster; there, the same profile connects to
the cluster it runs in (`SLLM_IN_RAY_JOB=1` makes the address `auto`) and runs every stage as a
TorchTrainer. The submission is recorded in `<run dir>/ray_job.json` on this machine, so
`sllm status / logs / cancel RUN_DIR` map onto the job's status, logs and stop.

Code reaches the cluster through the profile's `runtime_env.working_dir` (uploaded; `.venv`, `.git`,
`runs` and caches excluded) or, without one, a shared checkout: the entrypoint then starts in this
directory. Credentials are not put into the runtime_env (the dashboard shows it): give the cluster its
own MLFLOW_TRACKING_USERNAME/PASSWORD and AWS keys.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sllm_lib.errors import StageFailedError, SubmissionError
from sllm_lib.spec import RayProfile
from sllm_lib.files import write_json_atomic

log = logging.getLogger(__name__)

JOB_FILE = "ray_job.json"
IN_JOB_ENV = "SLLM_IN_RAY_JOB"
DEFAULT_EXCLUDES = [".venv", "venv", ".git", "runs", "mlruns", "**/__pycache__", ".pytest_cache", ".hypothesis",
                    "*.egg-info"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# environment passed to the job so it tracks where this launcher would (no secrets: see the module doc)
FORWARD = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "SLLM_HOME", "SLLM_LOG_LEVEL", "SLLM_INJECT_FAULT")


@dataclass(frozen=True)
class RayJobRecord:
    address: str
    submission_id: str
    entrypoint: str
    submitted_at: float
    spec: str
    profile: str

    def save(self, run_dir: Path) -> Path:
        path = run_dir / JOB_FILE
        write_json_atomic(path, self.__dict__)
        return path

    @classmethod
    def load(cls, run_dir: Path) -> RayJobRecord | None:
        path = run_dir / JOB_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def check_dashboard(address: str, timeout_s: float, profile: str) -> None:
    """The Jobs API answers (bounded): else a clear error, nothing submitted."""
    url = address.rstrip("/") + "/api/version"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - the profile's own address
            if r.status == 200:
                return
            why = f"HTTP {r.status}"
    except urllib.error.HTTPError as exc:
        why = f"HTTP {exc.code}"
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        why = getattr(reason, "strerror", None) or str(reason)
    raise SubmissionError(f"cluster profile {profile!r}: the Ray Jobs API at {address} is not reachable ({why}); "
                          f"is the head's dashboard up (`ray start --head --dashboard-host ...`)? nothing was submitted")


def _client(address: str) -> Any:
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise SubmissionError("the Ray Jobs API needs ray[default]: pip install 'ray[default]==2.60.0'") from exc
    return JobSubmissionClient(address)


def _rel(path: Path, root: Path) -> str:
    path = path.resolve()
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def build_submission(spec_path: Path, cluster_path: Path, overrides: list[str], profile: RayProfile,
                     cwd: Path | None = None, environ: dict[str, str] | None = None,
                     cluster_is_name: bool = False) -> tuple[str, dict[str, Any]]:
    """(entrypoint, runtime_env) of the job (pure)."""
    cwd = (cwd or Path.cwd()).resolve()
    environ = dict(os.environ if environ is None else environ)
    runtime_env = json.loads(json.dumps(profile.runtime_env))
    env_vars = dict(runtime_env.get("env_vars") or {})
    for name in FORWARD:
        if name in environ:
            env_vars.setdefault(name, environ[name])
    env_vars[IN_JOB_ENV] = "1"
    uploaded = bool(runtime_env.get("working_dir"))
    if uploaded:
        runtime_env["excludes"] = sorted(set(runtime_env.get("excludes") or []) | set(DEFAULT_EXCLUDES))
    runtime_env["env_vars"] = env_vars
    cluster = str(cluster_path) if cluster_is_name else _rel(cluster_path, cwd)
    args = ["-m", "launch.cli", "submit", _rel(spec_path, cwd), "--cluster", cluster]
    for o in overrides:
        args += ["--set", o]
    cmd = " ".join(shlex.quote(a) for a in [profile.entrypoint_python, *args])
    if not uploaded:  # a shared checkout: start where the launcher is
        cmd = f"cd {shlex.quote(str(cwd))} && PYTHONPATH={shlex.quote(str(cwd))}${{PYTHONPATH:+:$PYTHONPATH}} {cmd}"
    return cmd, runtime_env


def submit_job(*, spec_path: Path, cluster_path: Path, overrides: list[str], profile: RayProfile, run_dir: Path,
               job_name: str, spec_hash: str, cluster_is_name: bool = False) -> RayJobRecord:
    check_dashboard(profile.address, profile.connect_timeout_s, profile.name)
    entrypoint, runtime_env = build_submission(spec_path, cluster_path, overrides, profile,
                                               cluster_is_name=cluster_is_name)
    client = _client(profile.address)
    submission_id = f"sllm-{job_name}-{spec_hash[:8]}-{int(time.time())}"
    try:
        client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id,
                          metadata={"sllm.job": job_name, "sllm.spec_hash": spec_hash})
    except Exception as exc:  # the client raises RuntimeError with the server's message
        raise SubmissionError(f"cluster profile {profile.name!r}: the Ray Jobs API refused the job: {exc}") from exc
    run_dir.mkdir(parents=True, exist_ok=True)
    record = RayJobRecord(address=profile.address, submission_id=submission_id, entrypoint=entrypoint,
                          submitted_at=time.time(), spec=str(spec_path), profile=profile.name)
    record.save(run_dir)
    log.info("submitted Ray job %s to %s", submission_id, profile.address)
    return record


def job_status(record: RayJobRecord) -> tuple[str, str]:
    """(status, message) of the job."""
    info = _client(record.address).get_job_info(record.submission_id)
    return str(getattr(info.status, "value", info.status)), info.message or ""


def job_logs(record: RayJobRecord) -> str:
    return _client(record.address).get_job_logs(record.submission_id)


def stop_job(record: RayJobRecord, *, pending_wait_s: float = 120.0) -> bool:
    """Stop the job. A PENDING job is first waited for (bounded) until its entrypoint runs: Ray 2.60 marks a
    job stopped while PENDING as STOPPED, yet may still start its entrypoint, which then runs unsupervised
    (seen here: the whole plan trained on with the job STOPPED)."""
    client = _client(record.address)
    deadline = time.monotonic() + pending_wait_s
    while str(getattr(client.get_job_status(record.submission_id), "value", "")) == "PENDING":
        if time.monotonic() > deadline:
            log.warning("Ray job %s still PENDING after %.0f s; stopping it anyway", record.submission_id,
                        pending_wait_s)
            break
        time.sleep(0.5)
    return bool(client.stop_job(record.submission_id))


def follow_job(record: RayJobRecord, *, echo: Callable[[str], None] = print, poll_s: float = 1.0,
               timeout_s: float | None = None) -> str:
    """Print the job's log as it grows until the job ends; return its final status."""
    client = _client(record.address)
    shown = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = str(getattr(client.get_job_status(record.submission_id), "value", ""))
        text = client.get_job_logs(record.submission_id)
        if len(text) > shown:
            echo(text[shown:].rstrip("\n"))
            shown = len(text)
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"Ray job {record.submission_id} not finished after {timeout_s} s")
        time.sleep(poll_s)


def wait_job(record: RayJobRecord, *, echo: Callable[[str], None] = print, timeout_s: float | None = None) -> None:
    status = follow_job(record, echo=echo, timeout_s=timeout_s)
    if status != "SUCCEEDED":
        _, message = job_status(record)
        tail = "\n".join(job_logs(record).splitlines()[-30:])
        raise StageFailedError(f"Ray job {record.submission_id} ended {status}: {message}\nlast lines of its log:\n"
                               f"{tail}\nrun `sllm logs <run dir>` for the whole log")
