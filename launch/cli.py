"""The `sllm` command: validate | plan | submit | eval | nightly | status | logs | cancel | lineage | export |
schema, and the groups data (validate, stats, convert-aihub), cache (build, stats, verify, gc) and tracking (sync).

Start-up imports nothing heavy (no torch, transformers or mlflow): those load inside the commands
that need them, so `sllm --help` and `sllm validate` stay fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from sllm_lib.errors import SllmError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Launch multi-stage fine-tuning pipelines.")
data_app = typer.Typer(no_args_is_help=True, help="Validate and describe JSONL datasets.")
app.add_typer(data_app, name="data")
cache_app = typer.Typer(no_args_is_help=True, help="The shared audio-feature cache: build, stats, verify, gc.")
app.add_typer(cache_app, name="cache")
tracking_app = typer.Typer(no_args_is_help=True, help="Tracking journal: what an outage kept on disk.")
app.add_typer(tracking_app, name="tracking")
# wide enough for tables when output goes to a file or CI log (rich falls back to 80 columns there)
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
log = logging.getLogger("launch.cli")
_STATE = {"debug": False}

SetOpt = typer.Option(None, "--set", help="Override a spec field: stages[0].train.lr=2e-4 (repeatable).")
ClusterOpt = typer.Option(None, "--cluster", help="Cluster profile name or YAML path (default: the spec's).")


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    root.setLevel(level.upper())
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda r: r.levelno < logging.WARNING)
    out.setFormatter(logging.Formatter("%(message)s"))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.handlers = [out, err]
    from sllm_lib.secrets import install_log_filter

    install_log_filter(root)  # secret values (tokens, passwords) show as *** in every line
    for noisy in ("alembic", "mlflow", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    log_level: str = typer.Option(os.environ.get("SLLM_LOG_LEVEL", "INFO"), "--log-level", help="Logging level."),
) -> None:
    _STATE["debug"] = debug
    _configure_logging(log_level)


def _is_profile(raw: Any) -> bool:
    return isinstance(raw, dict) and "stages" not in raw and raw.get("kind") in {"local", "slurm", "ray"}


@app.command()
def validate(paths: list[Path] = typer.Argument(..., help="Job specs or cluster profiles."),
             set_: Optional[list[str]] = SetOpt) -> None:
    """Validate job specs and cluster profiles; print OK or every problem (exit 2)."""
    from sllm_lib.spec import load_cluster_profile, load_job_spec, read_yaml, spec_hash

    failed: list[str] = []
    for path in paths:
        try:
            if _is_profile(read_yaml(path)):
                prof = load_cluster_profile(path)
                console.print(f"OK {path}: cluster profile {prof.name!r} ({prof.kind})")
            else:
                spec = load_job_spec(path, set_ or [])
                console.print(f"OK {path}: job {spec.name!r}, {len(spec.stages)} stages, hash {spec_hash(spec)[:12]}")
        except SllmError as exc:
            failed.append(str(exc))
    if failed:
        raise SllmError("\n".join(failed))


def _starts_from(stage: Any, ps: Any) -> str:
    if stage.kind == "nightly_eval":
        return f"registry {stage.registered_model}@{stage.candidate_alias} vs @{stage.champion_alias}"
    if stage.kind == "suite_eval":
        return stage.model or ps.upstream[0]
    if stage.kind == "distill":
        return " + ".join(["base", *ps.chain[:-1]]) + f" (teacher {stage.teacher})"
    if stage.trains or stage.kind == "merge":  # the base model and the adapters of the chain
        return " + ".join(["base", *ps.chain])
    return ps.upstream[0] if ps.upstream else "-"  # the upstream stage's output (a model folder or adapters)


def _load(spec_path: Path, set_: list[str] | None, cluster: str | None) -> Any:
    from launch.pipeline import build_plan
    from sllm_lib.spec import find_cluster_profile, load_job_spec

    spec = load_job_spec(spec_path, set_ or [])
    profile = find_cluster_profile(cluster or spec.cluster, spec_path=spec_path)
    return build_plan(spec, spec_path, profile)


@app.command()
def plan(spec_path: Path = typer.Argument(..., metavar="SPEC"), set_: Optional[list[str]] = SetOpt,
         cluster: Optional[str] = ClusterOpt,
         show_spec: bool = typer.Option(True, "--show-spec/--no-show-spec", help="Print the resolved spec."),
         memory: bool = typer.Option(False, "--memory", help="Also print each training stage's predicted GPU "
                                                             "memory (from the model config; no weights loaded).")
         ) -> None:
    """Validate, check inputs and print the stage plan without running or writing anything."""
    from launch.executor import LaunchRequest, get_executor
    from launch.pipeline import preflight
    from sllm_lib.spec import dump_resolved_yaml

    p = _load(spec_path, set_, cluster)
    preflight(p.spec)
    jobs_api = _via_ray_jobs(p.profile)
    # a Ray Jobs API profile: the plan runs inside one Ray job, against the cluster it lands on ("auto")
    executor = get_executor(p.profile.model_copy(update={"address": "auto"}) if jobs_api else p.profile)
    table = Table(title=f"{p.spec.name}  hash {p.spec_hash[:12]}  cluster {p.profile.name} ({p.profile.kind})")
    for col in ("#", "stage", "kind", "after", "starts from", "inputs", "command"):
        table.add_column(col, overflow="fold")
    scripts: list[tuple[str, str]] = []
    for i, s in enumerate(p.stages, 1):
        req = LaunchRequest(job_name=p.spec.name, stage=s.name, spec_path="spec.resolved.yaml", spec_hash=p.spec_hash,
                            run_dir=str(p.run_dir), stage_dir=str(p.stage_dir(s.name)), tracking_uri="",
                            tracking_strict=False, run_id=None, single_process=not p.spec.stage(s.name).trains,
                            after=[f"<job of {u}>" for u in s.upstream] if executor.supports_dependencies else [])
        table.add_row(str(i), s.name, s.kind, ", ".join(s.upstream) or "-",
                      _starts_from(p.spec.stage(s.name), s),
                      ", ".join(Path(x.split(":", 1)[1]).name for x in s.inputs) or "-",
                      "sbatch script below" if p.profile.kind == "slurm" else
                      executor.render(req).replace(str(p.run_dir) + "/", "<run dir>/"))
        scripts.append((s.name, executor.render(req)))
    console.print(table)
    if p.profile.kind == "slurm":
        for name, text in scripts:
            console.rule(f"sbatch: {name}")
            console.print(text, markup=False, highlight=False)
    if p.spec.sweep is not None:
        sw = p.spec.sweep
        points = sw.points()
        console.print(f"sweep of stage {sw.stage!r}: {len(points)} points, best by {sw.mode} {sw.metric}")
        for i, point in enumerate(points):
            console.print(f"  point {i}: " + ", ".join(f"{k}={v}" for k, v in point.items()), highlight=False)
    console.print(f"run dir: {p.run_dir}\nresources: {p.stages[0].resources}")
    if jobs_api:
        from launch.ray_jobs import build_submission

        name = cluster or p.spec.cluster
        as_file = Path(name).suffix in (".yaml", ".yml")
        entrypoint, _ = build_submission(spec_path, Path(name), list(set_ or []), p.profile,
                                         cluster_is_name=not as_file)
        console.print(f"submitted as one Ray job to {p.profile.address}; entrypoint: {entrypoint}", highlight=False,
                      markup=False)
    if memory:
        _print_memory(p)
    if show_spec:
        console.rule("resolved spec")
        console.print(dump_resolved_yaml(p.spec), markup=False, highlight=False)


@app.command()
def submit(spec_path: Path = typer.Argument(..., metavar="SPEC"), set_: Optional[list[str]] = SetOpt,
           cluster: Optional[str] = ClusterOpt,
           detach: bool = typer.Option(False, "--detach", help="SLURM: return once every stage is submitted."),
           force: bool = typer.Option(False, "--force", help="Submit even if a stage is predicted not to fit "
                                                             "the profile's gpu_memory_gb.")) -> None:
    """Run every stage of SPEC on the cluster profile, then print results and the model's lineage."""
    from launch.pipeline import submit_pipeline

    p = _load(spec_path, set_, cluster)
    _check_memory(p, force=force, cluster=cluster or p.spec.cluster)
    if _via_ray_jobs(p.profile):
        _submit_ray_job(p, spec_path, set_ or [], cluster or p.spec.cluster, detach=detach)
        return
    console.print(f"[bold]{p.spec.name}[/] hash {p.spec_hash[:12]} on {p.profile.name}: "
                  f"{len(p.stages)} stages -> {p.run_dir}")
    outcome = submit_pipeline(p, wait=not detach)
    if detach:
        for name, job_id in outcome.submitted.items():
            console.print(f"  {name}: job {job_id}")
        console.print(f"follow: sllm status {p.run_dir}  |  sllm logs {p.run_dir} STAGE -f  |  "
                      f"sllm cancel {p.run_dir}", highlight=False)
        return
    _print_outcome(outcome)
    _exit_on_regression(outcome)


