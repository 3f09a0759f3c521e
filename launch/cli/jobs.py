"""`sllm validate | plan | submit | status | logs | cancel | schema`: a job spec from validation to its run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from launch.cli.common import ClusterOpt, SetOpt, _exit_on_verdict, _load, _print_outcome, app, console, log
from sllm_lib.errors import SllmError


@app.command()
def validate(paths: list[Path] = typer.Argument(..., help="Job specs or cluster profiles."),
             set_: Optional[list[str]] = SetOpt) -> None:
    """Validate job specs and cluster profiles; print OK or every problem (exit 2)."""
    from launch.pipeline import preflight
    from sllm_lib.files import folder_problems
    from sllm_lib.spec import load_cluster_profile, load_job_spec, looks_like_profile, read_yaml, spec_hash
    from sllm_lib.spec.problems import raise_problems

    failed: list[str] = []
    for path in paths:
        try:
            if looks_like_profile(read_yaml(path)):
                prof = load_cluster_profile(path)
                console.print(f"OK {path}: cluster profile {prof.name!r} ({prof.kind})")
            else:
                spec = load_job_spec(path, set_ or [])
                problems = folder_problems(Path(spec.output_dir) / spec.name, "output_dir")
                if problems:  # what `submit` makes first, checked here: validate OK means submit can start
                    raise_problems(str(path), problems)
                try:
                    preflight(spec)  # the datasets and the model folder, as plan and submit read them
                except SllmError as exc:
                    raise type(exc)(f"{path}: {exc}") from exc
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


@app.command()
def plan(spec_path: Path = typer.Argument(..., metavar="SPEC"), set_: Optional[list[str]] = SetOpt,
         cluster: Optional[str] = ClusterOpt,
         show_spec: bool = typer.Option(True, "--show-spec/--no-show-spec", help="Print the resolved spec."),
         memory: bool = typer.Option(False, "--memory", help="Also print each training stage's predicted GPU "
                                                             "memory (from the model config; no weights loaded)."),
         force: bool = typer.Option(False, "--force", help="Plan even if a stage is predicted not to fit (as "
                                                           "submit --force).")
         ) -> None:
    """Validate, check inputs and print the stage plan without running or writing anything."""
    from launch.executor import LaunchRequest, get_executor
    from launch.pipeline import preflight
    from sllm_lib.spec import dump_resolved_yaml

    p = _load(spec_path, set_, cluster)
    preflight(p.spec)
    if not memory:  # (with --memory the tables below say it, stage by stage)
        _check_memory(p, force=force, cluster=cluster or p.spec.cluster)  # what submit refuses, plan refuses
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
    for st in p.spec.stages:
        if st.trains and st.watch is not None:
            w = st.watch
            console.print(f"stage {st.name!r} is watched: every {st.train.save_steps} steps its checkpoint is scored on "
                          f"suite {w.suite} by a job of its own on {p.profile.name} (at most {w.max_concurrent} at "
                          "once)" + (f"; early stop when {w.early_stop.metric} has not improved for "
                                     f"{w.early_stop.patience} checkpoints" if w.early_stop else ""), highlight=False)
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
                                                             "the profile's gpu_memory_gb."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Run every check submit makes (data, memory, "
                                        "secrets, tracking server, registry, the scheduler's own test), then stop "
                                        "before the first stage: nothing is created.")) -> None:
    """Run every stage of SPEC on the cluster profile, then print results and the model's lineage."""
    from launch.pipeline import submit_pipeline

    p = _load(spec_path, set_, cluster)
    _check_memory(p, force=force, cluster=cluster or p.spec.cluster)
    if _via_ray_jobs(p.profile) and not dry_run:
        _submit_ray_job(p, spec_path, set_ or [], cluster or p.spec.cluster, detach=detach)
        return
    console.print(f"[bold]{p.spec.name}[/] hash {p.spec_hash[:12]} on {p.profile.name}: "
                  f"{len(p.stages)} stages -> {p.run_dir}")
    outcome = submit_pipeline(p, wait=not detach, dry_run=dry_run)
    if outcome is None:
        console.print(f"dry run OK: every check passed; {len(p.stages)} stages would run on {p.profile.name!r}; "
                      f"nothing was created", highlight=False)
        return
    if detach:
        for name, job_id in outcome.submitted.items():
            console.print(f"  {name}: job {job_id}")
        console.print(f"follow: sllm status {p.run_dir}  |  sllm logs {p.run_dir} STAGE -f  |  "
                      f"sllm cancel {p.run_dir}", highlight=False)
        return
    _print_outcome(outcome)
    _exit_on_verdict(outcome)


