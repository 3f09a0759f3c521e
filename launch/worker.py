"""Runs one stage from a LaunchRequest: `python -m launch.worker REQUEST.json` (or in-process).

The worker is the only place that turns a request into a StageContext: it reads the resolved spec the
launcher wrote, binds the tracker to the stage's run id, calls the stage function and writes
result.json atomically.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from launch.executor import LaunchRequest
from sllm_lib.spec import load_job_spec, stage_with
from sllm_lib.stage import StageContext, StageResult
from sllm_lib.files import write_json_atomic
from sllm_lib.tracking.tracker import NullTracker
from sllm_lib.training.interrupt import StageInterrupted

log = logging.getLogger(__name__)

STAGE_CONFIG = "stage_config.yaml"  # the stage's resolved configuration, beside stage.log


def _tracker(req: LaunchRequest, rank: int, tracking: Any):
    from sllm_lib.tracking.journal import JOURNAL, Journal
    from sllm_lib.tracking.sidecar import SidecarTracker
    from sllm_lib.tracking.sidecar import enabled as sidecar_enabled
    from sllm_lib.tracking.tracker import MlflowTracker, NullTracker

    if rank != 0 or not req.run_id:
        return NullTracker()
    if not req.tracking_strict and sidecar_enabled():
        # MLflow loads in a helper process while the stage starts; strict tracking stays in-process (every
        # call's failure must fail the stage at that call)
        try:
            return SidecarTracker(req.tracking_uri, req.run_id, journal_path=Path(req.stage_dir) / JOURNAL,
                                  call_timeout_s=tracking.call_timeout_s)
        except OSError as exc:
            log.warning("tracking: could not start the helper process (%s); tracking in the stage process", exc)
    return MlflowTracker(req.tracking_uri, req.run_id, strict=req.tracking_strict,
                         journal=Journal(Path(req.stage_dir) / JOURNAL), call_timeout_s=tracking.call_timeout_s)


def _protect_secrets(job: Any) -> dict[str, str]:
    """Register every secret this process may see (masked in logs and MLflow); the stage's env: resolved."""
    from sllm_lib.errors import JobSpecError
    from sllm_lib.secrets import protect_job
    from sllm_lib.tracking.tracker import configure_http

    try:
        env = protect_job(job)
    except KeyError as exc:
        raise JobSpecError(str(exc.args[0])) from None
    configure_http(job.tracking)
    return env


def _activate_cache(job: Any, stage: Any) -> Any:
    """The job's feature cache for stages that read audio (None for text-only stages or mode off)."""
    if not stage.reads_audio:
        return None
    if stage.scores_datasets and all(ref.kind in ("text_qa", "classification", "vision") for ref in stage.datasets):
        return None  # text-only evaluation (e.g. a causal LM's): no audio, no cache
    from sllm_lib.data.feature_cache import activate

    return activate(job)