def _print_memory(p: Any) -> None:
    """`sllm plan --memory`: one table per training stage, and the cheapest fix for a stage that does not fit."""
    from sllm_lib.memory import plan_memory, render_plan, suggest

    memories = plan_memory(p.spec, p.profile)
    console.rule("memory per training process (predicted from the model config; no weights loaded)")
    if not memories:
        console.print("nothing predicted: no training stages, or only vision-language ones (not modelled yet)")
        return
    if getattr(p.profile, "gpu_memory_gb", None) is None:
        console.print(f"cluster {p.profile.name!r} sets no gpu_memory_gb: nothing to compare with", highlight=False)
    suggestions = {m.stage: suggest(p.spec, p.profile, m) for m in memories}
    for item in render_plan(memories, suggestions):
        console.print(item, highlight=False)


def _check_memory(p: Any, *, force: bool, cluster: str) -> None:
    """Refuse (PlanError) a stage predicted not to fit the profile's gpu_memory_gb, unless --force.

    Runs once, where the user submits: inside a Ray Jobs entrypoint the check was already made.
    """
    from launch.ray_jobs import IN_JOB_ENV

    if getattr(p.profile, "gpu_memory_gb", None) is None or os.environ.get(IN_JOB_ENV):
        return
    from sllm_lib.errors import PlanError
    from sllm_lib.memory import GB, plan_memory, suggest

    try:
        memories = plan_memory(p.spec, p.profile)
    except SllmError as exc:  # no config to plan from: the check must not block a submission
        log.warning("memory check skipped: %s", exc)
        return
    problems = []
    for m in memories:
        log.info("memory: stage %s needs %.1f of %.1f GB per GPU", m.stage, m.total / GB, m.available_bytes / GB)
        if m.fits is False:
            s = suggest(p.spec, p.profile, m)
            fix = f"cheapest change that fits: {s.describe()}" if s is not None else \
                "no combination of ZeRO, checkpointing, micro-batch, offload and 4-bit fits"
            big = sorted(m.rows, key=lambda r: r.bytes, reverse=True)[:3]
            terms = ", ".join(f"{r.name} {r.bytes / GB:.1f} GB" for r in big)
            problems.append(f"stage {m.stage!r} is predicted to need {m.total / GB:.1f} GB per GPU; cluster "
                            f"{p.profile.name!r} has {m.available_bytes / GB:.1f} GB (largest: {terms}); {fix}")
    if not problems:
        return
    if force:
        for line in problems:
            log.warning("--force: submitting anyway: %s", line)
        return
    raise PlanError("memory check failed; nothing was submitted:\n" + "\n".join(problems)
                    + f"\nsee `sllm plan {p.spec_path} --cluster {cluster} --memory` for the breakdown, "
                      f"or pass --force to submit anyway")


