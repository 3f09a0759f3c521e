"""RayExecutor: each stage a Ray Train `TorchTrainer` run on a Ray cluster.

The launcher keeps the plan and the MLflow runs (as with the local executor); each stage runs in a
driver subprocess (`python -m launch.ray_driver`) that connects to the cluster and fits a TorchTrainer
whose workers run the ordinary stage function. Training stages get `num_workers` workers (gloo on CPU,
nccl on GPU); merge/eval get one. Checkpoints are reported to Ray Train's storage, and `max_failures`
restarts the worker group from the latest one, in the same MLflow run.

Addresses: `local` (a private head on 127.0.0.1, started on first use and stopped by its pid when the
run ends), `auto`, HOST:PORT, ray://HOST:PORT. An http(s):// address is the Ray Jobs API, handled by
`launch.ray_jobs` (the whole plan runs on the cluster).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar

from launch.executor import ExecutorBase, JobState, LaunchRequest
from launch.local import LocalJob, PolledJob
from launch.local import _stop as stop_process
from launch.ray_head import RayHead, is_loopback, ray_env, start_local_head
from sllm_lib.errors import JobSpecError, SubmissionError
from sllm_lib.spec import RayProfile

log = logging.getLogger(__name__)

PROFILE_FILE = "ray_profile.json"
DONE_FILE = "driver_done.json"  # a served stage's end and exit code, written by launch.ray_driver.serve


# ------------------------------------------------------------------------------------------ reachability


def _host_port(address: str) -> tuple[str, int]:
    if "://" in address:
        u = urllib.parse.urlsplit(address)
        return u.hostname or "", u.port or (10001 if u.scheme == "ray" else 443 if u.scheme == "https" else 8265)
    host, _, port = address.rpartition(":")
    return host, int(port)


def resolve_auto() -> str:
    """What `address: auto` means here: RAY_ADDRESS, else the cluster this node last started."""
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env
    current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    if current.is_file():
        text = current.read_text().strip()
        if text:
            return text
    raise SubmissionError("address 'auto': no RAY_ADDRESS and no Ray cluster started on this node; start one "
                          "(`ray start --head`) or name the head in the profile's address")


def check_reachable(address: str, timeout_s: float, *, profile: str = "") -> None:
    """Fail fast (bounded by `timeout_s`) when nothing answers at the cluster's address."""
    host, port = _host_port(address)
    where = f"cluster profile {profile!r}: " if profile else ""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except socket.timeout:
        why = f"no answer within {timeout_s:.0f} s"
    except OSError as exc:
        why = exc.strerror or str(exc)
    raise SubmissionError(f"{where}Ray cluster at {address} is not reachable ({why}); is the head running "
                          f"(`ray status --address {host}:{port}`)? nothing was submitted")


# ------------------------------------------------------------------------------------------ placement


def placement_problem(nodes: list[dict[str, float]], bundle: dict[str, float], count: int, strategy: str) -> str | None:
    """Why `count` workers of `bundle` cannot be placed on `nodes` (total resources per alive node), or None.

    PACK and SPREAD may use any node; STRICT_PACK needs one node for all; STRICT_SPREAD one node each.
    """
    def fits(node: dict[str, float]) -> int:
        per = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items() if v > 0]
        return min(per) if per else count

    capacity = [fits(n) for n in nodes]
    if strategy == "STRICT_PACK":
        ok, room = max(capacity, default=0) >= count, max(capacity, default=0)
    elif strategy == "STRICT_SPREAD":
        room = sum(1 for c in capacity if c >= 1)
        ok = room >= count
    else:
        room = sum(capacity)
        ok = room >= count
    if ok:
        return None
    totals: dict[str, float] = {}
    for n in nodes:
        for k in bundle:
            totals[k] = totals.get(k, 0.0) + n.get(k, 0.0)
    have = ", ".join(f"{k}: {v:g}" for k, v in sorted(totals.items()))
    need = ", ".join(f"{k}: {v:g}" for k, v in sorted(bundle.items()))
    return (f"{count} workers of {{{need}}} ({strategy}) do not fit: the cluster's {len(nodes)} alive node(s) have "
            f"{{{have}}} in all, room for {room} such worker(s)")


