"""sllm_lib/usage.py: attempts recorded by the stage process, GPU-hours and cost, interrupted attempts; lineage totals."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sllm_lib import usage as U
from sllm_lib.tracking.lineage import LineageNode, RunUsage, total_usage


def _write(stage_dir: Path, index: int, start: float, stop: float, gpus: int, state: str, *, ended: bool = True):
    folder = stage_dir / U.USAGE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    a = U.Attempt(index=index, start=start, last_seen=stop, gpus=gpus, end=stop if ended else None, state=state)
    (folder / f"attempt-{index:03d}.json").write_text(json.dumps(a.__dict__), encoding="utf-8")


def test_recorder_writes_a_heartbeat_and_the_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(U, "HEARTBEAT_S", 0.05)
    for var in ("SLURM_JOB_ID", "SLURM_GPUS_ON_NODE"):
        monkeypatch.delenv(var, raising=False)
    rec = U.AttemptRecorder(tmp_path, gpus=2)
    first = rec.start()
    assert first.index == 1 and first.gpus == 2 and first.end is None
    time.sleep(0.3)
    beat = json.loads(rec.path.read_text(encoding="utf-8"))
    assert beat["state"] == "running" and beat["last_seen"] > beat["start"]  # the heartbeat moved
    done = rec.finish("completed")
    assert done.state == "completed" and done.end >= beat["last_seen"]
    end = done.end
    again = rec.finish("failed")  # completed, but its result could not be written: the stage failed after all
    assert again.state == "failed" and again.end == end  # restated, the end time kept
    assert json.loads(rec.path.read_text(encoding="utf-8"))["state"] == "failed"
    second = U.AttemptRecorder(tmp_path, gpus=2).start()
    assert second.index == 2  # a re-run adds an attempt
    assert [a.index for a in U.read_attempts(tmp_path)] == [1, 2]


def test_gpus_come_from_the_slurm_allocation_when_it_has_them(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "4")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    assert U.allocated_gpus(1) == (8, 2)  # what the job is billed for, not what the spec asked
    monkeypatch.delenv("SLURM_GPUS_ON_NODE")
    assert U.allocated_gpus(3) == (3, 2)


def test_a_requeued_stage_counts_every_attempt_and_shows_the_interrupted_share(tmp_path: Path) -> None:
    now = time.time()
    _write(tmp_path, 1, now - 7200, now - 5400, 4, "interrupted")  # 0.5 h x 4 GPUs, requeued
    _write(tmp_path, 2, now - 3600, now, 4, "completed")  # 1 h x 4 GPUs
    usage = U.stage_usage(tmp_path, cost_per_gpu_hour=2.5, currency="EUR")
    assert usage.gpu_hours == pytest.approx(6.0) and usage.wall_s == pytest.approx(5400)
    assert usage.interrupted_gpu_hours() == pytest.approx(2.0)
    assert usage.cost == pytest.approx(15.0)
    m = usage.metrics()
    assert m["usage/attempts"] == 2 and m["cost/amount"] == pytest.approx(15.0) and m["usage/gpus"] == 4
    tags = usage.tags()
    assert tags["sllm.cost.currency"] == "EUR" and tags["sllm.cost.per_gpu_hour"] == "2.5"
    assert tags["sllm.usage.start"] < tags["sllm.usage.end"]
    assert U.stage_usage(tmp_path).cost is None and "cost/amount" not in U.stage_usage(tmp_path).metrics()


def test_a_killed_attempt_ends_at_its_last_heartbeat(tmp_path: Path) -> None:
    now = time.time()
    _write(tmp_path, 1, now - 1000, now - 400, 1, "running", ended=False)  # kill -9: no end written
    _write(tmp_path, 2, now - 300, now - 1, 1, "running", ended=False)  # still beating
    a, b = U.read_attempts(tmp_path)
    assert a.wall_s == pytest.approx(600) and a.effective_state(now) == "interrupted" and a.end == now - 400
    assert b.effective_state(now) == "running"
    assert b.effective_state(now + 4 * U.HEARTBEAT_S) == "interrupted"  # its heartbeat stopped: it is gone
    assert U.stage_usage(tmp_path).interrupted_gpu_hours(now) == pytest.approx(600 / 3600)


def test_unreadable_attempts_are_skipped_and_run_usage_sums_stages_and_points(tmp_path: Path) -> None:
    now = time.time()
    _write(tmp_path / "stages" / "a", 1, now - 3600, now, 2, "completed")
    _write(tmp_path / "stages" / "sweep" / "points" / "0", 1, now - 1800, now, 2, "completed")
    _write(tmp_path / "stages" / "sweep" / "points" / "1", 1, now - 1800, now, 2, "completed")
    (tmp_path / "stages" / "a" / U.USAGE_DIR / "attempt-002.json").write_text("{torn", encoding="utf-8")
    total = U.run_usage(tmp_path, cost_per_gpu_hour=1.0)
    assert len(total.attempts) == 3 and total.gpu_hours == pytest.approx(4.0) and total.cost == pytest.approx(4.0)


def _node(run_id: str, hours: float, cost: float | None, upstream=(), sweep=()) -> LineageNode:
    return LineageNode(run_id=run_id, stage=run_id, kind="text_sft", status="FINISHED", spec_hash="h",
                       upstream=list(upstream), usage=RunUsage(run_id, hours, hours * 3600, 0.0, cost,
                                                               "USD" if cost is not None else None),
                       sweep_points=list(sweep))


def test_lineage_total_counts_each_run_once_with_sweep_points() -> None:
    shared = _node("text", 2.0, 5.0)  # one stage two branches start from (a diamond)
    sweep = [RunUsage("p0", 1.0, 3600, 0.0, 2.5, "USD"), RunUsage("p1", 1.0, 3600, 0.0, 2.5, "USD")]
    asr = _node("asr", 1.0, 2.5, upstream=[shared], sweep=sweep)
    qa = _node("qa", 0.5, None, upstream=[shared])  # a profile without a price
    total = total_usage(_node("merge", 0.0, 0.0, upstream=[asr, qa]))
    assert total.runs == 6 and total.gpu_hours == pytest.approx(5.5)
    assert total.cost == {"USD": pytest.approx(12.5)} and total.unpriced == 1
    assert total.cost_text() == "12.50 USD (+1 unpriced run)"


def test_lineage_tree_shows_each_stage_and_the_total() -> None:
    from rich.console import Console

    from sllm_lib.tracking.lineage import ModelLineage, lineage_tree

    sweep = [RunUsage("p0", 1.0, 3600, 0.0, 2.5, "USD")]
    text = _node("text", 2.0, 5.0, sweep=sweep)
    lin = ModelLineage(name="m", version="3", alias="champion", source="models:/m-1", pipeline_run_id="pp",
                       root=_node("merge", 0.01, 0.03, upstream=[text]))
    console = Console(width=200, record=True)
    console.print(lineage_tree(lin))
    out = console.export_text()
    assert "used 3.010 GPU-hours over 3 stage runs, cost 7.53 USD" in out
    assert "text (text_sft) run text FINISHED  2.000 GPU-h, 5.00 USD (+1 other sweep point: 1.000 GPU-h)" in out