def _via_ray_jobs(profile: Any) -> bool:
    """A Ray Jobs API profile, seen from outside the cluster: the plan is sent there as one job."""
    import os

    from launch.ray_jobs import IN_JOB_ENV

    return profile.kind == "ray" and profile.jobs_api and not os.environ.get(IN_JOB_ENV)


def _submit_ray_job(p: Any, spec_path: Path, overrides: list[str], cluster: str, *, detach: bool) -> None:
    from launch.pipeline import preflight
    from launch.ray_jobs import submit_job, wait_job

    preflight(p.spec)  # bad inputs fail here, before anything reaches the cluster
    cluster_path = Path(cluster) if Path(cluster).suffix in (".yaml", ".yml") else None
    record = submit_job(spec_path=spec_path, cluster_path=cluster_path or Path(cluster), overrides=overrides,
                        profile=p.profile, run_dir=p.run_dir, job_name=p.spec.name, spec_hash=p.spec_hash,
                        cluster_is_name=cluster_path is None)
    console.print(f"[bold]{p.spec.name}[/] hash {p.spec_hash[:12]}: Ray job {record.submission_id} at "
                  f"{record.address}", highlight=False)
    if detach:
        console.print(f"follow: sllm status {p.run_dir}  |  sllm logs {p.run_dir} -f  |  sllm cancel {p.run_dir}",
                      highlight=False)
        return
    wait_job(record, echo=lambda text: print(text, flush=True))


REGRESSION_EXIT = 3
"""Exit code of `sllm submit`/`sllm nightly` when a nightly gate regressed (errors exit 2)."""


def _exit_on_regression(outcome: Any) -> None:
    """Print each nightly stage's verdict and report; exit 3 if any regressed."""
    regressed = False
    for s in outcome.plan.stages:
        if s.kind != "nightly_eval":
            continue
        r = outcome.results[s.name]
        bad = r.metrics.get("nightly/regression", 0.0) > 0
        regressed |= bad
        ex = r.extras
        verdict = "[red bold]REGRESSION[/]" if bad else "[green bold]PASS[/]"
        console.print(f"nightly {ex.get('date')}: {verdict}  candidate v{ex.get('candidate_version')} vs champion "
                      f"v{ex.get('champion_version') or '-'}, {r.metrics.get('nightly/regressed_gates', 0):.0f} of "
                      f"{r.metrics.get('nightly/gates', 0):.0f} gates regressed"
                      + (", promoted" if ex.get("promoted") else ""))
        console.print(f"report: {ex.get('report')}", highlight=False)
    if regressed:
        raise typer.Exit(REGRESSION_EXIT)


def _print_outcome(outcome: Any) -> None:
    from sllm_lib.tracking.lineage import lineage_tree, walk_lineage

    table = Table(title=f"{outcome.plan.spec.name}: pipeline run {outcome.parent_run_id} ({outcome.wall_s:.0f} s)")
    for col in ("stage", "kind", "steps", "loss first -> last", "metrics", "run id"):
        table.add_column(col, overflow="fold")
    for s in outcome.plan.stages:
        r = outcome.results[s.name]
        loss = f"{r.loss_first:.3f} -> {r.loss_last:.3f}" if r.loss_first is not None else "-"
        shown = {k: v for k, v in r.metrics.items() if not k.endswith("runtime_s")}
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
        tag = " (reused)" if s.name in outcome.reused else ""
        table.add_row(s.name + tag, s.kind, str(r.steps or "-"), loss, metrics or "-", outcome.run_ids[s.name])
    console.print(table)
    for s in outcome.plan.stages:
        reg = getattr(outcome.plan.spec.stage(s.name), "register_as", None)
        if reg:
            ref = f"{reg.name}@{reg.alias}"
            console.print(f"\nlineage of [bold]{ref}[/]:")
            console.print(lineage_tree(walk_lineage(outcome.tracking_uri, ref)))
    uri = outcome.tracking_uri
    console.print(f"\nMLflow UI: mlflow ui --backend-store-uri {uri} --port 5000  (then open http://127.0.0.1:5000)")