def import_ray(address: str | None = None) -> Any:
    """`import ray` for a driver of ours, with the environment our heads run with.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import; left on, it rewrites a 127.0.0.1 head
    address to the machine's other interface and the connection hangs (ray/_private/services.py,
    resolve_ip_for_localhost). If ray was imported before the variable was set, its constant is synced.
    """
    loopback = is_loopback(address)
    os.environ.update({k: v for k, v in ray_env(loopback=loopback).items() if k.startswith("RAY_")})
    import ray
    from ray._private import ray_constants

    if loopback and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False  # see above: imported earlier by someone else
    return ray


def cluster_nodes(address: str) -> list[dict[str, float]]:
    """Total resources of every alive node (a short-lived driver connection)."""
    ray = import_ray(address)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)
    try:
        return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------------------ executor


class RayStageJob(LocalJob):
    """The driver subprocess of one stage (its pid names the job: `ray-PID`)."""

    def __init__(self, req: LaunchRequest, proc: subprocess.Popen) -> None:
        super().__init__(req, [proc])
        self.job_id = f"ray-{proc.pid}"


class ServedStageJob(PolledJob):
    """A stage run by the pipeline's long-lived driver (`launch.ray_driver --serve`); its job id names that
    driver's pid, as a one-shot driver's does (`sllm cancel` stops it, and the stage with it)."""

    def __init__(self, req: LaunchRequest, server: _DriverServer, done: Path) -> None:
        self.req, self.server, self.done = req, server, done
        self.job_id = f"ray-{server.proc.pid}"
        self._cancelled = False

    def ended(self) -> bool:
        return self.done.is_file() or self.server.proc.poll() is not None

    def state(self) -> JobState:
        if self._cancelled and self.server.proc.poll() is not None:  # its driver may have recorded rc 1 on the way out
            return JobState.CANCELLED
        if self.done.is_file():
            rc = json.loads(self.done.read_text(encoding="utf-8")).get("rc", 1)
            return JobState.COMPLETED if rc == 0 and self.req.result_file.is_file() else JobState.FAILED
        return JobState.RUNNING if self.server.proc.poll() is None else JobState.FAILED

    def cancel(self) -> None:
        if not self.ended():
            self._cancelled = True
            stop_process(self.server.proc)  # its Ray job ends with it, and the stage's workers with the job