def run_request(req: LaunchRequest, *, trainer_callbacks: list[Any] | None = None,
                prepare_trainer: Any = None) -> StageResult:
    """Run the stage described by `req` in this process and return its result.

    `trainer_callbacks` / `prepare_trainer` are what an executor adds to a training stage's Trainer (Ray Train).
    """
    job = load_job_spec(req.spec_path)
    env = _protect_secrets(job)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        if req.task == "checkpoint_eval":  # the checkpoint watcher's job: score one checkpoint of the stage
            from eval.watch import run_checkpoint_eval

            return run_checkpoint_eval(req, job)
        return _run(req, job, rank=int(os.environ.get("RANK", "0")), trainer_callbacks=trainer_callbacks or [],
                    prepare_trainer=prepare_trainer)
    finally:
        for k, v in saved.items():  # an in-process stage must not leak its env: into the launcher
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(req: LaunchRequest, job: Any, *, rank: int, trainer_callbacks: list[Any] | None = None,
         prepare_trainer: Any = None) -> StageResult:
    from launch.stages import STAGE_FUNCTIONS

    stage = job.stage(req.stage)
    if req.overrides:  # one point of a sweep
        stage = stage_with(stage, req.overrides)
    ctx = StageContext(
        job=job, spec_hash=req.spec_hash, stage_dir=Path(req.stage_dir), chain=[Path(p) for p in req.chain],
        upstream_output=Path(req.upstream_output) if req.upstream_output else None, upstream_kind=req.upstream_kind,
        tracker=_tracker(req, rank, job.tracking), rank=rank, world_size=int(os.environ.get("WORLD_SIZE", "1")),
        tracking_uri=req.tracking_uri or None, run_id=req.run_id, trainer_callbacks=list(trainer_callbacks or []),
        prepare_trainer=prepare_trainer,
    )
    log.info("stage=%s kind=%s starting (run %s, rank %d of %d)", stage.name, stage.kind, req.run_id, rank,
             ctx.world_size)
    recorder = cache = None
    clean = False
    ended = "failed"
    try:
        if rank == 0:
            _record_attempt(req)
            from sllm_lib.usage import AttemptRecorder

            recorder = AttemptRecorder(Path(req.stage_dir), gpus=req.gpus)
            recorder.start()
        # the stage's own run reflects when it really runs and ends (a detached launcher is not there to do it)
        ctx.tracker.set_status("RUNNING")
        cache = _activate_cache(job, stage)
        result = STAGE_FUNCTIONS[stage.kind](stage, ctx)
        if cache is not None:
            stats = cache.stats.as_dict()
            log.info("stage=%s feature cache %s: %s", stage.name, cache.uri,
                     ", ".join(f"{k} {v}" for k, v in stats.items()))
            result.metrics.update({f"cache/{k}": float(v) for k, v in stats.items()
                                   if k in ("hits", "misses", "corrupt", "fallbacks")})
            ctx.tracker.log_metrics({f"cache/{k}": float(v) for k, v in stats.items()})
        if rank == 0:
            _log_output_model(stage, ctx, result)
            result.extras["usage"] = _account(req, ctx, recorder, "completed")
            write_json_atomic(req.result_file, result.to_dict())
            ended = "completed"  # only once its result is written: else the finally below restates it failed
        ctx.tracker.set_status("FINISHED")
        clean = True
        return result
    except StageInterrupted:
        clean = True  # every rank stopped at the same step (all-reduced)
        ended = "interrupted"
        raise  # requeued: the run goes on in the next attempt
    except BaseException:
        ctx.tracker.set_status("FAILED")
        raise
    finally:
        if cache is not None:
            from sllm_lib.audio.features import set_feature_cache

            set_feature_cache(None)
        if rank == 0:
            if ended != "completed":
                _account(req, ctx, recorder, ended)
            _log_stage_files(req, stage, ctx)
        flush = getattr(ctx.tracker, "flush", None)
        if flush is not None:
            flush()  # replay what an outage journaled, now that the stage is done (bounded)
        if clean:
            _close_distributed()
        # after a failure there is no barrier: the other ranks may sit in a collective this rank will never join
        # (the scheduler or Ray Train ends them)


def _log_output_model(stage: Any, ctx: StageContext, result: StageResult) -> None:
    """A training stage's adapter as an MLflow LoggedModel *output* of its run, with the stage's configuration,
    final metrics and the upstream models it was trained on (merge, prune and quantize log their own model).

    A tracking failure here costs the link, not the trained adapter: a warning, unless tracking.strict."""
    if stage.output != "adapter" or not result.output_dir or "model_id" in result.extras:
        return
    if isinstance(ctx.tracker, NullTracker):
        return
    from sllm_lib.stage import upstream_model_ids
    from sllm_lib.tracking.tracker import logged_model_name

    try:
        info = ctx.tracker.log_model(
            result.output_dir, name=logged_model_name(ctx.job.name, stage.name), model_type="adapter",
            source_model_ids=upstream_model_ids(ctx.chain), step=result.steps, files=ctx.job.tracking.model_files,
            metrics={f"final/{k}": v for k, v in result.metrics.items() if not k.startswith("cache/")},
            params=stage.model_dump(mode="json"))
    except Exception as exc:
        if ctx.job.tracking.strict:
            raise
        log.warning("tracking: stage %s's adapter was not logged as an MLflow model (%s: %s); it is in %s",
                    stage.name, type(exc).__name__, exc, result.output_dir)
        return
    result.extras.update(info)
    log.info("stage=%s adapter logged as MLflow model %s", stage.name, info.get("model_id"))


