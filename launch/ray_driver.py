"""The driver of one stage on Ray: `python -m launch.ray_driver REQUEST.json PROFILE.json ADDRESS`.

It connects to the cluster and fits a TorchTrainer whose workers run the stage function through
`launch.worker.run_request`. Rank 0 alone writes the MLflow run the launcher created (the same run
across worker-group restarts), logs to stage.log and writes result.json; the HF Trainer reports its
complete checkpoints to Ray Train through a RayTrainReportCallback, and a restarted worker group
first puts the latest reported checkpoint back where the stage resumes from.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from launch.executor import LaunchRequest
from sllm_lib.files import building_folder, write_json_atomic
from sllm_lib.spec import RayProfile

log = logging.getLogger("launch.ray_driver")

# environment a worker needs from the launcher's side (Ray workers inherit the head's environment, not ours);
# passed in the train loop's config rather than runtime_env, so credentials do not show in the dashboard
# (never CUDA_VISIBLE_DEVICES: Ray gives each GPU worker its own)
FORWARD_PREFIXES = ("MLFLOW_", "AWS_", "SLLM_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH_")
FORWARD_NAMES = ("PYTHONHASHSEED", "TORCH_EXTENSIONS_DIR")


def forwarded_env(req: LaunchRequest, base: dict[str, str] | None = None) -> dict[str, str]:
    base = dict(os.environ if base is None else base)
    env = {k: v for k, v in base.items() if k.startswith(FORWARD_PREFIXES) or k in FORWARD_NAMES}
    env.update(req.env)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def job_runtime_env(profile: RayProfile, project_root: Path, address: str | None = None) -> dict[str, Any]:
    """The job-level runtime_env: the profile's, plus PYTHONPATH to this checkout when nothing ships the code,
    plus the bound on waiting for worker placement (read by Ray Train's controller)."""
    env = json.loads(json.dumps(profile.runtime_env))  # a deep copy
    env_vars = dict(env.get("env_vars") or {})
    if address and "://" not in address:
        # Ray Train's placement-group cleaner looks its cluster up by "auto": with two heads on one machine
        # it finds both and fails; name ours
        env_vars.setdefault("RAY_ADDRESS", address)
    if not env.get("working_dir") and not env.get("py_modules"):
        env_vars.setdefault("PYTHONPATH", str(project_root))
    env_vars["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(profile.placement_timeout_s)
    env["env_vars"] = env_vars
    return env


def storage(profile: RayProfile, req: LaunchRequest, job: Any) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Train: a folder, or s3:// with the feature cache's endpoint."""
    path = profile.storage_path or str(Path(req.run_dir) / "ray")
    if not path.startswith("s3://"):
        return str(Path(path).resolve()), None
    import s3fs
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    endpoint = (getattr(job.cache, "endpoint_url", None) if job is not None else None) or \
        os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    # s3fs, as the feature cache uses, rather than pyarrow's S3FileSystem: pyarrow writes "dir/" marker objects,
    # which S3-compatible servers such as rclone's reject (InternalError on PutObject of a key ending in /)
    creds = {}
    if os.environ.get("AWS_ACCESS_KEY_ID"):  # the controller and workers run with the head's environment, not ours
        creds = {"key": os.environ["AWS_ACCESS_KEY_ID"], "secret": os.environ.get("AWS_SECRET_ACCESS_KEY"),
                 "token": os.environ.get("AWS_SESSION_TOKEN")}
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False, **creds)
    return path[len("s3://"):], PyFileSystem(FSSpecHandler(fs))


# ------------------------------------------------------------------------------------------ worker side


def report_callback(rank: int) -> Any:
    """Ray's transformers report callback, reporting the checkpoint the Trainer just completed (rank 0 only).

    Ray's own `on_save` copies `get_last_checkpoint(output_dir)` on every rank: on a shared folder that is
    N ranks uploading the same files at once, and it may pick a checkpoint still being written.
    """
    import ray.train
    from ray.train import Checkpoint
    from ray.train.huggingface.transformers import RayTrainReportCallback

    from sllm_lib.training.runner import COMPLETE_MARKER

    class StageReport(RayTrainReportCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            metrics: dict[str, Any] = {}
            for entry in state.log_history:
                metrics.update(entry)
            metrics["step"] = state.global_step
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if rank != 0 or not (ckpt / COMPLETE_MARKER).is_file():
                ray.train.report(metrics=metrics, checkpoint=None)  # every rank reports: it is a collective
                return
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copytree(ckpt, Path(tmp) / self.CHECKPOINT_NAME)
                ray.train.report(metrics=metrics, checkpoint=Checkpoint.from_directory(tmp))

    return StageReport()


def restore_checkpoint(checkpoint: Any, folder: Path, rank: int) -> Path | None:
    """Put Ray Train's latest checkpoint back as checkpoint-N under `folder` (rank 0; atomic), then barrier."""
    from sllm_lib.training.runner import COMPLETE_MARKER

    placed = None
    if checkpoint is not None and rank == 0:
        with checkpoint.as_directory() as d:
            src = Path(d) / "checkpoint"
            state = json.loads((src / "trainer_state.json").read_text(encoding="utf-8"))
            dest = folder / f"checkpoint-{int(state['global_step'])}"
            placed = dest
            if not (dest / COMPLETE_MARKER).is_file():  # replaces a half-written leftover without the marker
                with building_folder(dest) as tmp:
                    shutil.copytree(src, tmp, dirs_exist_ok=True)
                log.info("restored Ray Train checkpoint of step %s into %s", state["global_step"], dest)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()  # no rank looks for its resume point before rank 0 has put it back
    return placed


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    os.environ.update(config["env"])
    if config.get("cwd") and Path(config["cwd"]).is_dir():
        os.chdir(config["cwd"])  # relative paths of the spec resolve as on the launcher (a shared checkout)
    import ray.train
    from ray.train.huggingface.transformers import prepare_trainer

    from launch.worker import configure_logging, run_request

    tc = ray.train.get_context()
    rank = tc.get_world_rank()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(tc.get_world_size()), LOCAL_RANK=str(tc.get_local_rank()))
    req = LaunchRequest.from_json(config["request"])
    configure_logging(req.log_file if rank == 0 else None)
    restore_checkpoint(ray.train.get_checkpoint(), Path(req.stage_dir) / "checkpoints", rank)
    training = not req.single_process
    try:
        run_request(req, trainer_callbacks=[report_callback(rank)] if training else [],
                    prepare_trainer=prepare_trainer if training else None)
    except BaseException as exc:
        logging.getLogger("launch.worker").error("stage %s failed on rank %d: %s\n%s", req.stage, rank, exc,
                                                 traceback.format_exc())
        raise


# ------------------------------------------------------------------------------------------ driver side


def ray_run_name(req: LaunchRequest) -> str:
    """Ray Train's run name: one per stage folder (a sweep point is its own run), stable across re-runs, so a
    re-run finds the checkpoints its previous attempt reported."""
    try:
        where = Path(req.stage_dir).resolve().relative_to(Path(req.run_dir).resolve()).parts
    except ValueError:
        where = (req.stage,)
    slug = "-".join(p for p in where if p != "stages") or req.stage
    return f"{req.job_name}-{req.spec_hash[:12]}-{slug}"


def build_trainer(req: LaunchRequest, profile: RayProfile, job: Any) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from launch.ray_executor import RayExecutor

    path, fs = storage(profile, req, job)
    scaling = RayExecutor.scaling_for(profile, req)
    run_name = ray_run_name(req)
    config = {"request": req.to_json(), "env": forwarded_env(req), "cwd": os.getcwd()}
    return TorchTrainer(
        train_loop, train_loop_config=config,
        scaling_config=ScalingConfig(**scaling),
        torch_config=TorchConfig(backend="nccl" if profile.use_gpu else "gloo"),
        run_config=RunConfig(
            name=run_name, storage_path=path, storage_filesystem=fs,
            # controller errors (the worker group could not be placed in placement_timeout_s) are not retried:
            # Ray's default is to retry them forever, an endless hang on a cluster that is too small
            failure_config=FailureConfig(max_failures=profile.max_failures, controller_failure_limit=0),
            checkpoint_config=CheckpointConfig(num_to_keep=profile.num_to_keep),
        ),
    )


_RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Fault)\b:")


