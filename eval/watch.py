"""The checkpoint watcher: score every complete checkpoint of a training stage with a suite while it trains.

A training stage with `watch: {suite: S}` (or `sllm watch RUN_DIR --stage NAME --suite S` for a running or finished
stage) gets a watcher in the launcher. It looks for complete checkpoints (`checkpoint-N/` with its completion
marker) every `poll_s` seconds and submits one evaluation job per checkpoint through the stage's own executor -- a
process on the local machine, a SLURM job with the profile's resources for one process, a Ray task -- never inside
the training processes, at most `max_concurrent` at once. The job rebuilds the stage's model as the checkpoint left
it (the base, the upstream adapters, this checkpoint's trainable tensors, merged) and scores it on the suite; the
watcher logs `watch/<task>/<metric>` to the training stage's MLflow run at the checkpoint's step: a curve of the
real task metrics beside the loss. On the training machine itself (the local executor) the job runs with one thread
at idle priority (SCHED_IDLE), so it takes only the cycles training leaves.

Each checkpoint is scored once: the job writes `STAGE_DIR/watch/step-N.json` (atomically) when it is done, and the
watcher claims a checkpoint (`step-N.claim`, created exclusively) before it submits; a watcher that restarts skips
scored checkpoints and takes over claims whose job is gone. While a stage is watched, training keeps a checkpoint
until it is scored (rotation past `save_total_limit` waits for the score). When the stage ends, the watcher scores
what is left and stops.

Optional early stop (`watch.early_stop: {metric: asr/cer, patience: 3}`): when the metric has not beaten its best
for `patience` scored checkpoints in a row, the watcher writes `STAGE_DIR/STOP_REQUESTED`; training stops cleanly
right after its next checkpoint and publishes its output as usual.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from sllm_lib.errors import SllmError
from sllm_lib.files import write_json_atomic
from sllm_lib.stage import StageResult

log = logging.getLogger(__name__)

WATCH_DIR = "watch"
STOP_FILE = "STOP_REQUESTED"
TAG_EARLY_STOP = "sllm.watch.early_stop"


# ----------------------------------------------------------------------------------------------- spec checks


def find_watch_suite(name_or_path: str) -> Path:
    from eval.suites import find_suite

    return find_suite(name_or_path)


def watch_problems(watch: Any) -> list[str]:
    """The watch block's suite loads and its early-stop metric is one of the suite's task/metric keys."""
    from eval.suites import load_suite

    try:
        suite = load_suite(find_watch_suite(watch.suite))
    except SllmError as exc:
        return [f"watch.suite: {exc}"]
    keys = [f"{t.name}/{m}" for t in suite.tasks for m in t.metric_names()]
    if watch.early_stop is not None and watch.early_stop.metric not in keys:
        return [f"watch.early_stop.metric: {watch.early_stop.metric!r} is no metric of suite {suite.name} "
                f"(valid: {', '.join(keys)})"]
    return []


# ----------------------------------------------------------------------------------------------- the ledger


def complete_checkpoints(stage_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of a stage, oldest first."""
    from sllm_lib.training.runner import complete_checkpoints as in_folder

    return in_folder(Path(stage_dir) / "checkpoints")