def _print_memory(p: Any) -> None:
    """`sllm plan --memory`: one table per training stage, and the cheapest fix for a stage that does not fit."""
    from sllm_lib.memory import plan_memory, render_plan, suggest

    memories = plan_memory(p.spec, p.profile)
    console.rule("memory per training process (predicted from the model config; no weights loaded)")
    if not memories:
        console.print("nothing predicted: no training stages")
        return
    if _cpu_only_local(p.profile):
        from sllm_lib.memory import GB

        need = max((m.total + m.cpu_total) * max(1, p.profile.world_size) for m in memories)
        verdict = "fits" if need <= host_memory_bytes() else "does NOT fit: `sllm submit` refuses it (--force overrides)"
        console.print(f"cluster {p.profile.name!r} is this machine's CPU: the largest stage needs {need / GB:.1f} GB "
                      f"of its {host_memory_bytes() / GB:.1f} GB; {verdict}", highlight=False)
    elif getattr(p.profile, "gpu_memory_gb", None) is None:
        console.print(f"cluster {p.profile.name!r} sets no gpu_memory_gb: nothing to compare with", highlight=False)
    suggestions = {m.stage: suggest(p.spec, p.profile, m) for m in memories}
    for item in render_plan(memories, suggestions):
        console.print(item, highlight=False)


def _check_memory(p: Any, *, force: bool, cluster: str) -> None:
    """Refuse (PlanError) a stage predicted not to fit the profile's gpu_memory_gb, unless --force.

    Runs once, where the user submits: inside a Ray Jobs entrypoint the check was already made.
    """
    from launch.ray_jobs import IN_JOB_ENV

    if os.environ.get(IN_JOB_ENV):
        return
    if _cpu_only_local(p.profile):
        _check_host_memory(p, force=force, cluster=cluster)
        return
    if getattr(p.profile, "gpu_memory_gb", None) is None:
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
            problems.append(f"stage {m.stage!r} is predicted to need {m.total / GB:.1f} GB per GPU; cluster "
                            f"{p.profile.name!r} has {m.available_bytes / GB:.1f} GB (largest: {_largest(m)}); {fix}")
    if _forced_or_fine(problems, force):
        return
    raise PlanError("memory check failed; nothing was submitted:\n" + "\n".join(problems)
                    + f"\nsee `sllm plan {p.spec_path} --cluster {cluster} --memory` for the breakdown, "
                      f"or pass --force to submit anyway")


def _largest(m: Any, n: int = 3) -> str:
    """The n largest memory terms of a stage's plan, for a refusal message."""
    from sllm_lib.memory import GB

    big = sorted(m.rows, key=lambda r: r.bytes, reverse=True)[:n]
    return ", ".join(f"{r.name} {r.bytes / GB:.1f} GB" for r in big)


def _forced_or_fine(problems: list[str], force: bool) -> bool:
    """True when nothing is in the way: no problem, or --force (each problem then logged as a warning)."""
    if force:
        for line in problems:
            log.warning("--force: submitting anyway: %s", line)
    return force or not problems


def _cpu_only_local(profile: Any) -> bool:
    return profile.kind == "local" and not profile.gpus


def host_memory_bytes() -> int:
    """Physical memory of this machine (what a CPU-only local profile trains in)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_host_memory(p: Any, *, force: bool, cluster: str) -> None:
    """On a CPU-only local profile every training process runs here, in fp32: refuse (PlanError) a stage the
    planner predicts to need more than this machine's memory, before anything is submitted, unless --force."""
    from sllm_lib.errors import PlanError
    from sllm_lib.memory import GB, plan_memory

    try:
        memories = plan_memory(p.spec, p.profile, device="cpu")
    except SllmError as exc:
        log.warning("memory check skipped: %s", exc)
        return
    host = host_memory_bytes()
    procs = max(1, p.profile.world_size)
    problems = []
    for m in memories:
        need = (m.total + m.cpu_total) * procs
        if need > host:
            problems.append(f"stage {m.stage!r} is predicted to need {need / GB:.1f} GB of memory "
                            f"({procs} process{'es' if procs > 1 else ''}, fp32 on the CPU; largest: {_largest(m)}); "
                            f"this machine has {host / GB:.1f} GB")
    if _forced_or_fine(problems, force):
        return
    model = p.spec.model.base if p.spec.model is not None else "(none)"
    raise PlanError(
        f"{p.spec_path}: model {model} does not fit cluster profile {p.profile.name!r} (CPU only, this machine); "
        f"nothing was submitted:\n" + "\n".join(problems)
        + f"\nsubmit it to a GPU cluster profile (`--cluster slurm_a100_2x8`; `sllm plan {p.spec_path} --cluster "
          f"slurm_a100_2x8 --memory` for the breakdown), or pass --force to run it here anyway")


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


