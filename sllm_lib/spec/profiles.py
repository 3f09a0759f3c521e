"""Cluster profiles: where a job runs (local, SLURM, Ray), selected by `kind`."""

from __future__ import annotations

import difflib
import shlex
import sys
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from sllm_lib.spec.base import NAME_MAX, Strict


def _cost_per_gpu_hour() -> Any:
    """What every profile may say about money: a price per GPU-hour makes each stage's GPU-hours a cost."""
    return Field(default=None, ge=0, le=100_000,
                 description="Price of one GPU-hour on this cluster; stages, pipelines and lineages then show a cost.")


def _currency() -> Any:
    return Field(default="USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code of cost_per_gpu_hour.")


class LocalProfile(Strict):
    kind: Literal["local"]
    name: str = Field(default="local", min_length=1, max_length=NAME_MAX)
    isolation: Literal["subprocess", "inprocess"] = Field(
        default="subprocess", description="subprocess: one process per stage (memory freed); inprocess: for tests."
    )
    warm_start: bool | None = Field(
        default=None, description="Fork each single-process stage from a process that has imported torch, "
                                  "transformers and the stage code once, so it starts without those imports "
                                  "(subprocess isolation). Default: on when gpus is 0; CPU only (CUDA does not "
                                  "survive a fork once an import has touched it)."
    )
    gpus: int = Field(default=0, ge=0, le=64, description="GPUs visible to a stage (0 = CPU).")
    cpus: int | None = Field(default=None, gt=0, le=4096, description="Threads per process (OMP_NUM_THREADS); default all "
                                                             "cores shared by the processes.")
    nproc: int = Field(default=1, gt=0, le=64, description="Processes per training stage (torch.distributed on "
                                                           "127.0.0.1; one per GPU when gpus > 0).")
    gpu_memory_gb: float | None = Field(default=None, gt=0, le=4096, description="Memory of one GPU, for the memory planner.")
    cost_per_gpu_hour: float | None = _cost_per_gpu_hour()
    currency: str = _currency()

    @model_validator(mode="after")
    def _nproc_fits_gpus(self) -> LocalProfile:
        if self.gpus and self.nproc > self.gpus:
            raise ValueError(f"nproc ({self.nproc}) exceeds gpus ({self.gpus}): one process per GPU")
        if self.nproc > 1 and self.isolation == "inprocess":
            raise ValueError("nproc > 1 needs isolation: subprocess (one process per rank)")
        if self.warm_start and self.gpus:
            raise ValueError(f"warm_start: true needs gpus: 0 (got {self.gpus}): a stage forked after the imports "
                             f"cannot use CUDA once an import has initialised it; leave warm_start out")
        return self

    @property
    def warm(self) -> bool:
        """Whether single-process stages are forked from the warm starter (warm_start, default: on without GPUs)."""
        return self.gpus == 0 if self.warm_start is None else self.warm_start

    @property
    def world_size(self) -> int:
        return self.nproc

    def stage_gpus(self, single_process: bool) -> int:
        """GPUs a stage holds: the profile's (one for merge/eval)."""
        return min(1, self.gpus) if single_process else self.gpus


SUBMITTING_PYTHON = "submitting"  # SlurmProfile.python: the interpreter that runs `sllm submit`


