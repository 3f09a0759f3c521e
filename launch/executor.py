"""The executor interface: run "a stage callable with its resources" somewhere; nothing about models.

SLURM and Ray executors implement the same two protocols; selecting one is a dict lookup on the
cluster profile's `kind`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Protocol

from sllm_lib.errors import JobSpecError
from sllm_lib.stage import RESULT_FILE, StageResult


class JobState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class LaunchRequest:
    """One stage to run: which, where its files go, how it tracks, what it starts from."""

    job_name: str
    stage: str
    spec_path: str  # the resolved spec YAML written by the launcher
    spec_hash: str
    run_dir: str
    stage_dir: str
    tracking_uri: str
    tracking_strict: bool
    run_id: str | None
    chain: list[str] = field(default_factory=list)
    upstream_output: str | None = None
    upstream_kind: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    after: list[str] = field(default_factory=list)  # job ids this stage waits for (executors with dependencies)
    single_process: bool = False  # merge/eval: one process on one node, however many the profile gives training
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted stage fields of a sweep point
    task: str = "stage"  # "stage": run the stage; "checkpoint_eval": score one of its checkpoints (eval/watch.py)
    gpus: int = 0  # GPUs the executor allocates to the stage (sllm_lib/usage.py: GPU-hours)
    cost_per_gpu_hour: float | None = None  # the profile's price, for the stage's cost
    currency: str = "USD"
    background: bool = False  # local only: runs beside training on the same cores, at idle priority (SCHED_IDLE)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)

    @classmethod
    def from_json(cls, text: str) -> LaunchRequest:
        return cls(**json.loads(text))

    @property
    def request_file(self) -> Path:
        return Path(self.stage_dir) / "request.json"

    @property
    def result_file(self) -> Path:
        return Path(self.stage_dir) / RESULT_FILE

    @property
    def log_file(self) -> Path:
        return Path(self.stage_dir) / "stage.log"


class JobHandle(Protocol):
    """Shaped like submitit.Job / a Future."""

    job_id: str

    def state(self) -> JobState: ...
    def result(self, timeout_s: float | None = None) -> StageResult: ...
    def cancel(self) -> None: ...


class Executor(Protocol):
    """Every method the pipeline calls; `ExecutorBase` gives the optional ones their do-nothing defaults."""

    name: ClassVar[str]
    supports_dependencies: ClassVar[bool]  # True: all stages submitted at once, chained by the scheduler
    supports_arrays: ClassVar[bool]  # True: `submit_array` runs a sweep's points as one job array

    def render(self, request: LaunchRequest) -> str: ...
    def preflight(self, request: LaunchRequest) -> None: ...
    def submit(self, request: LaunchRequest) -> JobHandle: ...
    def submit_array(self, requests: list[LaunchRequest], *, max_parallel: int | None = None) -> list[JobHandle]: ...
    def close(self) -> None: ...


class ExecutorBase:
    """Defaults of the optional parts of `Executor`: no scheduler pre-check, no job arrays, nothing to release."""

    supports_dependencies: ClassVar[bool] = False
    supports_arrays: ClassVar[bool] = False

    def preflight(self, request: LaunchRequest) -> None:
        """Judge a stage's request before anything is submitted (raise to refuse); nothing to check here."""

    def submit_array(self, requests: list[LaunchRequest], *, max_parallel: int | None = None) -> list[JobHandle]:
        raise NotImplementedError(f"{type(self).__name__} has no job arrays (supports_arrays is False)")

    def close(self) -> None:
        """Release what the executor started (a private Ray head); nothing here."""


def get_executor(profile: Any) -> Executor:
    """The executor for a cluster profile (dict lookup on `profile.kind`)."""
    from launch.local import LocalExecutor
    from launch.ray_executor import RayExecutor
    from launch.slurm import SlurmExecutor

    executors: dict[str, Any] = {"local": LocalExecutor, "slurm": SlurmExecutor, "ray": RayExecutor}
    cls = executors.get(profile.kind)
    if cls is None:
        raise JobSpecError(
            f"cluster profile {profile.name!r}: kind {profile.kind!r} validates but has no executor in this version "
            f"(available: {', '.join(executors)}); run it with --cluster local"
        )
    return cls(profile)