@app.command()
def status(target: Path = typer.Argument(Path("runs"), help="A run dir, or an output dir holding runs.")) -> None:
    """Stages of the pipeline runs under TARGET: state, job id, scheduler state, elapsed, GPU-hours and cost, MLflow
    run."""
    from launch.ray_jobs import RayJobRecord, job_status
    from launch.status import find_state_files, stage_statuses

    record = RayJobRecord.load(target)
    if record is not None:  # sent to a cluster through the Ray Jobs API
        state, message = job_status(record)
        console.print(f"Ray job {record.submission_id} at {record.address}: [bold]{state}[/] {message}")
    table = Table()
    for col in ("run dir", "stage", "status", "job id", "scheduler", "elapsed", "starts", "GPU-hours", "cost",
                "stage run", "last log lines"):
        table.add_column(col, overflow="fold")
    for st in find_state_files(target, missing_ok=record is not None):
        for s in stage_statuses(st):
            table.add_row(str(st.parent), s.stage, s.status, s.job_id, s.scheduler_state, s.elapsed, str(s.starts),
                          s.gpu_hours, s.cost, s.run_id, s.last_lines)
    if table.row_count or record is None:
        console.print(table)


@app.command()
def watch(run_dir: Path = typer.Argument(..., help="The run dir (runs/<job>/<hash>) of a running or finished stage."),
          stage: str = typer.Option(..., "--stage", help="The training stage whose checkpoints to score."),
          suite: Optional[str] = typer.Option(None, "--suite", help="Suite name or YAML (default: the stage's "
                                                                     "watch.suite)."),
          cluster: Optional[str] = ClusterOpt,
          sample_limit: Optional[int] = typer.Option(None, help="At most N samples per task."),
          max_concurrent: Optional[int] = typer.Option(None, help="Evaluations at once (default: the stage's, or 1)."),
          once: bool = typer.Option(False, "--once", help="Score the checkpoints there now and exit; default: follow "
                                                          "the stage until it ends.")) -> None:
    """Score every complete checkpoint of a training stage with a suite, each once, as its own job on the cluster
    (a finished stage: what is left; a running one: as they land). Results: watch/<task>/<metric> on the stage's
    MLflow run at each checkpoint's step, and STAGE_DIR/watch/step-N.json."""
    import time

    from eval.watch import Ledger, Watcher, stage_finished, watch_problems
    from launch.executor import LaunchRequest, get_executor
    from sllm_lib.spec import WatchSpec, find_cluster_profile, load_job_spec

    stage_dir = run_dir / "stages" / stage
    request_file = stage_dir / "request.json"
    if not request_file.is_file():
        raise SllmError(f"{run_dir}: stage {stage!r} has no request.json (not a stage of this run, or never "
                        f"submitted); stages: {', '.join(sorted(p.name for p in (run_dir / 'stages').glob('*'))) or '-'}")
    req = LaunchRequest.from_json(request_file.read_text(encoding="utf-8"))
    job = load_job_spec(req.spec_path)
    st = job.stage(stage)
    if not st.trains:
        raise SllmError(f"stage {stage!r} is a {st.kind} stage: only training stages write checkpoints")
    base = st.watch.model_dump() if st.watch is not None else {}
    if suite is None and not base:
        raise SllmError(f"stage {stage!r} has no watch: block; name a suite with --suite")
    settings = {**base, **{k: v for k, v in (("suite", suite), ("sample_limit", sample_limit),
                                             ("max_concurrent", max_concurrent)) if v is not None}}
    spec = WatchSpec.model_validate(settings)
    problems = watch_problems(spec)
    if problems:
        raise SllmError("; ".join(problems))
    profile = find_cluster_profile(cluster or job.cluster, spec_path=Path(req.spec_path))
    watcher = Watcher(request=req, watch=spec, executor=get_executor(profile),
                      concurrent=not (profile.kind == "local" and profile.isolation == "inprocess"),
                      keep=st.train.save_total_limit)
    before = set(Ledger(stage_dir).results())
    if not once:
        done = stage_finished(run_dir / "state.json", stage)
        console.print(f"watching {stage} in {run_dir} with suite {spec.suite} on {profile.name} until it ends")
        while not done():
            watcher.poll()
            time.sleep(spec.poll_s)
    watcher.drain()
    results = Ledger(stage_dir).results()
    table = Table(title=f"{stage}: {len(results)} checkpoint(s) scored ({len(set(results) - before)} now)")
    keys = sorted({k for r in results.values() for k in r.get("metrics", {})})
    for col in ("step", *keys):
        table.add_column(col, justify="right")
    for step, r in results.items():
        table.add_row(str(step), *(f"{r['metrics'][k]:.4f}" if k in r.get("metrics", {}) else "-" for k in keys))
    console.print(table)
    if watcher.stop_reason:
        console.print(f"early stop requested: {watcher.stop_reason}", highlight=False)
    if watcher.failed:
        raise SllmError(f"checkpoint(s) {sorted(set(watcher.failed))} could not be scored; see "
                        f"{stage_dir / 'watch'}/step-N/stage.log")


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
def schema(output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write to a file.")) -> None:
    """Print (or write) the JSON schema of job specs, for editors."""
    from sllm_lib.spec import json_schema

    text = json.dumps(json_schema(), indent=2, ensure_ascii=False)
    if output:
        output.write_text(text + "\n", encoding="utf-8")
        console.print(f"wrote {output}")
    else:
        print(text)