@app.command("eval")
def eval_(model: str = typer.Argument(..., help="Merged model folder, models:/NAME@ALIAS, models:/NAME/VERSION, "
                                                "or the MLflow run id of a merge stage."),
          suite: str = typer.Option(..., "--suite", help="Suite name (eval/suites/<name>.yaml) or YAML path."),
          cluster: Optional[str] = typer.Option("local", "--cluster", help="Cluster profile name or YAML path."),
          sample_limit: Optional[int] = typer.Option(None, help="At most N samples per task."),
          tracking_uri: Optional[str] = typer.Option(None, help="Default: sqlite file under --output-dir."),
          experiment: str = typer.Option("sllm-eval", help="MLflow experiment of the eval run."),
          output_dir: Path = typer.Option(Path("runs"), help="Run folders (and the embedded MLflow store).")) -> None:
    """Score one model on an evaluation suite: batched generation, metrics table, samples artifact, eval run."""
    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.spec import find_cluster_profile, parse_job_spec
    from sllm_lib.tracking.tracker import default_tracking_uri
    from eval.suites import find_suite, load_suite

    suite_path = find_suite(suite).resolve()
    s = load_suite(suite_path)
    uri = tracking_uri or default_tracking_uri(output_dir.resolve())
    ref = _pin_version(model, uri)
    raw = {"name": f"eval-{s.name}", "cluster": cluster or "local", "output_dir": str(output_dir),
           "tracking": {"uri": uri, "experiment": experiment},
           "stages": [{"name": "eval", "kind": "suite_eval", "model": ref, "suite": str(suite_path),
                       **({"sample_limit": sample_limit} if sample_limit else {})}]}
    spec = parse_job_spec(raw, source="sllm eval", base_dir=Path.cwd())
    profile = find_cluster_profile(cluster or "local")
    p = build_plan(spec, suite_path, profile)
    console.print(f"[bold]eval[/] {ref} on suite {s.name} ({len(s.tasks)} tasks) on {profile.name} -> {p.run_dir}")
    outcome = submit_pipeline(p)
    r = outcome.results["eval"]
    table = Table(title=f"{r.extras.get('model', ref)} on {s.name}  "
                        f"({r.metrics.get('samples_per_s', 0):.2f} samples/s; run {outcome.run_ids['eval']}"
                        + (", reused" if "eval" in outcome.reused else "") + ")")
    table.add_column("task")
    names = [m for t in s.tasks for m in t.metric_names()]
    metric_cols = list(dict.fromkeys(names))
    for m in metric_cols:
        table.add_column(m, justify="right")
    for t in s.tasks:
        table.add_row(t.name, *(f"{r.metrics[f'{t.name}/{m}']:.4f}" if f"{t.name}/{m}" in r.metrics else "-"
                                for m in metric_cols))
    console.print(table)
    console.print(f"samples: {Path(r.output_dir or '') / 'samples.jsonl'}", highlight=False)


def _pin_version(ref: str, uri: str) -> str:
    """models:/NAME@ALIAS -> models:/NAME/VERSION, so a moved alias is a new evaluation, not a reused one."""
    if not (ref.startswith("models:/") and "@" in ref):
        return ref
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from sllm_lib.errors import ArtifactNotFoundError
    from sllm_lib.tracking.lineage import parse_model_ref

    name, alias, _ = parse_model_ref(ref)
    try:
        mv = MlflowClient(tracking_uri=uri).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise ArtifactNotFoundError(f"{ref}: not found in the registry at {uri} ({exc.message})") from exc
    console.print(f"{ref} is version {mv.version}")
    return f"models:/{name}/{mv.version}"


@app.command()
def nightly(spec_path: Path = typer.Argument(..., metavar="SPEC", help="A job with a nightly_eval stage "
                                                                       "(jobs/nightly_eval.yaml)."),
            set_: Optional[list[str]] = SetOpt, cluster: Optional[str] = ClusterOpt,
            date: Optional[str] = typer.Option(None, help="Nightly date YYYY-MM-DD (default: today, UTC)."),
            promote: bool = typer.Option(False, "--promote", help="Move champion to the candidate if every gate passes."),
            ) -> None:
    """Run a nightly evaluation job: exit 0 on pass, 3 on a regression, 2 on an error.

    Equivalent to `sllm submit SPEC` with the nightly stage's date/promote set; a re-run for the same
    date reuses that night's result (nothing is scored or logged twice).
    """
    from launch.pipeline import submit_pipeline
    from sllm_lib.spec import load_job_spec

    spec = load_job_spec(spec_path, set_ or [])
    idx = [i for i, st in enumerate(spec.stages) if st.kind == "nightly_eval"]
    if not idx:
        raise SllmError(f"{spec_path}: no stage of kind nightly_eval (see jobs/nightly_eval.yaml)")
    extra = [f"stages[{i}].date={date}" for i in idx if date] + [f"stages[{i}].promote=true" for i in idx if promote]
    p = _load(spec_path, [*(set_ or []), *extra], cluster)
    console.print(f"[bold]{p.spec.name}[/] hash {p.spec_hash[:12]} on {p.profile.name} -> {p.run_dir}")
    outcome = submit_pipeline(p)
    _print_outcome(outcome)
    _exit_on_regression(outcome)