def describe_failure(exc: BaseException, profile: RayProfile, scaling: dict[str, Any]) -> str:
    """What went wrong, in a line a user can act on (Ray wraps the cause in several layers of text)."""
    text = str(exc)
    if "worker group startup timed out" in text.lower():
        return (f"the {scaling['num_workers']} worker(s) of {json.dumps(scaling['resources_per_worker'])} could not "
                f"be placed within placement_timeout_s={profile.placement_timeout_s:g} s (WorkerGroupStartupTimeout): "
                f"the cluster lacks those resources; lower num_workers / resources_per_worker or add nodes")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    raised = [ln for ln in lines if _RAISED.match(ln)]
    why = raised[-1] if raised else " ".join(lines[:2]) if lines else type(exc).__name__
    if "worker group" in text.lower() or "Error Snippet" in text:
        why += f" (after the {profile.max_failures} restart(s) max_failures allows)"
    return why


CLIENT_START_TRIES = 3


def _client_server_did_not_start(message: str) -> bool:
    """Ray Client's refusal says its proxy could not start this client's server (see `connect`)."""
    return "Starting Ray client server failed" in message or "in start_specific_server" in message


def connect(ray: Any, address: str, runtime_env: dict[str, Any], *, tries: int = CLIENT_START_TRIES,
            pause_s: float = 1.0) -> None:
    """`ray.init` on the cluster. Through Ray Client (ray://), a per-client server that failed to start is retried.

    Ray Client's proxy starts one server process per client (on the first port of 23000-24000 that binds at that
    instant, `ray/util/client/server/proxier.py`, `_get_unused_port`) and watches it turn into the server by
    polling its command line (`start_specific_server`). That process sometimes exits at once, leaving an empty
    `ray_client_server_<port>.err` (seen in 1 of 3 runs of the Ray test module here, never with the test alone): the proxy then refuses the connection, either with "Starting Ray client
    server failed" (it saw the exit) or with psutil's ZombieProcess from inside `start_specific_server` (it
    looked at the command line of the exited process). Both are failures to start this client's server, and the
    next connection gets a fresh one on the next port. Any other refusal is final.
    """
    for attempt in range(1, tries + 1):
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, logging_level=logging.WARNING)
            return
        except ConnectionAbortedError as exc:
            if not address.startswith("ray://") or not _client_server_did_not_start(str(exc)) or attempt == tries:
                raise
            log.warning("Ray Client at %s refused the connection (its per-client server did not start, try %d/%d): "
                        "%s; connecting again", address, attempt, tries, str(exc).strip().splitlines()[-1])
            if ray.is_initialized():
                ray.shutdown()
            time.sleep(pause_s)


