"""Spec -> plan -> submission through an executor, with the launcher owning the MLflow runs.

The launcher resolves the spec, computes its hash, checks every input before anything is created,
then creates one parent run per pipeline submission and one child run per stage. A re-run of the
same spec reuses the run folder: completed stages are kept, an interrupted stage resumes from its
latest complete checkpoint in the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from launch.executor import Executor, JobHandle, LaunchRequest, get_executor
from launch.state import STATE_FILE, PipelineState, StageEntry
from sllm_lib.errors import PlanError, SllmError
from sllm_lib.files import folder_problems, read_manifest
from sllm_lib.spec import JobSpec, dump_resolved_yaml, spec_hash, spec_to_dict, topo_order
from sllm_lib.stage import StageResult

log = logging.getLogger(__name__)


@dataclass
class PlannedStage:
    """One stage as planned: its order, inputs and where its files go."""

    name: str
    kind: str
    upstream: list[str]
    chain: list[str]  # training stages whose outputs compose this stage's starting model
    inputs: list[str]
    resources: str


@dataclass
class Plan:
    spec: JobSpec
    spec_path: Path
    spec_hash: str
    run_dir: Path
    profile: Any
    stages: list[PlannedStage] = field(default_factory=list)

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / "stages" / name


def model_chain(spec: JobSpec, name: str | None) -> list[str]:
    """Training stages (oldest first) whose outputs make up the model stage `name` produces."""
    if name is None:
        return []
    stage = spec.stage(name)
    below = model_chain(spec, stage.from_stage)
    return below + [name] if stage.trains else below


def _stage_inputs(stage: Any) -> list[str]:
    if stage.scores_suite:
        from eval.suites import load_suite

        return [f"{t.record_kind}:{t.data}" for t in load_suite(stage.suite).tasks]
    return [f"{r.kind}:{r.path}" for r in stage.input_datasets()]


def resolve_dates(spec: JobSpec) -> JobSpec:
    """Fill a nightly stage's missing date with today (UTC), so the date is part of the spec hash:
    a re-run the same night reuses that night's result; the next night is a new run."""
    if not any(s.kind == "nightly_eval" and s.date is None for s in spec.stages):
        return spec
    from eval.nightly import today

    stages = [s.model_copy(update={"date": today()}) if s.kind == "nightly_eval" and s.date is None else s
              for s in spec.stages]
    return spec.model_copy(update={"stages": stages})


def _resources(profile: Any) -> str:
    if profile.kind == "local":
        return f"local {profile.isolation}, gpus={profile.gpus}, cpus={profile.cpus or os.cpu_count()}"
    return profile.kind


def build_plan(spec: JobSpec, spec_path: Path, profile: Any) -> Plan:
    """The stage DAG in run order with each stage's inputs (touches nothing)."""
    spec = resolve_dates(spec)
    h = spec_hash(spec)
    problems = folder_problems(Path(spec.output_dir) / spec.name / h[:12], "output_dir")
    if problems:  # the run folder is the first thing submit makes: refused here, before plan or submit goes on
        raise PlanError(f"{spec_path}: " + "; ".join(problems))
    run_dir = (Path(spec.output_dir) / spec.name / h[:12]).resolve()
    plan = Plan(spec=spec, spec_path=spec_path, spec_hash=h, run_dir=run_dir, profile=profile)
    for name in topo_order(spec):
        s = spec.stage(name)
        plan.stages.append(PlannedStage(
            name=name, kind=s.kind, upstream=s.upstream(), chain=model_chain(spec, s.from_stage),
            inputs=_stage_inputs(s), resources=_resources(profile),
        ))
    return plan


