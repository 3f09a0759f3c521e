"""Stage states of a run folder, refreshed from the scheduler (sacct for SLURM jobs, the pid for local ones)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from launch.state import PipelineState
from sllm_lib.errors import SllmError

log = logging.getLogger(__name__)


@dataclass
class StageStatus:
    stage: str
    status: str  # launcher's view (state.json)
    job_id: str
    scheduler_state: str  # sacct / process view, or "-"
    elapsed: str  # sacct's for a SLURM job; else from the stage's files (see `_elapsed`); "-" when unknown
    run_id: str
    error: str  # last log lines of a failed stage
    starts: int  # times the stage function started (1 + requeues/re-runs)
    last_lines: str = ""  # last lines of the stage's log, whatever its state
    gpu_hours: str = "-"  # every attempt's (sllm_lib/usage.py), with the interrupted attempts' share
    cost: str = "-"  # GPU-hours x the profile's cost_per_gpu_hour, when it has one


def usage_cells(stage_dir: Path) -> tuple[str, str]:
    """(GPU-hours, cost) of a stage (or a sweep's points) for a table: '0.250 (0.083 interrupted)', '2.50 USD'."""
    from sllm_lib.usage import StageUsage, format_gpu_hours, read_attempts, usage_folders

    def price(folder: Path) -> tuple[float | None, str] | None:
        try:  # the price travels in the request (the profile's at submission); a sweep's points have their own
            req = json.loads((folder / "request.json").read_text(encoding="utf-8"))
            return req.get("cost_per_gpu_hour"), req.get("currency") or "USD"
        except (OSError, ValueError):
            return None

    usages = []
    for folder in usage_folders(stage_dir):
        rate, currency = price(folder) or price(stage_dir) or (None, "USD")
        usages.append(StageUsage(read_attempts(folder), cost_per_gpu_hour=rate, currency=currency))
    if not any(u.attempts for u in usages):
        return "-", "-"
    gpu_hours = sum(u.gpu_hours for u in usages)
    lost = sum(u.interrupted_gpu_hours() for u in usages)
    hours = format_gpu_hours(gpu_hours) + (f" ({format_gpu_hours(lost)} interrupted)" if lost else "")
    costs = {(u.currency, u.cost) for u in usages if u.attempts}
    if any(cost is None for _, cost in costs) or len({c for c, _ in costs}) != 1:
        return hours, "-"  # a folder without a price (or two currencies): no honest single figure
    [currency] = {c for c, _ in costs}
    return hours, f"{sum(u.cost for u in usages if u.attempts):,.2f} {currency}"


def find_state_files(target: Path, *, missing_ok: bool = False) -> list[Path]:
    """state.json of a run folder, or of every run under an output folder."""
    if (target / "state.json").is_file():
        return [target / "state.json"]
    found = sorted(target.glob("*/*/state.json"))
    if not found and not missing_ok:
        raise SllmError(f"{target}: no pipeline runs found (looked for state.json); run `sllm submit SPEC` first")
    return found


def _sacct(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    if not job_ids or shutil.which("sacct") is None:
        return {}
    try:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State,Elapsed", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        log.warning("sacct did not answer in 10 s; showing the launcher's view only")
        return {}
    states: dict[str, tuple[str, str]] = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1].split()[0], parts[2])
    return states


def _local_state(job_id: str) -> str:
    pid = int(job_id.split("-", 1)[1])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "EXITED"
    except PermissionError:  # alive, owned by another user
        pass
    return "RUNNING"