TIMING_FILE = "ray_timing.json"  # where a stage's time on Ray went (epoch seconds of each step of the driver)


def poll_env(profile: RayProfile) -> dict[str, str]:
    """Ray Train settings for this stage's controller, unless the user exported them. Ray propagates these from
    the driver's environment to the controller and the workers (ray.train.v2 ENV_VARS_TO_PROPAGATE)."""
    wanted = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": f"{profile.controller_poll_s:g}"}
    return {k: v for k, v in wanted.items() if k not in os.environ}


def _fit(ray: Any, req: LaunchRequest, profile: RayProfile, address: str, timing: dict[str, Any], *,
         connected: bool) -> int:
    """One stage: connect (unless this driver already is), build the TorchTrainer, fit. The exit code of the stage;
    a failure is logged with a line a user can act on, in driver.log and stage.log."""
    from launch.ray_executor import RayExecutor
    from sllm_lib.spec import load_job_spec

    t0 = time.perf_counter()
    scaling = RayExecutor.scaling_for(profile, req)
    try:
        job = load_job_spec(req.spec_path)
        if not connected:
            connect(ray, address, job_runtime_env(profile, Path(__file__).resolve().parents[1], address))
        timing["connected"] = time.time()
        trainer = build_trainer(req, profile, job)
        timing["trainer_built"] = time.time()
        log.info("stage=%s TorchTrainer with %d worker(s) at %s", req.stage, trainer.scaling_config.num_workers,
                 address)
        trainer.fit()
        timing["fit_returned"] = time.time()
    except BaseException as exc:
        why = describe_failure(exc, profile, scaling)
        log.error("stage %s failed on Ray: %s\n%s", req.stage, why, traceback.format_exc())
        try:  # stage.log is where `sllm logs` and the launcher's error look
            with open(req.log_file, "a", encoding="utf-8") as f:
                f.write(f"ray: stage {req.stage} failed: {why}\n")
        except OSError:
            pass
        return 1
    log.info("stage=%s done on Ray in %.1f s", req.stage, time.perf_counter() - t0)
    return 0 if req.result_file.is_file() else 1