class Ledger:
    """What the watcher of one stage has scored (`watch/step-N.json`) and claimed (`watch/step-N.claim`)."""

    def __init__(self, stage_dir: Path) -> None:
        self.folder = Path(stage_dir) / WATCH_DIR

    def result_path(self, step: int) -> Path:
        return self.folder / f"step-{step}.json"

    def claim_path(self, step: int) -> Path:
        return self.folder / f"step-{step}.claim"

    def result(self, step: int) -> dict[str, Any] | None:
        try:
            return json.loads(self.result_path(step).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def results(self) -> dict[int, dict[str, Any]]:
        out = {}
        for p in self.folder.glob("step-*.json") if self.folder.is_dir() else []:
            step = p.stem.split("-", 1)[1]
            r = self.result(int(step)) if step.isdigit() else None
            if r is not None:
                out[int(step)] = r
        return dict(sorted(out.items()))

    def scored(self, step: int) -> bool:
        return self.result_path(step).is_file()

    def claim(self, step: int, job_id: str = "") -> bool:
        """Take a checkpoint for scoring; False when another watcher holds it (a claim is released or taken over
        with `release`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.claim_path(step), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "job_id": job_id}, f)
        return True

    def claimed(self, step: int) -> bool:
        return self.claim_path(step).exists()

    def release(self, step: int) -> None:
        self.claim_path(step).unlink(missing_ok=True)

    def record(self, step: int, data: dict[str, Any]) -> None:
        write_json_atomic(self.result_path(step), data)
        self.release(step)


# ----------------------------------------------------------------------------------------------- one checkpoint


def load_checkpoint_model(job: Any, stage: Any, chain: list[Path], checkpoint: Path) -> tuple[Any, Any, Any]:
    """The stage's model as `checkpoint` left it: the base (unquantized), the upstream chain, this stage's LoRA and
    modules with the checkpoint's trainable tensors, merged; in eval mode, with its tokenizer and features."""
    import torch
    from safetensors.torch import load_file

    from sllm_lib.models.adapters import apply_chain, chain_system_prompt, prepare_trainable
    from sllm_lib.models.builders import load_base_model, load_tokenizer_and_features, resolve_model_path

    trainable_file = checkpoint / "trainable.safetensors"
    if not trainable_file.is_file():
        raise SllmError(f"{checkpoint}: no trainable.safetensors (not a checkpoint sllm wrote)")
    path = resolve_model_path(job.model)
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    model = load_base_model(path, model=job.model, quant=None, dtype=dtype)
    model = apply_chain(model, [p for p in chain if p.exists()])
    model = prepare_trainable(model, lora=stage.lora, trainable=list(stage.trainable), gradient_checkpointing=False)
    state = load_file(str(trainable_file))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != names:
        raise SllmError(f"{checkpoint}: its tensors do not match stage {stage.name!r}'s trainable parameters "
                        f"({len(set(state) ^ names)} differ)")
    model.load_state_dict(state, strict=False)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    if torch.cuda.is_available():
        model.to("cuda")
    model.sllm_system_prompt = getattr(stage, "system_prompt", None) or chain_system_prompt(chain)
    tokenizer, features = load_tokenizer_and_features(path, revision=job.model.revision,
                                                      trust_remote_code=job.model.trust_remote_code)
    return model, tokenizer, features


def run_checkpoint_eval(req: Any, job: Any) -> StageResult:
    """The watcher's job (launch.worker runs it for a request with task "checkpoint_eval"): score one checkpoint
    on the suite, log watch/<task>/<metric> at its step to the training stage's run, record it in the ledger."""
    from eval.scoring import score_suite
    from eval.suites import load_suite

    o = req.overrides
    stage = job.stage(req.stage)
    step, checkpoint = int(o["step"]), Path(o["checkpoint"])
    suite = load_suite(find_watch_suite(o["suite"]))
    t0 = time.perf_counter()
    model, tokenizer, features = load_checkpoint_model(job, stage, [Path(p) for p in req.chain], checkpoint)
    metrics, _, sps = score_suite(model, tokenizer, features, suite, sample_limit=o.get("sample_limit"))
    del model
    watched = {f"watch/{k}": float(v) for k, v in metrics.items()}
    # no MLflow here: the watcher logs the ledger entry. On the training machine this process runs at idle
    # priority, and holding the tracking store's lock (a sqlite file) while starved stalled training's own logging.
    seconds = time.perf_counter() - t0
    Ledger(Path(o["stage_dir"])).record(step, {"step": step, "checkpoint": str(checkpoint), "suite": suite.name,
                                               "metrics": metrics, "samples_per_s": sps, "seconds": seconds,
                                               "host": socket.gethostname(), "time": time.time(),
                                               "slurm_job_id": os.environ.get("SLURM_JOB_ID")})
    log.info("watch: stage %s checkpoint %d scored on %s in %.1f s: %s", stage.name, step, suite.name, seconds,
             ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    result = StageResult(stage=req.stage, kind="checkpoint_eval", output_dir=None, steps=step, metrics=watched)
    write_json_atomic(req.result_file, result.to_dict())  # what the executor's job handle reads back
    return result


# ----------------------------------------------------------------------------------------------- early stop


def should_stop(results: dict[int, dict[str, Any]], rule: Any) -> str | None:
    """Why to stop (or None): the rule's metric has not beaten its best by min_delta for `patience` scored
    checkpoints in a row. Results are read in step order."""
    from sllm_lib.metrics.registry import is_higher_better

    task, metric = rule.metric.split("/", 1)
    hib = is_higher_better(metric)
    values = [(s, r["metrics"][rule.metric]) for s, r in sorted(results.items()) if rule.metric in r.get("metrics", {})]
    best, best_step, since = None, None, 0
    for step, v in values:
        better = best is None or (v > best + rule.min_delta if hib else v < best - rule.min_delta)
        if better:
            best, best_step, since = v, step, 0
        else:
            since += 1
    if best is not None and since >= rule.patience:
        return (f"{rule.metric} not better than {best:.4g} (step {best_step}) for {since} checkpoints "
                f"(patience {rule.patience})")
    return None


# ----------------------------------------------------------------------------------------------- the watcher


@dataclass
class _Running:
    step: int
    handle: Any


@dataclass
class Watcher:
    """Scores a stage's checkpoints through `executor` as they land (see the module docstring).

    `request` is the training stage's LaunchRequest (its spec, chain, run id); `concurrent` False scores inline
    (an in-process test profile: nothing may run beside the training in the same process)."""

    request: Any
    watch: Any
    executor: Any
    concurrent: bool = True
    keep: int | None = None  # the stage's save_total_limit: scored checkpoints beyond it are deleted at the end
    running: list[_Running] = field(default_factory=list)
    scored_now: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    stop_reason: str | None = None
    _thread: threading.Thread | None = None
    _done: threading.Event = field(default_factory=threading.Event)
    _client: Any = None

    @property
    def stage_dir(self) -> Path:
        return Path(self.request.stage_dir)

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.stage_dir)

    def _eval_request(self, step: int, checkpoint: Path) -> Any:
        folder = self.stage_dir / WATCH_DIR / f"step-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        env = dict(self.request.env)
        beside = getattr(self.executor, "name", "") == "local" and self.concurrent
        if beside:
            # on the training machine itself: one thread at idle priority, so the evaluation takes only what
            # training leaves (on SLURM and Ray it has an allocation of its own)
            env["OMP_NUM_THREADS"] = "1"
        return replace(self.request, stage_dir=str(folder), task="checkpoint_eval", single_process=True,
                       gpus=min(1, self.request.gpus), after=[], env=env, background=beside,
                       overrides={"step": step, "checkpoint": str(checkpoint), "suite": self.watch.suite,
                                  "sample_limit": self.watch.sample_limit, "stage_dir": str(self.stage_dir)})

    def _collect(self) -> None:
        still = []
        for r in self.running:
            state = r.handle.state()  # a JobState: a str enum (launch is a layer above; its values suffice)
            if state in ("PENDING", "RUNNING"):
                still.append(r)
                continue
            try:
                r.handle.result(timeout_s=60)
                self.scored_now.append(r.step)
            except Exception as exc:  # one checkpoint that cannot be scored costs its point, not the training
                log.warning("watch: stage %s checkpoint %d not scored (%s); %s", self.request.stage, r.step, exc,
                            "it will be retried" if r.step not in self.failed else "giving up on it")
                self.failed.append(r.step)
                self.ledger.release(r.step)
        self.running = still

    def _pending(self) -> list[tuple[int, Path]]:
        busy = {r.step for r in self.running}
        return [(s, p) for s, p in complete_checkpoints(self.stage_dir)
                if not self.ledger.scored(s) and s not in busy and self.failed.count(s) < 2]

    def _mlflow(self) -> Any:
        """One client (one store, one engine) for the watcher's life, not one per poll."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.request.tracking_uri)
        return self._client

    def _log_scored(self) -> None:
        """Log each scored checkpoint not logged yet as watch/<task>/<metric> at its step to the stage's run, and
        mark its ledger entry logged: done here, in the launcher, not in the evaluation job (see
        run_checkpoint_eval); a watcher that restarts logs what its predecessor's jobs scored while it was gone."""
        if not (self.request.tracking_uri and self.request.run_id):
            return
        todo = {s: r for s, r in self.ledger.results().items() if not r.get("logged") and r.get("metrics")}
        if not todo:
            return
        from mlflow.entities import Metric

        client = self._mlflow()
        for step, entry in todo.items():
            when = int(float(entry.get("time") or time.time()) * 1000)
            try:
                client.log_batch(self.request.run_id, metrics=[Metric(f"watch/{k}", float(v), when, step)
                                                               for k, v in entry["metrics"].items()])
            except Exception as exc:  # a tracking outage costs the curve's points until it is back, not training
                log.warning("watch: stage %s checkpoint %d: scores not logged to MLflow yet (%s: %s); retrying",
                            self.request.stage, step, type(exc).__name__, exc)
                return
            write_json_atomic(self.ledger.result_path(step), {**entry, "logged": True})

    def poll(self) -> None:
        """Collect finished evaluations, start new ones (bounded), log what was scored, apply the early-stop
        rule."""
        self._collect()
        for step, ckpt in self._pending():
            if len(self.running) >= self.watch.max_concurrent:
                break
            if not self.ledger.claim(step):
                if self._claim_is_stale(step):
                    self.ledger.release(step)
                    if not self.ledger.claim(step):
                        continue
                else:
                    continue
            handle = self.executor.submit(self._eval_request(step, ckpt))
            log.info("watch: stage %s checkpoint %d: scoring as job %s", self.request.stage, step, handle.job_id)
            self.running.append(_Running(step, handle))
            if not self.concurrent:
                self._collect()
        self._log_scored()
        self._early_stop()

    def _claim_is_stale(self, step: int) -> bool:
        """A claim no running job of this watcher holds, left by a watcher that is gone (its process, on this
        host), or older than a day: taken over."""
        try:
            claim = json.loads(self.ledger.claim_path(step).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return True
        if claim.get("host") == socket.gethostname():
            pid = int(claim.get("pid") or 0)
            if pid == os.getpid():
                return not any(r.step == step for r in self.running)
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return time.time() - float(claim.get("time") or 0) > 86400

    def _early_stop(self) -> None:
        rule = self.watch.early_stop
        if rule is None or self.stop_reason is not None:
            return
        reason = should_stop(self.ledger.results(), rule)
        if reason is None:
            return
        self.stop_reason = reason
        write_json_atomic(self.stage_dir / STOP_FILE, {"reason": reason, "time": time.time()})
        log.warning("watch: stage %s: early stop requested: %s; it stops after its next checkpoint",
                    self.request.stage, reason)
        if self.request.tracking_uri and self.request.run_id:
            self._mlflow().set_tag(self.request.run_id, TAG_EARLY_STOP, reason)

    def drain(self, timeout_s: float | None = None) -> None:
        """After the stage ended: score every checkpoint left, wait for the running evaluations, stop."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self.poll()
            if not self.running and not self._pending():
                if self.keep is not None:
                    from sllm_lib.training.runner import rotate_scored_checkpoints

                    rotate_scored_checkpoints(self.stage_dir / "checkpoints", self.keep)
                return
            if deadline is not None and time.monotonic() > deadline:
                log.warning("watch: stage %s: %d evaluation(s) still running after %.0f s; leaving them",
                            self.request.stage, len(self.running), timeout_s)
                return
            time.sleep(min(1.0, self.watch.poll_s))

    # -- in the background of a launcher that waits for the stage

    def start(self) -> None:
        if not self.concurrent:
            return  # scored after the stage (drain)
        self._thread = threading.Thread(target=self._loop, name=f"sllm-watch-{self.request.stage}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(self.watch.poll_s):
            try:
                self.poll()
            except Exception as exc:  # the watcher must never take the training down with it
                log.warning("watch: stage %s: poll failed (%s: %s); retrying", self.request.stage,
                            type(exc).__name__, exc)

    def stop(self) -> None:
        """Stop the background loop without scoring more (the run failed)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def finish(self, timeout_s: float | None = None) -> None:
        """The stage ended: stop the background loop, then drain."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        self.drain(timeout_s)


def stage_finished(state_file: Path, stage: str) -> Callable[[], bool]:
    """For `sllm watch`: has the stage ended (completed, failed, cancelled) according to the run's state.json?"""
    def done() -> bool:
        try:
            entry = json.loads(state_file.read_text(encoding="utf-8"))["stages"].get(stage) or {}
        except (OSError, ValueError, KeyError):
            return False
        return entry.get("status") in ("COMPLETED", "FAILED", "CANCELLED")
    return done