def _log_stage_files(req: LaunchRequest, stage: Any, ctx: StageContext) -> None:
    """The stage's resolved configuration and its log as artifacts of its run (also after a failure, when the
    log matters most): teammates on a team server read them there, not in a run folder they cannot see."""
    if isinstance(ctx.tracker, NullTracker):
        return
    import yaml

    config = Path(req.stage_dir) / STAGE_CONFIG
    try:
        tmp = config.with_name(f".{config.name}.{os.getpid()}")
        tmp.write_text(yaml.safe_dump(stage.model_dump(mode="json"), sort_keys=False, allow_unicode=True),
                       encoding="utf-8")
        os.replace(tmp, config)
        ctx.tracker.log_artifact(config, "stage")
        for handler in logging.getLogger().handlers:
            handler.flush()
        if req.log_file.is_file():
            ctx.tracker.log_artifact(req.log_file, "stage")
    except Exception as exc:  # never raised: this runs in the stage's `finally`, where it would hide the cause
        log.warning("tracking: stage %s's config and log were not logged as artifacts (%s: %s)", stage.name,
                    type(exc).__name__, exc)


def _account(req: LaunchRequest, ctx: StageContext, recorder: Any, ended: str) -> dict[str, Any]:
    """End this attempt and record the stage's usage so far (every attempt in its folder): usage.json beside the
    stage, usage/* (and cost/amount with a price) metrics and start/end tags on its run. Never raises."""
    from sllm_lib.usage import USAGE_FILE, stage_usage

    if recorder is None:  # the stage failed before its attempt was recorded
        return {}
    try:
        recorder.finish(ended)
        usage = stage_usage(Path(req.stage_dir), cost_per_gpu_hour=req.cost_per_gpu_hour, currency=req.currency)
        summary = usage.to_dict()
        write_json_atomic(Path(req.stage_dir) / USAGE_FILE, summary)
        ctx.tracker.log_metrics(usage.metrics())
        ctx.tracker.set_tags(usage.tags())
        log.info("stage=%s usage: %d attempt(s), %.1f s, %.3f GPU-hours%s", req.stage, len(usage.attempts),
                 usage.wall_s, usage.gpu_hours, "" if usage.cost is None else f", {usage.cost:.2f} {usage.currency}")
        return {k: summary[k] for k in ("wall_s", "gpu_hours", "interrupted_gpu_hours", "cost", "currency")}
    except Exception as exc:  # accounting must never fail (or mask the failure of) the stage
        log.warning("usage: stage %s's usage not recorded (%s: %s)", req.stage, type(exc).__name__, exc)
        return {}


def _record_attempt(req: LaunchRequest) -> None:
    """One line per start of the stage (requeues and re-runs add lines): time, host, scheduler job id."""
    import json
    import socket
    import time

    line = {"time": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "restart_count": os.environ.get("SLURM_RESTART_COUNT")}
    with open(Path(req.stage_dir) / "attempts.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def _close_distributed() -> None:
    """Barrier + destroy: without it a rank can abort at exit ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def configure_logging(log_file: Path | None) -> None:
    """Status lines to stdout, warnings to stderr, everything to the stage log (rank 0 passes a file)."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(os.environ.get("SLLM_LOG_LEVEL", "INFO").upper())
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(logging.Formatter("  %(message)s"))
    out.addFilter(lambda r: r.levelno < logging.WARNING and r.name.startswith(("sllm_lib", "launch", "eval")))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter("  %(levelname)s %(name)s: %(message)s"))
    root.handlers = [out, err]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(log_file, encoding="utf-8")
        file.setFormatter(fmt)
        root.handlers.append(file)
    from sllm_lib.noise import quiet_libraries

    quiet_libraries()  # known library noise (bitsandbytes, torch, PEFT, DeepSpeed), dropped at the source
    # one status line per logging interval replaces the hub's per-file tqdm bars (weights, shards)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    """Subprocess entry point; exit code 0 on success, 1 on a failed stage (traceback in stage.log)."""
    argv = sys.argv[1:] if argv is None else argv
    req = LaunchRequest.from_json(Path(argv[0]).read_text(encoding="utf-8"))
    Path(req.stage_dir).mkdir(parents=True, exist_ok=True)
    configure_logging(req.log_file if os.environ.get("RANK", "0") == "0" else None)  # rank 0 writes stage.log
    try:
        run_request(req)
    except BaseException as exc:
        logging.getLogger(__name__).error("stage %s failed: %s\n%s", req.stage, exc, traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # a rank can still abort in the interpreter's C++ teardown after the stage finished and published its
        # outputs ("terminate called without an active exception": a native thread of DeepSpeed's shm comm op
        # destroyed while joinable; seen in CI after _close_distributed), turning a finished stage into a
        # failure: nothing is left to run, so a distributed rank leaves without that teardown
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