def _log_tail(stage_dir: Path, n: int = 3, max_bytes: int = 65536) -> str:
    """The last `n` non-empty lines of the stage's stage.log (read from its end: logs grow large)."""
    log_file = stage_dir / "stage.log"
    try:
        with open(log_file, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def _starts(stage_dir: Path) -> int:
    attempts = stage_dir / "attempts.jsonl"
    return len(attempts.read_text(encoding="utf-8").splitlines()) if attempts.is_file() else 0


def _last_start(stage_dir: Path) -> float | None:
    """When the stage function last started: the newest line of attempts.jsonl (the worker writes one per start)."""
    attempts = stage_dir / "attempts.jsonl"
    if not attempts.is_file():
        return None
    for line in reversed(attempts.read_text(encoding="utf-8", errors="replace").splitlines()):
        try:
            return float(json.loads(line)["time"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def format_elapsed(seconds: float) -> str:
    """sacct's Elapsed format: [D-]HH:MM:SS."""
    days, rest = divmod(int(round(seconds)), 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    return (f"{days}-" if days else "") + f"{h:02d}:{m:02d}:{sec:02d}"


def _elapsed(stage_dir: Path, status: str, running: bool, now: float | None = None) -> str:
    """Elapsed time of the stage's latest start, from its files: the start is the last line of attempts.jsonl; the
    end is result.json's write (completed), the log's last write (failed, cancelled), or now (still running)."""
    start = _last_start(stage_dir)
    if start is None:
        return "-"
    if running:
        end: float | None = time.time() if now is None else now
    elif status == "COMPLETED":
        end = _mtime(stage_dir / "result.json") or _mtime(stage_dir / "stage.log")
    elif status in ("FAILED", "CANCELLED"):
        end = _mtime(stage_dir / "stage.log")
    else:  # submitted, not running (yet, or any more): nothing says how long it ran
        end = None
    if end is None or end < start:
        return "-"
    return format_elapsed(end - start)


def stage_statuses(state_file: Path) -> list[StageStatus]:
    """Every stage of one run folder with the scheduler's current view."""
    state = refresh(state_file)
    slurm_ids = [str(e.job_id) for e in state.stages.values() if str(e.job_id or "").isdigit()]
    sacct = _sacct(slurm_ids)
    out = []
    for name, e in state.stages.items():
        job_id = str(e.job_id or "-")
        sched, elapsed = sacct.get(job_id, ("-", "-"))
        if job_id.startswith(("local-", "ray-")) and not e.finished:
            sched = _local_state(job_id)
        failed = e.status == "FAILED" or sched in ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
        stage_dir = state_file.parent / "stages" / name
        if elapsed in ("-", ""):
            elapsed = _elapsed(stage_dir, e.status or "", running=not e.finished and sched == "RUNNING")
        tail = _log_tail(stage_dir)
        gpu_hours, cost = usage_cells(stage_dir)
        out.append(StageStatus(stage=name, status=e.status or "-", job_id=job_id, scheduler_state=sched,
                               elapsed=elapsed, run_id=e.run_id or "-", error=tail if failed else "",
                               starts=_starts(stage_dir), last_lines=tail, gpu_hours=gpu_hours, cost=cost))
    return out


_SCHED_FAILED = {"FAILED": "FAILED", "TIMEOUT": "FAILED", "OUT_OF_MEMORY": "FAILED", "NODE_FAIL": "FAILED",
                 "BOOT_FAIL": "FAILED", "DEADLINE": "FAILED", "CANCELLED": "CANCELLED"}


def refresh(state_file: Path) -> PipelineState:
    """Reconcile a run submitted with --detach: stage states from result.json / sacct; close finished runs."""
    from sllm_lib.stage import StageResult

    state = PipelineState.read(state_file)
    open_ids = [str(e.job_id) for e in state.stages.values() if not e.finished]
    if not open_ids:
        return state
    sacct = _sacct([i for i in open_ids if i.isdigit()])
    changed: list[tuple[str, str]] = []  # (run id, MLflow status)
    for name, e in state.stages.items():
        if e.finished:
            continue
        result_file = state_file.parent / "stages" / name / "result.json"
        sched = sacct.get(str(e.job_id), ("-", "-"))[0]
        if result_file.is_file() and sched not in ("RUNNING", "PENDING", "REQUEUED"):
            e.status, e.result = "COMPLETED", StageResult.from_json(result_file.read_text()).to_dict()
            changed.append((e.run_id, "FINISHED"))
        elif sched in _SCHED_FAILED:
            e.status = _SCHED_FAILED[sched]
            changed.append((e.run_id, "FAILED" if e.status == "FAILED" else "KILLED"))
    all_done = all(e.finished for e in state.stages.values())
    if changed or all_done:
        _close_runs(state, changed, all_done)
        state.save(state_file)
    return state


def _close_runs(state: PipelineState, changed: list[tuple[str, str]], all_done: bool) -> None:
    """Terminate the stage runs that ended, and the pipeline run once every stage has."""
    uri = state.tracking_uri
    if not uri:
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for run_id, status in changed:
        if client.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
            client.set_terminated(run_id, status=status)
    parent = state.parent_run_id
    if all_done and parent and client.get_run(parent).info.status == "RUNNING":
        ok = all(e.status == "COMPLETED" for e in state.stages.values())
        client.set_terminated(parent, status="FINISHED" if ok else "FAILED")


def cancel_run(state_file: Path, stages: list[str] | None = None) -> list[str]:
    """Cancel the unfinished stages of a run (scancel for SLURM jobs, SIGTERM for local ones)."""
    state = PipelineState.read(state_file)
    cancelled = []
    for name, e in state.stages.items():
        if stages and name not in stages or e.finished:
            continue
        job_id = str(e.job_id or "")
        if job_id.isdigit():
            subprocess.run(["scancel", job_id], capture_output=True, timeout=10)
        elif job_id.startswith(("local-", "ray-")):  # the stage process (a Ray driver: its job ends with it)
            try:
                os.kill(int(job_id.split("-", 1)[1]), signal.SIGTERM)
            except ProcessLookupError:
                pass
        else:
            continue
        e.status = "CANCELLED"
        cancelled.append(f"{name} ({job_id})")
    state.save(state_file)
    return cancelled