@app.command()
def status(target: Path = typer.Argument(Path("runs"), help="A run dir, or an output dir holding runs.")) -> None:
    """Stages of the pipeline runs under TARGET: state, job id, scheduler state, elapsed, MLflow run."""
    from launch.ray_jobs import RayJobRecord, job_status
    from launch.status import find_state_files, stage_statuses

    record = RayJobRecord.load(target)
    if record is not None:  # sent to a cluster through the Ray Jobs API
        state, message = job_status(record)
        console.print(f"Ray job {record.submission_id} at {record.address}: [bold]{state}[/] {message}")
    table = Table()
    for col in ("run dir", "stage", "status", "job id", "scheduler", "elapsed", "starts", "stage run",
                "last log lines"):
        table.add_column(col, overflow="fold")
    for st in find_state_files(target, missing_ok=record is not None):
        for s in stage_statuses(st):
            table.add_row(str(st.parent), s.stage, s.status, s.job_id, s.scheduler_state, s.elapsed, str(s.starts),
                          s.run_id, s.error or "")
    if table.row_count or record is None:
        console.print(table)


@app.command()
def logs(run_dir: Path = typer.Argument(..., help="The run dir (runs/<job>/<hash>)."),
         stage: Optional[str] = typer.Argument(None, help="Stage name (a Ray Jobs run without it: the job's log)."),
         follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing until the stage ends."),
         lines: int = typer.Option(40, "-n", help="Lines to show first.")) -> None:
    """Print a stage's log (its stage.log, written by rank 0), or a Ray job's log."""
    import time

    from launch.ray_jobs import RayJobRecord, follow_job, job_logs
    from launch.status import find_state_files, stage_statuses

    record = RayJobRecord.load(run_dir)
    if record is not None and stage is None:
        if follow:
            follow_job(record, echo=lambda text: print(text, flush=True))
        else:
            for line in job_logs(record).splitlines()[-lines:]:
                print(line)
        return
    if stage is None:
        raise SllmError(f"{run_dir}: name the stage (this run was not sent through the Ray Jobs API)")
    log_file = run_dir / "stages" / stage / "stage.log"
    if not log_file.is_file():
        raise SllmError(f"{log_file}: no log yet (is {stage!r} a stage of this run, and has it started?)")
    with open(log_file, encoding="utf-8", errors="replace") as f:
        for line in f.read().splitlines()[-lines:]:
            print(line)
        while follow:
            chunk = f.read()
            if chunk:
                print(chunk, end="", flush=True)
                continue
            state = {s.stage: s for s in stage_statuses(find_state_files(run_dir)[0])}.get(stage)
            if state is None or state.status in ("COMPLETED", "FAILED", "CANCELLED"):
                break
            time.sleep(1.0)


@app.command()
def cancel(run_dir: Path = typer.Argument(..., help="The run dir (runs/<job>/<hash>)."),
           stage: Optional[list[str]] = typer.Option(None, "--stage", help="Only these stages (repeatable).")) -> None:
    """Cancel the unfinished stages of a run (scancel / SIGTERM / stop the Ray job)."""
    from launch.ray_jobs import RayJobRecord, job_status, stop_job
    from launch.status import cancel_run, find_state_files

    record = RayJobRecord.load(run_dir)
    if record is not None:
        if job_status(record)[0] in ("SUCCEEDED", "FAILED", "STOPPED"):
            console.print(f"Ray job {record.submission_id}: already ended")
        else:
            stop_job(record)
            console.print(f"cancelled: Ray job {record.submission_id}")
        return
    done = cancel_run(find_state_files(run_dir)[0], stage or None)
    console.print("cancelled: " + (", ".join(done) if done else "nothing (no unfinished stage)"))


@app.command()
def lineage(model: str = typer.Argument(..., help="NAME@ALIAS or NAME/VERSION, e.g. sllm-demo-tiny@candidate"),
            tracking_uri: Optional[str] = typer.Option(None, help="Default: sqlite file under --output-dir."),
            output_dir: Path = typer.Option(Path("runs"), help="Where the embedded default store lives.")) -> None:
    """Walk a registered model back through its stage runs to the datasets."""
    from sllm_lib.tracking.lineage import lineage_tree, walk_lineage
    from sllm_lib.tracking.tracker import default_tracking_uri

    uri = tracking_uri or default_tracking_uri(output_dir)
    console.print(lineage_tree(walk_lineage(uri, model)))


@app.command()
def export(model: str = typer.Argument(..., help="Merged model folder, models:/NAME@ALIAS, NAME/VERSION, or the "
                                                 "MLflow run id of a merge stage."),
           out: Path = typer.Option(..., "-o", "--output", help="Folder to write (must not exist or be empty)."),
           push_to_hub: Optional[str] = typer.Option(None, help="Also upload to this hub repository (ORG/NAME); "
                                                                "token from HF_TOKEN or the hub login."),
           public: bool = typer.Option(False, "--public", help="Create the hub repository public (default private)."),
           overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output folder."),
           variants: Optional[str] = typer.Option(None, help="Also write device variants into OUTPUT/<variant>/: "
                                                             "comma-separated bf16, fp16, fp32, bnb4, bnb8."),
           cpu_report: bool = typer.Option(False, "--cpu-report", help="Measure size on disk, peak memory and ms "
                                                                       "per generated token of each folder on the CPU."),
           tracking_uri: Optional[str] = typer.Option(None, help="Default: sqlite file under --output-dir."),
           output_dir: Path = typer.Option(Path("runs"), help="Where the embedded default store lives.")) -> None:
    """Write a merged model as a hub-ready folder with a model card built from its lineage (optionally upload)."""
    from launch.export import REPORT, export_model, report_markdown
    from sllm_lib.tracking.tracker import default_tracking_uri

    uri = tracking_uri or default_tracking_uri(output_dir)
    chosen = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    result = export_model(model, out, tracking_uri=uri, push_to_hub=push_to_hub, private=not public,
                          overwrite=overwrite, variants=chosen, cpu_report=cpu_report)
    if cpu_report:
        console.print(report_markdown(json.loads((result.folder / REPORT).read_text(encoding="utf-8"))),
                      markup=False, highlight=False)
    files = sorted(p.name for p in result.folder.iterdir())
    console.print(f"exported {model} -> {result.folder} ({len(files)} files: {', '.join(files)})", highlight=False)
    if result.uploaded_to:
        console.print(f"uploaded: {result.uploaded_to}", highlight=False)