class SlurmProfile(Strict):
    kind: Literal["slurm"]
    name: str = Field(min_length=1, max_length=NAME_MAX)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = Field(default=1, gt=0, le=10_000)
    gpus_per_node: int = Field(default=0, ge=0, le=64)
    tasks_per_node: int | None = Field(
        default=None, gt=0, description="Processes per node; default one per GPU (1 on CPU nodes)."
    )
    cpus_per_task: int = Field(default=1, gt=0, le=4096)
    mem_gb: int | None = Field(default=None, gt=0, le=65_536)
    timeout_min: int = Field(default=60, gt=0, le=525_600)
    constraint: str | None = None
    exclusive: bool = False
    setup: list[str] = Field(default_factory=list, description="Shell lines run before each job (module load, ...).")
    python: str = Field(
        default="python", min_length=1,
        description="The interpreter that runs each stage on the compute nodes, as a shell command placed after "
                    "the setup lines: 'python' (default) is whatever the setup lines put on PATH (e.g. `source "
                    "/shared/envs/sllm/bin/activate`); a path ('/shared/envs/sllm/bin/python') or a wrapper "
                    "('singularity exec img.sif python') is used as written; 'submitting' runs the interpreter "
                    "`sllm submit` runs under (its absolute path), for clusters whose nodes see the submitting "
                    "machine's environment, such as the single-node test cluster.",
    )
    additional_parameters: dict[str, Any] = Field(default_factory=dict, description="Extra sbatch parameters.")
    signal_delay_s: int = Field(default=120, ge=0, le=3600)
    max_num_timeout: int = Field(default=3, ge=0, le=1000, description="Requeues allowed after timeout/preemption.")
    folder: str | None = Field(
        default=None, deprecated=True,
        description="Ignored (kept so older profiles still load): submitit's logs and pickles go to "
                    "<run dir>/slurm/<stage>/<job id>/, beside the stage they belong to.")
    gpu_memory_gb: float | None = Field(default=None, gt=0, le=4096, description="Memory of one GPU, for the memory planner.")
    cost_per_gpu_hour: float | None = _cost_per_gpu_hour()
    currency: str = _currency()

    @property
    def world_size(self) -> int:
        """Processes of a training stage: nodes x tasks per node (default one per GPU, 1 on CPU nodes)."""
        return self.nodes * (self.tasks_per_node or max(1, self.gpus_per_node))

    def stage_gpus(self, single_process: bool) -> int:
        """GPUs a stage's allocation holds (SLURM's own figure replaces this at run time)."""
        return min(1, self.gpus_per_node) if single_process else self.nodes * self.gpus_per_node

    @field_validator("python")
    @classmethod
    def _python(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("expected 'python', 'submitting', an interpreter path or a wrapper command, got a blank")
        return v.strip()

    def python_command(self) -> str:
        """The shell command that starts Python on the compute nodes ('submitting' -> this interpreter's path)."""
        return shlex.quote(sys.executable) if self.python == SUBMITTING_PYTHON else self.python


RAY_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")  # Ray's built-in resource names


class RayProfile(Strict):
    kind: Literal["ray"]
    name: str = Field(min_length=1, max_length=NAME_MAX)
    address: str = Field(
        default="local",
        description="'local' (sllm starts a private head on 127.0.0.1 and stops it after the run), 'auto' (the "
                    "cluster in RAY_ADDRESS or on this node), HOST:PORT (a head's GCS), ray://HOST:PORT (Ray "
                    "Client) or http(s)://HOST:8265 (the Ray Jobs API: the whole plan runs on the cluster).",
    )
    num_workers: int = Field(default=1, gt=0, le=100_000, description="Training processes per stage (one per GPU).")
    use_gpu: bool = False
    gpu_memory_gb: float | None = Field(default=None, gt=0, le=4096, description="Memory of one GPU, for the memory planner.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="Per worker, e.g. {CPU: 8, GPU: 1}; default {CPU: 1} (+ GPU: 1 with use_gpu)."
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime_env (working_dir, pip or uv, env_vars, ...). Without working_dir/py_modules the "
                    "cluster is expected to share this checkout (PYTHONPATH is set to it).",
    )
    storage_path: str | None = Field(
        default=None, description="Where Ray Train keeps checkpoints: a shared folder or s3://bucket/prefix "
                                  "(endpoint and credentials as for the feature cache); default <run dir>/ray.",
    )
    max_failures: int = Field(default=0, ge=-1, le=1000, description="Worker-group restarts from the latest checkpoint.")
    num_to_keep: int | None = Field(default=2, gt=0, le=10_000, description="Checkpoints Ray Train keeps per stage.")
    placement_timeout_s: float = Field(
        default=120.0, gt=0, description="Bound on waiting for the workers to be placed (then the stage fails)."
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60, description="Bound on reaching the cluster.")
    controller_poll_s: float = Field(
        default=0.25, gt=0, le=60,
        description="How often Ray Train's controller polls the workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S; Ray's "
                    "default 2 s adds up to ~3 s to every stage's end). An exported variable wins.",
    )
    reuse_driver: bool = Field(
        default=True,
        description="One driver (one Ray job, one connection) runs the pipeline's stages in turn; false: a fresh "
                    "driver process per stage.",
    )
    entrypoint_python: str = Field(
        default="python", description="Ray Jobs: the interpreter the entrypoint runs with on the cluster "
                                      "(the head's PATH applies; name a venv's python explicitly).",
    )
    cost_per_gpu_hour: float | None = _cost_per_gpu_hour()
    currency: str = _currency()

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v in ("local", "auto") or v.startswith(("ray://", "http://", "https://")):
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected 'local', 'auto', HOST:PORT, ray://HOST:PORT or http(s)://HOST:PORT, got {v!r}")
        return v

    @field_validator("resources_per_worker")
    @classmethod
    def _resources(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not (x >= 0 and x < float("inf"))}
        if bad:
            raise ValueError(f"expected finite amounts >= 0, got {bad}")
        for key in v:  # a custom resource is Ray's to allow; a near miss of a built-in one would never be scheduled
            if key in RAY_RESOURCES:
                continue
            near = [r for r in RAY_RESOURCES if r.lower() == key.strip().lower()] or \
                difflib.get_close_matches(key, RAY_RESOURCES, n=1, cutoff=0.75)
            if near:
                raise ValueError(f"resource {key!r} looks like Ray's {near[0]!r} (names are exact and case-sensitive; "
                                 f"a custom resource must not be a near miss of {', '.join(RAY_RESOURCES)})")
        return v

    @property
    def world_size(self) -> int:
        return self.num_workers

    def stage_gpus(self, single_process: bool) -> int:
        """GPUs a stage's workers hold: workers x GPUs per worker (one worker for merge/eval)."""
        per = self.worker_resources().get("GPU", 0.0)
        return int(round((1 if single_process else self.num_workers) * per))

    @property
    def jobs_api(self) -> bool:
        """True when the address is a dashboard (Ray Jobs API): the plan is submitted to run on the cluster."""
        return self.address.startswith(("http://", "https://"))

    def worker_resources(self) -> dict[str, float]:
        """What one worker asks for (Ray Train's default: 1 CPU, plus 1 GPU with use_gpu)."""
        res = dict(self.resources_per_worker) or {"CPU": 1.0}
        if self.use_gpu:
            res.setdefault("GPU", 1.0)
        return {k: float(v) for k, v in res.items() if v}


ClusterProfile = Annotated[Union[LocalProfile, SlurmProfile, RayProfile], Field(discriminator="kind")]


_PROFILE_ADAPTER: Any = None


def _profile_adapter() -> Any:
    global _PROFILE_ADAPTER
    if _PROFILE_ADAPTER is None:
        from pydantic import TypeAdapter

        _PROFILE_ADAPTER = TypeAdapter(ClusterProfile)
    return _PROFILE_ADAPTER
