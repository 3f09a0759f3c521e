"""`sllm status` on a local run folder: elapsed time and last log lines from the stage's own files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from launch.state import PipelineState, StageEntry
from launch.status import format_elapsed, stage_statuses
from tests.conftest import run_sllm


def _stage(run_dir: Path, name: str, *, started: float | None, log: list[str], result_at: float | None = None,
           log_at: float | None = None) -> None:
    d = run_dir / "stages" / name
    d.mkdir(parents=True)
    if started is not None:  # what launch/worker.py writes per start (an earlier start first)
        lines = [{"time": started - 3600, "host": "h", "pid": 1}, {"time": started, "host": "h", "pid": 2}]
        (d / "attempts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if log:
        (d / "stage.log").write_text("\n".join(log) + "\n\n")
        if log_at is not None:
            os.utime(d / "stage.log", (log_at, log_at))
    if result_at is not None:
        (d / "result.json").write_text(json.dumps({"stage": name, "kind": "text_sft", "output_dir": None}))
        os.utime(d / "result.json", (result_at, result_at))


def _run_dir(tmp_path: Path) -> Path:
    now = time.time()
    run_dir = tmp_path / "runs" / "job" / "abc123"
    state = PipelineState(stages={
        "sft": StageEntry(status="COMPLETED", run_id="a" * 32, job_id="local-999999991", result={"stage": "sft"}),
        "merge": StageEntry(status="FAILED", run_id="b" * 32, job_id="local-999999992"),
        "eval": StageEntry(status="SUBMITTED", run_id="c" * 32, job_id=f"local-{os.getpid()}"),  # alive: running
        "later": StageEntry(status="SUBMITTED", run_id="d" * 32, job_id="local-999999993"),  # never started
    })
    run_dir.mkdir(parents=True)
    state.save(run_dir / "state.json")
    _stage(run_dir, "sft", started=now - 4000, result_at=now - 4000 + 3725, log_at=now - 200,
           log=["step 1 loss 2.0", "step 2 loss 1.5", "saved output", "stage sft done"])
    _stage(run_dir, "merge", started=now - 100, log_at=now - 100 + 42,
           log=["merging", "Traceback (most recent call last):", "RuntimeError: out of memory"])
    _stage(run_dir, "eval", started=now - 65, log=["eval: 3/10 samples"])
    # sft's accounting (sllm_lib/usage.py): a requeued attempt (30 min) and the one that completed (1 h), 2 GPUs,
    # on a profile priced at 2.5 EUR per GPU-hour
    usage = run_dir / "stages" / "sft" / "usage"
    usage.mkdir()
    for i, (start, stop, state) in enumerate([(now - 7200, now - 5400, "interrupted"),
                                              (now - 4000, now - 400, "completed")], 1):
        (usage / f"attempt-{i:03d}.json").write_text(json.dumps(
            {"index": i, "start": start, "last_seen": stop, "end": stop, "gpus": 2, "state": state}))
    (run_dir / "stages" / "sft" / "request.json").write_text(json.dumps({"cost_per_gpu_hour": 2.5, "currency": "EUR"}))
    return run_dir


def test_local_stages_show_elapsed_and_last_log_lines(tmp_path: Path) -> None:
    by_name = {s.stage: s for s in stage_statuses(_run_dir(tmp_path) / "state.json")}
    sft, merge, ev, later = by_name["sft"], by_name["merge"], by_name["eval"], by_name["later"]
    assert sft.elapsed == "01:02:05"  # latest start -> result.json, not the earlier start, not the log's mtime
    assert sft.last_lines == "step 2 loss 1.5\nsaved output\nstage sft done" and sft.error == ""
    assert merge.elapsed == "00:00:42"  # start -> the failure's last log line
    assert merge.error == merge.last_lines == "merging\nTraceback (most recent call last):\nRuntimeError: out of memory"
    h, m, sec = (int(x) for x in ev.elapsed.split(":"))  # started 65 s before the folder was written; still running
    assert ev.scheduler_state == "RUNNING" and 65 <= h * 3600 + m * 60 + sec <= 95
    assert ev.last_lines == "eval: 3/10 samples"
    assert later.elapsed == "-" and later.last_lines == "" and later.starts == 0
    assert sft.starts == 2
    assert sft.gpu_hours == "3.000 (1.000 interrupted)" and sft.cost == "7.50 EUR"  # (0.5 + 1) h x 2 GPUs
    assert merge.gpu_hours == merge.cost == "-"  # nothing recorded


def test_format_elapsed_like_sacct() -> None:
    assert format_elapsed(0) == "00:00:00" and format_elapsed(3725.4) == "01:02:05"
    assert format_elapsed(2 * 86400 + 61) == "2-00:01:01"


def test_status_command_prints_elapsed_and_log_lines(tmp_path: Path) -> None:
    res = run_sllm(["status", str(_run_dir(tmp_path))], tmp_path, env={**os.environ, "COLUMNS": "400"}, timeout=60)
    assert res.returncode == 0, res.stderr
    sft_row = next(ln for ln in res.stdout.splitlines() if " sft " in ln)
    assert "01:02:05" in sft_row and "stage sft done" in res.stdout and "RuntimeError: out of memory" in res.stdout
    assert "3.000 (1.000 interrupted)" in sft_row and "7.50 EUR" in sft_row


def _attempt(folder: Path, hours: float, gpus: int, *, price: float | None = None, currency: str = "USD") -> None:
    from sllm_lib.usage import USAGE_DIR

    (folder / USAGE_DIR).mkdir(parents=True, exist_ok=True)
    now = time.time()
    (folder / USAGE_DIR / "attempt-001.json").write_text(json.dumps(
        {"index": 1, "start": now - hours * 3600 / gpus, "last_seen": now, "end": now, "gpus": gpus,
         "state": "completed"}))
    if price is not None:
        (folder / "request.json").write_text(json.dumps({"cost_per_gpu_hour": price, "currency": currency}))


def test_a_swept_stage_costs_the_sum_of_its_points_at_their_own_price(tmp_path: Path) -> None:
    from launch.status import usage_cells

    stage = tmp_path / "stages" / "sweep"
    (stage / "points" / "0").mkdir(parents=True)
    (stage / "points" / "1").mkdir(parents=True)
    (stage / "checkpoints" / "checkpoint-5" / "usage").mkdir(parents=True)  # not a record: never searched
    _attempt(stage / "points" / "0", 1.0, 2, price=2.0, currency="EUR")
    _attempt(stage / "points" / "1", 0.5, 2, price=2.0, currency="EUR")
    assert usage_cells(stage) == ("1.500", "3.00 EUR")
    _attempt(stage / "points" / "1", 0.5, 2)
    (stage / "points" / "1" / "request.json").unlink()
    assert usage_cells(stage) == ("1.500", "-")  # a point without a price: no single honest figure
    assert usage_cells(tmp_path / "stages" / "none") == ("-", "-")