@app.command()
def schema(output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write to a file.")) -> None:
    """Print (or write) the JSON schema of job specs, for editors."""
    from sllm_lib.spec import json_schema

    text = json.dumps(json_schema(), indent=2, ensure_ascii=False)
    if output:
        output.write_text(text + "\n", encoding="utf-8")
        console.print(f"wrote {output}")
    else:
        print(text)


def _spec_cache(spec_path: Path, set_: list[str] | None) -> tuple[Any, Any]:
    from sllm_lib.cache.store import FeatureCache
    from sllm_lib.data.feature_cache import cache_kwargs
    from sllm_lib.spec import load_job_spec

    spec = load_job_spec(spec_path, set_ or [])
    if spec.model is None:
        raise SllmError(f"{spec_path}: the cache is keyed by the model's feature extractor; the spec has no model")
    kwargs = cache_kwargs(spec)
    if kwargs["mode"] == "off":
        kwargs["mode"] = "readwrite"  # the cache commands act on the cache even when stages skip it
    return spec, FeatureCache(**kwargs)


def _fingerprint(spec: Any) -> str:
    from sllm_lib.cache.keys import fingerprint
    from sllm_lib.models.builders import load_tokenizer_and_features, resolve_model_path

    return fingerprint(load_tokenizer_and_features(resolve_model_path(spec.model))[1])


@cache_app.command("build")
def cache_build(spec_path: Path = typer.Argument(..., metavar="SPEC"), set_: Optional[list[str]] = SetOpt,
                cluster: Optional[str] = ClusterOpt,
                shards: Optional[int] = typer.Option(None, help="Builders (default: local CPU count; SLURM 8).")) -> None:
    """Compute the features of every audio file SPEC reads, sharded over local processes or a SLURM array."""
    from launch.cache_build import make_plan, run_build
    from sllm_lib.spec import find_cluster_profile

    spec, cache = _spec_cache(spec_path, set_)
    if cache.mode == "readonly":
        raise SllmError(f"{spec_path}: cache.mode is readonly; building writes (use --set cache.mode=readwrite)")
    profile = find_cluster_profile(cluster or spec.cluster, spec_path=spec_path)
    n = shards or (max(1, (os.cpu_count() or 1)) if profile.kind == "local" else 8)
    folder = Path(spec.output_dir).resolve() / "cache-build" / spec.name
    plan = make_plan(spec, folder, shards=n)
    total = sum(len(x) for x in plan.shards)
    console.print(f"cache build: {total} clips from {len(plan.datasets)} datasets -> {cache.uri} "
                  f"({len(plan.shards)} {profile.kind} builders)")
    summary = run_build(plan, profile)
    st = summary.stats
    table = Table(title=f"cache build {spec.name}: fingerprint {summary.fingerprint}")
    for col in ("clips", "hits", "misses", "written", "corrupt", "fallbacks", "MB written", "seconds", "clips/s"):
        table.add_column(col, justify="right")
    table.add_row(str(summary.clips), str(st.get("hits", 0)), str(st.get("misses", 0)), str(st.get("writes", 0)),
                  str(st.get("corrupt", 0)), str(st.get("fallbacks", 0)), f"{st.get('bytes_written', 0) / 1e6:.1f}",
                  f"{summary.seconds:.1f}", f"{summary.clips_per_s:.1f}")
    console.print(table)
    for m in summary.manifests:
        console.print(f"manifest: {m}", highlight=False)
    if st.get("fallbacks", 0):
        raise SllmError(f"{st['fallbacks']} clips could not be written to {cache.uri} (see the shard logs in "
                        f"{folder})")


@cache_app.command("stats")
def cache_stats(spec_path: Path = typer.Argument(..., metavar="SPEC"), set_: Optional[list[str]] = SetOpt) -> None:
    """Fingerprints in the cache, entries and coverage of SPEC's audio for the model's fingerprint."""
    from launch.cache_build import spec_audio
    from sllm_lib.cache.keys import audio_hash

    spec, cache = _spec_cache(spec_path, set_)
    fp = _fingerprint(spec)
    table = Table(title=f"feature cache {cache.uri}")
    for col in ("fingerprint", "entries", "this model"):
        table.add_column(col)
    for f in cache.fingerprints():
        table.add_row(f, str(sum(1 for _ in cache.entries(f))), "yes" if f == fp else "")
    console.print(table)
    have = set(cache.entries(fp)) if fp in cache.fingerprints() else set()
    for name, paths in spec_audio(spec).items():
        n = sum(audio_hash(p) in have for p in paths)
        console.print(f"{name}: {n}/{len(paths)} clips cached")


@cache_app.command("verify")
def cache_verify(spec_path: Path = typer.Argument(..., metavar="SPEC"), set_: Optional[list[str]] = SetOpt,
                 sample: Optional[int] = typer.Option(None, help="Check N random entries (default: all)."),
                 recompute: bool = typer.Option(False, help="Also recompute from the audio and compare.")) -> None:
    """Check entries: header, shape, dtype, checksum; with --recompute compare against fresh features."""
    from launch.cache_build import spec_audio
    from sllm_lib.cache.keys import audio_hash
    from sllm_lib.models.builders import load_tokenizer_and_features, resolve_model_path

    spec, cache = _spec_cache(spec_path, set_)
    extractor = load_tokenizer_and_features(resolve_model_path(spec.model))[1]
    from sllm_lib.cache.keys import fingerprint

    fp = fingerprint(extractor)
    index = {audio_hash(p): p for paths in spec_audio(spec).values() for p in paths} if recompute else None
    res = cache.verify(fp, sample=sample, audio_index=index, feature_extractor=extractor if recompute else None)
    console.print(" | ".join(f"{k} {v}" for k, v in res.items()))
    if res.get("corrupt") or res.get("mismatched"):
        raise SllmError(f"{cache.uri}: {res.get('corrupt', 0)} corrupt and {res.get('mismatched', 0)} mismatched "
                        f"entries (removed: {res.get('removed', 0)})")


@cache_app.command("gc")
def cache_gc(spec_path: Path = typer.Argument(..., metavar="SPEC"), set_: Optional[list[str]] = SetOpt,
             keep: Optional[list[str]] = typer.Option(None, "--keep", help="Fingerprints to keep (repeatable); "
                                                                           "default: the spec model's."),
             yes: bool = typer.Option(False, "--yes", help="Delete without asking.")) -> None:
    """Delete every fingerprint (extractor setting / code version) but the ones kept."""
    spec, cache = _spec_cache(spec_path, set_)
    kept = list(keep or [_fingerprint(spec)])
    doomed = [f for f in cache.fingerprints() if f not in kept]
    if not doomed:
        console.print("nothing to delete")
        return
    if not yes and not typer.confirm(f"delete fingerprints {', '.join(doomed)} from {cache.uri}?"):
        raise typer.Exit(1)
    res = cache.gc(kept)
    console.print(" | ".join(f"{k} {v}" for k, v in res.items()))


@tracking_app.command("sync")
def tracking_sync(run_dir: Path = typer.Argument(..., help="A run dir (runs/<job>/<hash>) or a folder holding runs."),
                  tracking_uri: Optional[str] = typer.Option(None, help="Default: the one the run used."),
                  timeout_s: float = typer.Option(120.0, help="Give up on a journal after this long.")) -> None:
    """Replay journaled tracking operations (an outage during training) to the server; exit 2 if some remain."""
    from mlflow import MlflowClient

    from sllm_lib.secrets import redact_text
    from sllm_lib.tracking.journal import JOURNAL, Journal
    from sllm_lib.tracking.tracker import replay_bounded

    journals = sorted(run_dir.rglob(JOURNAL))
    if not journals:
        console.print(f"{run_dir}: no tracking journal (nothing to sync)")
        return
    table = Table(title=f"tracking sync {run_dir}")
    for col in ("journal", "replayed", "still pending", "error"):
        table.add_column(col, overflow="fold")
    left = 0
    for path in journals:
        uri = tracking_uri or _run_tracking_uri(path)
        j = Journal(path)
        if not j.entries():
            table.add_row(str(path.relative_to(run_dir)), "0", "0", "")
            continue
        stats = replay_bounded(j, MlflowClient(tracking_uri=uri), timeout_s=timeout_s)
        left += stats.pending
        table.add_row(str(path.relative_to(run_dir)), str(stats.replayed), str(stats.pending),
                      redact_text(stats.error or ""))
    console.print(table)
    if left:
        raise SllmError(f"{left} journaled operations could not be replayed yet; run this again when the "
                        f"tracking server answers")


def _run_tracking_uri(journal: Path) -> str:
    """The tracking URI recorded in the state.json of the run the journal belongs to."""
    for d in [journal.parent, *journal.parents]:
        state = d / "state.json"
        if state.is_file():
            uri = json.loads(state.read_text(encoding="utf-8")).get("tracking_uri")
            if uri:
                return uri
    raise SllmError(f"{journal}: no state.json with a tracking_uri above it; pass --tracking-uri")


KindOpt = typer.Option(..., "--kind", help="text_qa | asr | speech_qa | classification")


@data_app.command("validate")
def data_validate(path: Path, kind: str = KindOpt,
                  labels: Optional[str] = typer.Option(None, help="classification: the label set, comma-separated.")
                  ) -> None:
    """Check every record of a JSONL file; list bad lines (exit 2 if any)."""
    from sllm_lib.data.records import validate_dataset

    label_set = [x.strip() for x in labels.split(",")] if labels else None
    res = validate_dataset(path, kind, labels=label_set)  # type: ignore[arg-type]
    console.print(f"{path}: {len(res.records)} good records, {len(res.skipped)} bad, "
                  f"{res.duplicates_removed} duplicates removed, digest {res.digest()[:12]}")
    if res.skipped:
        raise SllmError("\n".join(str(b) for b in res.skipped[:50]))


@data_app.command("convert-aihub")
def data_convert_aihub(root: Path = typer.Argument(..., help="An AI-Hub TL folder (1.질문 + 2.답변), or a folder of them."),
                       output: Path = typer.Option(..., "-o", "--output", help="The text_qa JSONL to write."),
                       strict: bool = typer.Option(False, "--strict", help="Any unreadable or unmatched file is an error."),
                       report_file: Optional[Path] = typer.Option(None, "--report", help="Also write the report as JSON.")
                       ) -> None:
    """AI-Hub question/answer trees -> {instruction, output} JSONL, with a report of what was skipped."""
    from sllm_lib.data.aihub import convert_aihub
    from sllm_lib.files import write_json_atomic

    rep = convert_aihub(root, output, strict=strict)
    table = Table(title=f"{root} -> {output}")
    for col in ("trees", "questions", "answers", "pairs", "unmatched questions", "unmatched answers", "unreadable"):
        table.add_column(col, justify="right")
    table.add_row(*(str(x) for x in (rep.trees, rep.questions, rep.answers, rep.pairs, len(rep.unmatched_questions),
                                     len(rep.unmatched_answers), len(rep.unreadable))))
    console.print(table)
    for path, why in rep.unreadable[:20]:
        console.print(f"  unreadable {path}: {why}", highlight=False, markup=False)
    for path in rep.unmatched_questions[:20]:
        console.print(f"  no answer for {path}", highlight=False, markup=False)
    for path in rep.unmatched_answers[:20]:
        console.print(f"  no question for {path}", highlight=False, markup=False)
    if rep.problems > 60:
        console.print(f"  ... {rep.problems} problems in all" + (f" (see {report_file})" if report_file else ""))
    if report_file:
        write_json_atomic(report_file, rep.as_dict())


@data_app.command("stats")
def data_stats(path: Path, kind: str = KindOpt,
               model: str = typer.Option("tiny:voxtral", help="Whose tokenizer counts tokens."),
               batch_size: int = typer.Option(8, help="Batch size for the padding-share estimate."),
               labels: Optional[str] = typer.Option(None, help="classification: the label set, comma-separated.")
               ) -> None:
    """Token-length percentiles (prompt, target, total) and the padding share with/without length grouping."""
    from sllm_lib.data.records import read_records
    from sllm_lib.data.sampler import length_grouped_batches, padding_share, random_batches
    from sllm_lib.data.stats import dataset_length_stats
    from sllm_lib.models.builders import load_tokenizer_and_features, resolve_model_path
    from sllm_lib.spec import ModelSpec

    label_set = [x.strip() for x in labels.split(",")] if labels else None
    res = read_records(path, kind, on_bad_record="skip", labels=label_set)  # type: ignore[arg-type]
    tok, _ = load_tokenizer_and_features(resolve_model_path(ModelSpec(base=model)))
    stats = dataset_length_stats(res, lambda t: len(tok.encode(t, add_special_tokens=False)))
    table = Table(title=f"{path} ({len(res.records)} records, tokens by {model})")
    cols = ["count", "min", "mean", "p50", "p90", "p95", "p99", "max"]
    table.add_column("part")
    for c in cols:
        table.add_column(c, justify="right")
    for part, row in stats.items():
        table.add_row(part, *(f"{row[c]:.0f}" if c != "mean" else f"{row[c]:.1f}" for c in cols))
    console.print(table)
    totals = [int(x) for x in _total_lengths(res, tok)]
    grouped = padding_share(totals, length_grouped_batches(totals, batch_size, seed=0))
    plain = padding_share(totals, random_batches(totals, batch_size, seed=0))
    console.print(f"padding share at batch size {batch_size}: random {plain:.1%}, length-grouped {grouped:.1%}")


def _total_lengths(res: Any, tok: Any) -> list[int]:
    """Text tokens plus the audio placeholders the model will see (375 per started 30 s chunk)."""
    import soundfile as sf

    from sllm_lib.audio.features import SAMPLE_RATE, TOKENS_PER_CHUNK, num_chunks
    from sllm_lib.data.stats import record_text

    out = []
    for r in res.records:
        prompt, target = record_text(r, res.kind)
        n = len(tok.encode(prompt + target, add_special_tokens=False))
        if "audio_path" in r:
            info = sf.info(r["audio_path"])
            n += TOKENS_PER_CHUNK * num_chunks(int(info.duration * SAMPLE_RATE))
        out.append(n)
    return out


def main() -> None:
    """Console-script entry: SllmError -> exit 2 with the message, no traceback unless --debug."""
    try:
        rc = app(standalone_mode=False)  # typer.Exit(n) comes back as the return value here, not raised
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except SllmError as exc:
        if _STATE["debug"]:
            raise
        from rich.markup import escape

        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)))
    except KeyboardInterrupt:
        err_console.print("interrupted; run the same command again to resume")
        sys.exit(130)
    except Exception as exc:
        # usage errors: typer 0.29 raises its bundled click's exceptions, which are not click.ClickException
        # subclasses, so match on the interface (show() + exit_code) instead of the class
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