def preflight(spec: JobSpec) -> None:
    """Read and validate every dataset the spec names (all problems at once) before anything is created."""
    from sllm_lib.data.records import read_records

    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for s in spec.stages:
        if s.scores_suite:
            problems += _suite_problems(s)
            continue
        refs = s.input_datasets()
        if s.scores_datasets:
            problems += _eval_metric_problems(s)
        if s.trains and s.watch is not None:
            from eval.watch import watch_problems

            problems += [f"stage {s.name!r}: {p}" for p in watch_problems(s.watch)]
        for ref in refs:
            key = (ref.path, ref.kind, tuple(ref.labels or ()))
            if key in seen:
                continue
            seen.add(key)
            try:
                read_records(ref.path, ref.kind, on_bad_record=ref.on_bad_record, labels=ref.labels,
                             max_text_chars=ref.max_text_chars)
            except SllmError as exc:
                problems.append(f"stage {s.name!r}: {exc}")
    base = spec.model.base if spec.model else ""
    if base.startswith("/") and not (Path(base) / "config.json").is_file():
        problems.append(f"model.base: {base} is not a model folder (no config.json)")
    if problems:
        raise PlanError("pre-flight checks failed; nothing was submitted:\n" + "\n".join(problems))


def _eval_metric_problems(stage: Any) -> list[str]:
    from sllm_lib.metrics.registry import DEFAULT_METRICS, METRIC_SPECS, metric_normalizer

    out = []
    for i, ref in enumerate(stage.datasets):
        ok = ("text", "labels", "model") if ref.kind == "classification" else ("text", "model")
        for m in ref.metrics or DEFAULT_METRICS[ref.kind]:
            if m in METRIC_SPECS and METRIC_SPECS[m].normalizer_unit is not None:
                try:  # a normaliser option of another language's normaliser
                    metric_normalizer(m, language=ref.language, options=ref.metric_options.get(m))
                except ValueError as exc:
                    out.append(f"stage {stage.name!r}: datasets[{i}].metric_options.{m}: {exc}")
        for m in ref.metrics or []:
            if m not in METRIC_SPECS or METRIC_SPECS[m].needs not in ok:
                valid = sorted(k for k, v in METRIC_SPECS.items() if v.needs in ok)
                out.append(f"stage {stage.name!r}: datasets[{i}].metrics: {m!r} is not a metric for {ref.kind} "
                           f"data here (valid: {', '.join(valid)})")
            elif METRIC_SPECS[m].needs == "model":  # a local model folder, checked before anything runs
                path = (ref.metric_options.get(m) or {}).get("model_path")
                if not path or not Path(str(path)).expanduser().is_dir():
                    out.append(f"stage {stage.name!r}: datasets[{i}].metric_options.{m}.model_path: expected a local "
                               f"model folder (got {path!r})")
    return out


def _suite_problems(stage: Any) -> list[str]:
    """The suite loads (names, metrics, labels) and its held-out sets read cleanly."""
    from eval.suites import load_suite
    from sllm_lib.data.records import read_records

    try:
        suite = load_suite(stage.suite)
        for t in suite.tasks:
            read_records(t.data, t.record_kind, on_bad_record="fail")
    except SllmError as exc:
        return [f"stage {stage.name!r}: {exc}"]
    if stage.kind == "nightly_eval":
        from eval.gates import policy_problems

        found = policy_problems(suite, stage.thresholds, stage.policy)
        if found:
            return [f"stage {stage.name!r}: {p}" for p in found]
    if stage.kind == "suite_eval" and stage.model and stage.model.startswith("/") and not (
            Path(stage.model) / "config.json").is_file():
        return [f"stage {stage.name!r}: model {stage.model} is not a model folder (no config.json)"]
    if stage.kind == "suite_eval" and stage.model and _model_type(stage.model) == "whisper":
        from eval.scoring import whisper_task_problems

        return [f"stage {stage.name!r}: {p}" for p in whisper_task_problems(suite, stage.model)]
    return []