def _record_timing(req: LaunchRequest, timing: dict[str, Any]) -> None:
    try:
        write_json_atomic(Path(req.stage_dir) / TIMING_FILE, timing)
    except OSError as exc:  # a record of where time went must never fail the stage
        log.warning("could not write %s: %s", TIMING_FILE, exc)


def _warm_pool(ray: Any) -> None:
    """Have Ray start this job's worker processes now, between stages, rather than when the next stage's actors
    ask for them: a pooled idle worker is leased to an actor without a process start (~1 s of CPU each on 2
    cores). Ray keeps up to a node's CPU count of idle workers (num_workers_soft_limit); at most 4 are asked
    for. Nothing waits on them."""
    try:
        n = max(1, min(4, int(ray.cluster_resources().get("CPU", 1))))

        @ray.remote(num_cpus=0)
        def _ready() -> int:
            return os.getpid()

        for _ in range(n):
            _ready.remote()
    except Exception as exc:  # a warm-up must never fail the pipeline
        log.debug("could not warm Ray's worker pool: %s", exc)


def serve(profile_path: str, address: str) -> int:
    """A driver that runs the stages of one pipeline, one after the other, over one connection to the cluster:
    `python -m launch.ray_driver --serve PROFILE.json ADDRESS`, then one JSON line per stage on stdin
    (`{"request": REQUEST.json, "done": DONE.json}`); DONE.json gets the stage's exit code once it has ended.
    Stages after the first skip the driver's start, Ray's import and job start, and torch's import (~3 s each
    on 2 cores). stdin closing ends it."""
    from launch.ray_executor import import_ray
    from launch.worker import configure_logging

    profile = RayProfile.model_validate_json(Path(profile_path).read_text(encoding="utf-8"))
    ray = import_ray(address)
    os.environ.update(poll_env(profile))
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            msg = json.loads(line)
            req = LaunchRequest.from_json(Path(msg["request"]).read_text(encoding="utf-8"))
            for handler in logging.getLogger().handlers:  # the previous stage's driver.log
                handler.close()
            configure_logging(Path(req.stage_dir) / "driver.log")
            now = time.time()
            # Ray and torch were imported before this request came: nothing of this stage's time went there
            timing = {"driver_start": now, "ray_imported": now, "reused_driver": ray.is_initialized()}
            rc = _fit(ray, req, profile, address, timing, connected=ray.is_initialized())
            timing["disconnected"] = time.time()  # stays connected: the next stage starts from here
            if ray.is_initialized():
                _warm_pool(ray)
            _record_timing(req, timing)
            write_json_atomic(Path(msg["done"]), {"rc": rc})
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve":
        return serve(argv[1], argv[2])
    req = LaunchRequest.from_json(Path(argv[0]).read_text(encoding="utf-8"))
    profile = RayProfile.model_validate_json(Path(argv[1]).read_text(encoding="utf-8"))
    address = argv[2]
    from launch.ray_executor import import_ray
    from launch.worker import configure_logging

    configure_logging(Path(req.stage_dir) / "driver.log")
    ray = import_ray(address)
    os.environ.update(poll_env(profile))
    timing: dict[str, Any] = {"driver_start": started, "ray_imported": time.time(), "reused_driver": False}
    try:
        return _fit(ray, req, profile, address, timing, connected=False)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        timing["disconnected"] = time.time()
        _record_timing(req, timing)


if __name__ == "__main__":
    sys.exit(main())