class _DriverServer:
    """The pipeline's long-lived Ray driver: one connection (one Ray job) for every stage it runs."""

    def __init__(self, cmd: list[str], env: dict[str, str], key: str) -> None:
        self.key = key
        self.proc = subprocess.Popen(cmd, env=env, cwd=os.getcwd(), stdin=subprocess.PIPE, text=True,
                                     encoding="utf-8")
        self.current: ServedStageJob | None = None

    def idle(self) -> bool:
        return self.proc.poll() is None and (self.current is None or self.current.ended())

    def run(self, req: LaunchRequest) -> ServedStageJob:
        done = Path(req.stage_dir) / DONE_FILE
        done.unlink(missing_ok=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"request": str(req.request_file), "done": str(done)}) + "\n")
        self.proc.stdin.flush()
        self.current = ServedStageJob(req, self, done)
        return self.current

    def close(self, timeout_s: float = 60.0) -> None:
        """Close its stdin: it disconnects from the cluster and exits (stopped after `timeout_s`)."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                stop_process(self.proc)


class RayExecutor(ExecutorBase):
    """Runs each stage as a TorchTrainer fit on a Ray cluster, one stage after the other."""

    name: ClassVar[str] = "ray"
    supports_dependencies: ClassVar[bool] = False

    def __init__(self, profile: RayProfile) -> None:
        from launch.ray_jobs import IN_JOB_ENV

        if profile.jobs_api:
            if not os.environ.get(IN_JOB_ENV):
                raise JobSpecError(f"cluster profile {profile.name!r}: {profile.address} is a Ray Jobs API address; "
                                   f"`sllm submit` sends the whole plan there as one Ray job")
            profile = profile.model_copy(update={"address": "auto"})  # inside that job: the cluster it runs in
        self.profile = profile
        self._head: RayHead | None = None
        self._address: str | None = None
        self._checked = False
        self._server: _DriverServer | None = None

    # -- the cluster

    def address(self) -> str:
        """The GCS (or ray://) address stages connect to; `local` starts the private head on first use."""
        if self._address is None:
            p = self.profile
            if p.address == "local":
                gpus = None if p.use_gpu else 0
                self._head = start_local_head(num_gpus=gpus)
                self._address = self._head.gcs_address
            elif p.address == "auto":
                self._address = resolve_auto()
            else:
                self._address = p.address
        return self._address

    def close(self) -> None:
        """Stop the pipeline's driver, then the private head (address: local); a shared cluster is left alone."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._head is not None:
            self._head.stop()
            self._head = None
            self._address = None
            self._checked = False

    def preflight(self, req: LaunchRequest) -> None:
        """Bounded reachability, then: can the cluster place this stage's workers at all?"""
        p = self.profile
        address = self.address()
        check_reachable(address, p.connect_timeout_s, profile=p.name)
        if address.startswith("ray://"):
            return  # Ray Client: node resources are not worth a second session; the bounded wait still applies
        if not self._checked:
            self._nodes = cluster_nodes(address)
            self._checked = True
        count = 1 if req.single_process else p.num_workers
        problem = placement_problem(self._nodes, p.worker_resources(), count, p.placement_strategy)
        if problem:
            raise JobSpecError(f"cluster profile {p.name!r}: stage {req.stage!r}: {problem}; lower num_workers or "
                               f"resources_per_worker, or add nodes. Nothing was submitted")

    # -- one stage

    @staticmethod
    def scaling_for(p: RayProfile, req: LaunchRequest) -> dict[str, Any]:
        """ScalingConfig arguments for a stage (what `sllm plan` shows)."""
        return {"num_workers": 1 if req.single_process else p.num_workers, "use_gpu": p.use_gpu,
                "resources_per_worker": p.worker_resources(), "placement_strategy": p.placement_strategy}

    def render(self, req: LaunchRequest) -> str:
        """The TorchTrainer a stage becomes (pure: nothing connects)."""
        p = self.profile
        sc = self.scaling_for(p, req)
        storage = p.storage_path or f"{req.run_dir}/ray"
        return (f"TorchTrainer({sc['num_workers']} x {json.dumps(sc['resources_per_worker'])}, "
                f"{'nccl' if p.use_gpu else 'gloo'}, {p.placement_strategy}) at {p.address}; "
                f"max_failures={p.max_failures}, keep {p.num_to_keep}, storage {storage}")

    def command(self, req: LaunchRequest) -> list[str]:
        return [sys.executable, "-m", "launch.ray_driver", str(req.request_file), str(Path(req.stage_dir) / PROFILE_FILE),
                self.address()]

    def submit(self, req: LaunchRequest) -> RayStageJob | ServedStageJob:
        Path(req.stage_dir).mkdir(parents=True, exist_ok=True)
        req.result_file.unlink(missing_ok=True)
        req.request_file.write_text(req.to_json(), encoding="utf-8")
        profile_file = Path(req.stage_dir) / PROFILE_FILE
        profile_file.write_text(self.profile.model_dump_json(), encoding="utf-8")
        env = ray_env(loopback=is_loopback(self.address()))
        env.update(req.env)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                          env.get("PYTHONPATH", "")]))
        if self.profile.reuse_driver:
            # the pipeline's driver runs the stage when it is free and started with the same environment; else
            # (e.g. a checkpoint evaluation beside a training stage) a one-shot driver does
            key = json.dumps(req.env, sort_keys=True)
            if self._server is None or self._server.proc.poll() is not None:
                self._server = _DriverServer([sys.executable, "-m", "launch.ray_driver", "--serve", str(profile_file),
                                              self.address()], env, key)
            if self._server.idle() and self._server.key == key:
                job = self._server.run(req)
                log.debug("stage %s: run by the pipeline's Ray driver (pid %d)", req.stage, self._server.proc.pid)
                return job
        cmd = self.command(req)
        log.debug("stage %s: %s", req.stage, " ".join(shlex.quote(c) for c in cmd))
        proc = subprocess.Popen(cmd, env=env, cwd=os.getcwd())
        return RayStageJob(req, proc)