def _model_type(ref: str) -> str | None:
    """The model_type of a folder or preset reference, read without loading anything (None: not known before the
    stage resolves it, e.g. a registry reference)."""
    if ref.startswith("mini:") or ref.startswith("tiny:"):
        from sllm_lib.memory.config import load_model_config
        from sllm_lib.spec import ModelSpec

        try:
            return getattr(load_model_config(ModelSpec(base=ref))[0], "model_type", None)
        except (SllmError, ValueError):
            return None
    try:
        return json.loads((Path(ref).expanduser() / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def registry_preflight(spec: JobSpec, uri: str) -> None:
    """Registry references resolve before anything is submitted (nightly candidate alias, models:/ refs)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from sllm_lib.tracking.lineage import parse_model_ref

    problems: list[str] = []
    client = MlflowClient(tracking_uri=uri)
    for s in spec.stages:
        refs: list[str] = []
        if s.kind == "nightly_eval":
            refs.append(f"{s.registered_model}@{s.candidate_alias}")
        elif s.kind == "suite_eval" and s.model and s.model.startswith("models:/"):
            refs.append(s.model)
        for ref in refs:
            name, alias, version = parse_model_ref(ref)
            try:
                client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
            except MlflowException as exc:
                problems.append(f"stage {s.name!r}: {ref} not found in the registry at {uri} ({exc.message})")
    if problems:
        raise PlanError("pre-flight checks failed; nothing was submitted:\n" + "\n".join(problems))


# ------------------------------------------------------------------------------------------ tracking set-up


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parents[1])
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tracking_uri(spec: JobSpec) -> str:
    from sllm_lib.tracking.tracker import default_tracking_uri

    return spec.tracking.uri or default_tracking_uri(Path(spec.output_dir).resolve())


def _experiment_id(client: Any, name: str, artifact_root: Path, uri: str) -> str:
    from sllm_lib.tracking.tracker import ensure_experiment

    # a server keeps artifacts where it is configured to; the embedded store beside the run
    local = not uri.startswith(("http://", "https://"))
    return ensure_experiment(client, name, artifact_location=artifact_root.resolve().as_uri() if local else None)


def protect_secrets(spec: JobSpec) -> None:
    """Register the spec's and the environment's secrets (masked in logs and MLflow) and bound the client.

    Raises:
        PlanError: an `env:` reference names a variable the launcher's environment lacks.
    """
    from sllm_lib.secrets import protect_job
    from sllm_lib.tracking.tracker import configure_http

    try:
        protect_job(spec)
    except KeyError as exc:
        raise PlanError(f"pre-flight checks failed; nothing was submitted:\n{exc.args[0]}") from None
    configure_http(spec.tracking)


def check_tracking(uri: str) -> None:
    """A tracking server answers and accepts our credentials, before anything is created (bounded).

    Raises:
        PlanError: unreachable, or authentication refused (names the variables to set).
    """
    if not uri.startswith(("http://", "https://")):
        return
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from sllm_lib.secrets import redact_text

    shown = redact_text(uri)
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(MlflowClient(tracking_uri=uri).search_experiments, max_results=1).result(timeout=20)
    except FutureTimeout:
        raise PlanError(f"tracking server {shown}: no answer within 20 s; nothing was submitted") from None
    except MlflowException as exc:
        text = str(exc)
        if any(x in text for x in ("401", "403", "Unauthorized", "Permission", "credentials")):
            raise PlanError(f"tracking server {shown}: authentication refused; set MLFLOW_TRACKING_USERNAME and "
                            f"MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) for this server; nothing was "
                            f"submitted") from None
        raise PlanError(f"tracking server {shown}: {redact_text(text)[:300]}; nothing was submitted") from None
    except Exception as exc:  # connection refused, DNS, TLS
        raise PlanError(f"tracking server {shown}: unreachable ({type(exc).__name__}: "
                        f"{redact_text(str(exc))[:200]}); nothing was submitted") from None
    finally:
        pool.shutdown(wait=False)


def _stage_done(plan: Plan, state: PipelineState, name: str) -> StageResult | None:
    entry = state.stages.get(name) or StageEntry()
    manifest = read_manifest(plan.stage_dir(name) / "output")
    if entry.status == "COMPLETED" and entry.result and manifest and manifest.get("spec_hash") == plan.spec_hash:
        if not _inputs_unchanged(plan, state, name, manifest):
            return None
        return StageResult(**entry.result)
    return None


def _inputs_unchanged(plan: Plan, state: PipelineState, name: str, manifest: dict[str, Any]) -> bool:
    """Evaluation stages read inputs the spec hash cannot see: the suite's files and the registry's aliases."""
    stage = plan.spec.stage(name)
    if not stage.scores_suite:
        return True
    from eval.suites import load_suite

    if manifest.get("suite_digest") not in (None, load_suite(stage.suite).digest()):
        log.info("stage %s: the suite's files changed since the last run; running it again", name)
        return False
    if stage.kind == "nightly_eval" and state.tracking_uri:
        from mlflow import MlflowClient

        from eval.nightly import alias_versions

        if alias_versions(MlflowClient(state.tracking_uri), stage) != manifest.get("aliases_after"):
            log.info("stage %s: the registry's %s/%s aliases moved since the last run; running it again", name,
                     stage.candidate_alias, stage.champion_alias)
            return False
    return True


@dataclass
class PipelineOutcome:
    plan: Plan
    tracking_uri: str
    parent_run_id: str
    results: dict[str, StageResult]
    run_ids: dict[str, str]
    reused: list[str]
    wall_s: float
    submitted: dict[str, str] = field(default_factory=dict)  # stage -> job id, when detached
    experiment_id: str = ""


class _Runs:
    """The launcher's side of tracking: creates and closes the pipeline and stage runs."""

    def __init__(self, plan: Plan, uri: str) -> None:
        from mlflow import MlflowClient

        self.plan, self.uri = plan, uri
        self.client = MlflowClient(tracking_uri=uri)
        spec = plan.spec
        self.exp_id = _experiment_id(self.client, spec.tracking.experiment or spec.name,
                                     Path(spec.output_dir) / "mlartifacts", uri)
        self.sha = git_sha()

    def _tracker(self, run_id: str) -> Any:
        from sllm_lib.tracking.journal import JOURNAL, Journal
        from sllm_lib.tracking.tracker import MlflowTracker

        tracking = self.plan.spec.tracking
        return MlflowTracker(self.uri, run_id, strict=tracking.strict, journal=Journal(self.plan.run_dir / JOURNAL),
                             call_timeout_s=tracking.call_timeout_s)

    def open_pipeline(self, state: PipelineState, resolved: Path) -> str:
        from sllm_lib.tracking.tracker import TAG_GIT_SHA, TAG_JOB, TAG_SPEC_HASH

        spec = self.plan.spec
        if not state.parent_run_id:
            run = self.client.create_run(self.exp_id, run_name=spec.name, tags={
                TAG_JOB: spec.name, TAG_SPEC_HASH: self.plan.spec_hash, TAG_GIT_SHA: self.sha,
                "sllm.cluster": self.plan.profile.name, "sllm.run_dir": str(self.plan.run_dir), "sllm.kind": "pipeline"})
            state.parent_run_id = run.info.run_id
            state.save(self.plan.run_dir / STATE_FILE)
            tracker = self._tracker(run.info.run_id)
            tracker.log_params({k: v for k, v in spec_to_dict(spec).items() if k != "stages"})
            tracker.log_artifact(resolved)
        self.client.update_run(state.parent_run_id, status="RUNNING")
        return state.parent_run_id

    def open_stage(self, entry: StageEntry, ps: PlannedStage, parent_id: str, upstream: dict[str, str], *,
                   stage: Any = None, point: tuple[int, dict[str, Any]] | None = None) -> str:
        """The stage's MLflow run (a sweep point's, with `point` = (index, overrides)): created once with the
        lineage tags (`upstream`: stage name -> run id, also links in the run's description) and the stage's
        parameters, reused when an interrupted stage resumes; SCHEDULED until the worker marks it RUNNING."""
        import json

        from sllm_lib.tracking.tracker import (TAG_GIT_SHA, TAG_JOB, TAG_NOTE, TAG_PARENT, TAG_SPEC_HASH, TAG_STAGE,
                                               TAG_STAGE_KIND, TAG_UPSTREAM_RUNS, stage_note)

        spec = self.plan.spec
        if not entry.run_id:  # an interrupted stage resumes in its existing run
            tags = {TAG_PARENT: parent_id, TAG_JOB: spec.name, TAG_SPEC_HASH: self.plan.spec_hash, TAG_GIT_SHA: self.sha,
                    TAG_STAGE: ps.name, TAG_STAGE_KIND: ps.kind, TAG_UPSTREAM_RUNS: ",".join(upstream.values()),
                    "sllm.kind": "stage",
                    TAG_NOTE: stage_note(job=spec.name, stage=ps.name, kind=ps.kind, experiment_id=self.exp_id,
                                         pipeline_run_id=parent_id, upstream=upstream)}
            name = f"{spec.name}/{ps.name}"
            if point is not None:
                tags.update({"sllm.sweep_index": str(point[0]), "sllm.sweep_point": json.dumps(point[1])})
                name += f"/point-{point[0]}"
            run = self.client.create_run(self.exp_id, run_name=name, tags=tags)
            entry.run_id = run.info.run_id
            self._tracker(run.info.run_id).log_params((stage or spec.stage(ps.name)).model_dump(mode="json"))
        self.client.update_run(entry.run_id, status="SCHEDULED")  # the worker marks it RUNNING when it starts
        return entry.run_id

    def describe_pipeline(self, parent_id: str, run_ids: dict[str, str]) -> None:
        """The pipeline run's description: its stage runs in order as links, and what it registered."""
        from sllm_lib.tracking.tracker import TAG_NOTE, run_link, ui_link

        spec = self.plan.spec
        lines = [f"sllm pipeline of job **{spec.name}** on cluster profile `{self.plan.profile.name}`.", "",
                 "Stages: " + " → ".join(f"[{n}]({run_link(self.exp_id, rid)})" for n, rid in run_ids.items()) + "."]
        regs = [s.register_as for s in spec.stages if getattr(s, "register_as", None)]
        if regs:
            lines += ["", "Registers: " + ", ".join(
                f"[{r.name}@{r.alias}]({ui_link(f'models/{r.name}')})" for r in regs) + "."]
        self._tracker(parent_id).set_tags({TAG_NOTE: "\n".join(lines)})

    def log_usage(self, parent_id: str) -> None:
        """The pipeline run's GPU-hours (and cost): every attempt of every stage and sweep point in its run folder."""
        from sllm_lib.usage import format_gpu_hours, run_usage

        profile = self.plan.profile
        try:
            usage = run_usage(self.plan.run_dir, cost_per_gpu_hour=profile.cost_per_gpu_hour,
                              currency=profile.currency)
            tracker = self._tracker(parent_id)
            tracker.log_metrics(usage.metrics())
            tracker.set_tags(usage.tags())
        except Exception as exc:  # accounting never fails a pipeline, nor hides why one failed
            log.warning("pipeline usage not logged (%s: %s)", type(exc).__name__, exc)
            return
        log.info("pipeline usage: %s GPU-hours over %d attempt(s)%s", format_gpu_hours(usage.gpu_hours),
                 len(usage.attempts), "" if usage.cost is None else f", {usage.cost:.2f} {usage.currency}")

    def close(self, run_id: str, *, ok: bool, output: str | None = None) -> None:
        from sllm_lib.tracking.tracker import TAG_OUTPUT

        # after hours of training an outage must not fail the pipeline: bounded, journaled like the stages
        tracker = self._tracker(run_id)
        if output is not None:
            tracker.set_tags({TAG_OUTPUT: output})
        tracker.set_status("FINISHED" if ok else "FAILED")


def _request(plan: Plan, ps: PlannedStage, *, resolved: Path, uri: str, run_id: str) -> LaunchRequest:
    spec = plan.spec
    up = spec.stage(ps.name).from_stage
    return LaunchRequest(
        job_name=spec.name, stage=ps.name, spec_path=str(resolved), spec_hash=plan.spec_hash,
        run_dir=str(plan.run_dir), stage_dir=str(plan.stage_dir(ps.name)), tracking_uri=uri,
        tracking_strict=spec.tracking.strict, run_id=run_id,
        chain=[str(plan.stage_dir(c) / "output") for c in ps.chain],
        upstream_output=str(plan.stage_dir(up) / "output") if up else None,
        upstream_kind=spec.stage(up).kind if up else None, single_process=not spec.stage(ps.name).trains,
        gpus=plan.profile.stage_gpus(not spec.stage(ps.name).trains),
        cost_per_gpu_hour=plan.profile.cost_per_gpu_hour, currency=plan.profile.currency,
    )


def _executor_preflight(plan: Plan, executor: Executor, resolved: Path, uri: str) -> None:
    """Let the scheduler judge every stage's request before anything is submitted (e.g. sbatch --test-only)."""
    for ps in plan.stages:
        executor.preflight(_request(plan, ps, resolved=resolved, uri=uri, run_id=None))


def _wait(plan: Plan, state: PipelineState, runs: _Runs, label: str, entry: StageEntry, handle: JobHandle, *,
          also_failed: StageEntry | None = None) -> StageResult:
    """The one place a submitted stage (or sweep point) is waited for: its result recorded in the state and its
    MLflow run closed, FINISHED or FAILED (`also_failed`: the swept stage's entry fails with its point)."""
    try:
        result = handle.result()
    except BaseException:
        for failed in (entry, also_failed):
            if failed is not None:
                failed.status = "FAILED"
        state.save(plan.run_dir / STATE_FILE)
        runs.close(entry.run_id, ok=False)
        raise
    runs.close(entry.run_id, ok=True, output=result.output_dir or "")
    entry.status, entry.result = "COMPLETED", result.to_dict()
    state.save(plan.run_dir / STATE_FILE)
    log.info("stage %s: done (%s)", label, handle.job_id)
    return result


def _start_watcher(plan: Plan, executor: Executor, stage: Any, req: LaunchRequest, watchers: dict[str, Any]) -> None:
    """A watched training stage's checkpoint watcher (eval/watch.py), in the background while the stage runs."""
    if not (stage.trains and stage.watch is not None):
        return
    from eval.watch import Watcher

    inprocess = plan.profile.kind == "local" and plan.profile.isolation == "inprocess"
    w = Watcher(request=req, watch=stage.watch, executor=executor, concurrent=not inprocess,
                keep=stage.train.save_total_limit)
    w.start()
    watchers[stage.name] = w
    log.info("stage %s: watching its checkpoints with suite %s (at most %d evaluation(s) at once)", stage.name,
             stage.watch.suite, stage.watch.max_concurrent)


def _finish_watcher(watchers: dict[str, Any], name: str) -> None:
    """The stage ended: its watcher scores the checkpoints left, then stops."""
    w = watchers.pop(name, None)
    if w is not None:
        w.finish()
        log.info("stage %s: watcher done (%d checkpoint(s) scored%s)", name, len(w.scored_now),
                 f"; early stop: {w.stop_reason}" if w.stop_reason else "")


def _cancel_rest(plan: Plan, state: PipelineState, runs: _Runs, pending: dict[str, JobHandle]) -> None:
    """After a failure: cancel what was submitted and has not finished; mark those runs KILLED."""
    for name, handle in pending.items():
        handle.cancel()
        entry = state.stages[name]
        entry.status = "CANCELLED"
        runs.client.set_terminated(entry.run_id, status="KILLED")
        log.warning("stage %s (%s) cancelled: an upstream stage failed", name, handle.job_id)
    state.save(plan.run_dir / STATE_FILE)


def _publish_best(stage_dir: Path, best: int) -> None:
    """stages/<name>/output -> points/<best>/output, swapped in atomically (later stages read this path)."""
    link = stage_dir / "output"
    tmp = stage_dir / f".output-link-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path("points") / str(best) / "output")
    if link.is_dir() and not link.is_symlink():
        import shutil

        shutil.rmtree(link)
    os.replace(tmp, link)


def _run_sweep(plan: Plan, state: PipelineState, runs: _Runs, executor: Executor, ps: PlannedStage, *,
               parent_id: str, upstream: dict[str, str], after: list[str], resolved: Path,
               uri: str) -> tuple[StageResult, str]:
    """Every grid point of the swept stage (one job array where the executor has them); the best one is kept."""
    import json

    from sllm_lib.spec import stage_with

    sw = plan.spec.sweep
    assert sw is not None
    stage = plan.spec.stage(ps.name)
    entry = state.entry(ps.name)
    points = sw.points()
    if entry.points is None:
        entry.points = [StageEntry() for _ in points]
    slots = entry.points
    todo: list[tuple[int, LaunchRequest]] = []
    for i, point in enumerate(points):
        slot = slots[i]
        slot.point = point
        out = plan.stage_dir(ps.name) / "points" / str(i) / "output"
        if slot.status == "COMPLETED" and (read_manifest(out) or {}).get("spec_hash") == plan.spec_hash:
            continue
        run_id = runs.open_stage(slot, ps, parent_id, upstream, stage=stage_with(stage, point), point=(i, point))
        base = _request(plan, ps, resolved=resolved, uri=uri, run_id=run_id)
        todo.append((i, replace(base, stage_dir=str(plan.stage_dir(ps.name) / "points" / str(i)), overrides=point,
                                after=after)))
    state.save(plan.run_dir / STATE_FILE)
    if todo:
        reqs = [r for _, r in todo]
        # an array where the scheduler has them; else each point is submitted when the one before has ended
        handles: list[JobHandle | None] = (list(executor.submit_array(reqs, max_parallel=sw.max_parallel))
                                           if executor.supports_arrays else [None] * len(reqs))
        for (i, req), handle in zip(todo, handles):
            handle = handle or executor.submit(req)
            slots[i].status, slots[i].job_id = "SUBMITTED", handle.job_id
            log.info("stage %s point %d %s: %s", ps.name, i, points[i], handle.job_id)
            _wait(plan, state, runs, f"{ps.name} point {i}", slots[i], handle, also_failed=entry)
    scored = [((s.result or {}).get("metrics", {}).get(sw.metric), i) for i, s in enumerate(slots)]
    missing = [i for v, i in scored if v is None]
    if missing:
        raise PlanError(f"sweep.metric: points {missing} report no {sw.metric!r}; metrics they have: "
                        f"{', '.join(sorted((slots[missing[0]].result or {}).get('metrics', {})))}")
    best_value, best = (min if sw.mode == "min" else max)(scored)
    _publish_best(plan.stage_dir(ps.name), best)
    result = StageResult(**slots[best].result)
    result.output_dir = str(plan.stage_dir(ps.name) / "output")
    result.extras.update(best_index=best, best_point=points[best], sweep=[
        {"point": s.point, sw.metric: s.result["metrics"][sw.metric], "run_id": s.run_id} for s in slots])
    entry.status, entry.run_id, entry.result = "COMPLETED", slots[best].run_id, result.to_dict()
    state.save(plan.run_dir / STATE_FILE)
    runs.client.set_tag(parent_id, f"sllm.sweep.{ps.name}.best", json.dumps(points[best]))
    log.info("stage %s: best of %d points is %d %s (%s %.4g)", ps.name, len(points), best, points[best], sw.metric,
             best_value)
    return result, slots[best].run_id


def submit_pipeline(plan: Plan, *, wait: bool = True, dry_run: bool = False) -> PipelineOutcome | None:
    """Run every stage of `plan` through the profile's executor; record lineage in MLflow.

    Executors with dependencies (SLURM) get every stage at once, each chained `afterok` on its
    upstream jobs; others (local) run one stage after the other. With `wait=False` (SLURM only) the
    call returns once everything is submitted; `sllm status` later reconciles states and runs. With `dry_run`
    every check runs (data, secrets, tracking server, registry references, the scheduler's own pre-flight) and
    the call returns None before the first MLflow run, folder or job is created.

    Raises:
        PlanError: pre-flight found bad inputs (nothing was created).
        StageFailedError: a stage failed (its run and the pipeline run are marked FAILED; dependents cancelled).
    """
    preflight(plan.spec)
    executor = get_executor(plan.profile)
    try:
        return _submit(plan, executor, wait=wait, dry_run=dry_run)
    finally:
        executor.close()  # e.g. the private Ray head of `address: local`


def _submit(plan: Plan, executor: Executor, *, wait: bool, dry_run: bool = False) -> PipelineOutcome | None:
    t0 = time.perf_counter()
    spec = plan.spec
    if not wait and not executor.supports_dependencies:
        raise SllmError(f"--detach needs a scheduler that chains stages (slurm); {plan.profile.kind!r} runs them "
                        f"from this process")
    if not wait and spec.sweep is not None:
        raise SllmError("--detach: a sweep needs the launcher to wait (it picks the best point); drop --detach")
    protect_secrets(spec)
    uri = tracking_uri(spec)
    check_tracking(uri)
    if any(s.scores_suite for s in spec.stages):
        registry_preflight(spec, uri)
    resolved = plan.run_dir / "spec.resolved.yaml"
    _executor_preflight(plan, executor, resolved, uri)
    if dry_run:
        log.info("dry run: every check passed; %d stages would run on %s -> %s (nothing was created)",
                 len(plan.stages), plan.profile.name, plan.run_dir)
        return None
    runs = _Runs(plan, uri)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    resolved.write_text(dump_resolved_yaml(spec), encoding="utf-8")
    state = PipelineState.load(plan.run_dir)
    state.tracking_uri = uri
    parent_id = runs.open_pipeline(state, resolved)
    results: dict[str, StageResult] = {}
    run_ids: dict[str, str] = {}
    reused: list[str] = []
    pending: dict[str, JobHandle] = {}
    watchers: dict[str, Any] = {}
    try:
        for ps in plan.stages:
            done = _stage_done(plan, state, ps.name)
            if done is not None:
                run_ids[ps.name] = state.stages[ps.name].run_id
                log.info("stage %s: reusing completed output (run %s)", ps.name, run_ids[ps.name])
                results[ps.name] = done
                reused.append(ps.name)
                continue
            upstream = {u: run_ids[u] for u in ps.upstream if u in run_ids}
            if spec.sweep is not None and ps.name == spec.sweep.stage:
                results[ps.name], run_ids[ps.name] = _run_sweep(
                    plan, state, runs, executor, ps, parent_id=parent_id, upstream=upstream,
                    after=[pending[u].job_id for u in ps.upstream if u in pending], resolved=resolved, uri=uri)
                continue
            entry = state.entry(ps.name)
            run_id = runs.open_stage(entry, ps, parent_id, upstream)
            run_ids[ps.name] = run_id
            req = _request(plan, ps, resolved=resolved, uri=uri, run_id=run_id)
            if executor.supports_dependencies:
                req = replace(req, after=[pending[u].job_id for u in ps.upstream if u in pending])
            handle = executor.submit(req)
            entry.status, entry.job_id = "SUBMITTED", handle.job_id
            state.save(plan.run_dir / STATE_FILE)
            if wait:
                _start_watcher(plan, executor, spec.stage(ps.name), req, watchers)
            runs.client.set_tag(run_id, "sllm.job_id", handle.job_id)
            runs.client.set_tag(parent_id, f"sllm.job_id.{ps.name}", handle.job_id)
            log.info("stage %s (%s): %s, run %s", ps.name, ps.kind,
                     f"submitted as job {handle.job_id}" if executor.supports_dependencies else "starting", run_id)
            if executor.supports_dependencies:
                pending[ps.name] = handle
            else:
                results[ps.name] = _wait(plan, state, runs, ps.name, entry, handle)
                _finish_watcher(watchers, ps.name)
        if not wait:
            log.info("detached: %d stages submitted; follow with `sllm status %s`", len(pending), plan.run_dir)
            return PipelineOutcome(plan=plan, tracking_uri=uri, parent_run_id=parent_id, results=results,
                                   run_ids=run_ids, reused=reused, wall_s=time.perf_counter() - t0,
                                   submitted={n: h.job_id for n, h in pending.items()}, experiment_id=runs.exp_id)
        for name in list(pending):
            results[name] = _wait(plan, state, runs, name, state.stages[name], pending.pop(name))
            _finish_watcher(watchers, name)
    except BaseException:
        for w in watchers.values():  # a failed run: stop looking; `sllm watch` scores what is left
            w.stop()
        _cancel_rest(plan, state, runs, pending)
        runs.log_usage(parent_id)
        runs.close(parent_id, ok=False)
        raise
    if len(reused) < len(plan.stages):  # a re-run that reused every stage changed nothing: log nothing again
        runs.log_usage(parent_id)
    runs.describe_pipeline(parent_id, run_ids)
    runs.close(parent_id, ok=True)
    return PipelineOutcome(plan=plan, tracking_uri=uri, parent_run_id=parent_id, results=results, run_ids=run_ids,
                           reused=reused, wall_s=time.perf_counter() - t0, experiment_id=runs.exp_id)
