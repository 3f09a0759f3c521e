"""eval/watch.py without models: the ledger, claims, the early-stop rule, the watcher's bounds and its rotation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from eval.watch import STOP_FILE, Ledger, Watcher, complete_checkpoints, should_stop, watch_problems
from launch.executor import JobState, LaunchRequest
from sllm_lib.spec import EarlyStopSpec, WatchSpec
from sllm_lib.training.runner import rotate_scored_checkpoints


def _checkpoint(stage_dir: Path, step: int, complete: bool = True) -> Path:
    p = stage_dir / "checkpoints" / f"checkpoint-{step}"
    p.mkdir(parents=True)
    if complete:
        (p / "sllm_complete.json").write_text("{}")
    return p


def test_only_complete_checkpoints_count(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 12, complete=False)  # being written
    (tmp_path / "checkpoints" / "notes").mkdir()
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [2, 10]


def test_a_claim_is_exclusive_and_a_record_releases_it(tmp_path: Path) -> None:
    a, b = Ledger(tmp_path), Ledger(tmp_path)
    assert a.claim(4) and not b.claim(4)
    a.record(4, {"step": 4, "metrics": {"qa/cer": 0.5}})
    assert not a.claimed(4) and b.scored(4) and b.results() == {4: {"step": 4, "metrics": {"qa/cer": 0.5}}}


def _results(values: list[float], metric: str = "qa/cer") -> dict[int, dict]:
    return {(i + 1) * 10: {"metrics": {metric: v}} for i, v in enumerate(values)}


@pytest.mark.parametrize("values,patience,min_delta,stops", [
    ([0.5, 0.4, 0.3], 1, 0.0, False),  # CER keeps falling
    ([0.5, 0.4, 0.45], 1, 0.0, True),  # one checkpoint not better than 0.4
    ([0.5, 0.4, 0.45, 0.41], 3, 0.0, False),  # two in a row: patience 3 not reached
    ([0.5, 0.4, 0.45, 0.41, 0.42], 3, 0.0, True),
    ([0.5, 0.49, 0.48], 2, 0.05, True),  # improvements smaller than min_delta are none
])
def test_early_stop_rule(values, patience, min_delta, stops) -> None:
    rule = EarlyStopSpec(metric="qa/cer", patience=patience, min_delta=min_delta)
    reason = should_stop(_results(values), rule)
    assert (reason is not None) == stops, reason
    if stops:
        assert reason.startswith("qa/cer not better than") and f"(patience {patience})" in reason


def test_early_stop_knows_the_direction_of_higher_is_better_metrics() -> None:
    rule = EarlyStopSpec(metric="qa/rougeL", patience=1)
    assert should_stop(_results([0.2, 0.3], "qa/rougeL"), rule) is None
    assert "not better than 0.3 (step 20)" in should_stop(_results([0.2, 0.3, 0.25], "qa/rougeL"), rule)


def test_rotation_of_a_watched_stage_waits_for_the_score(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8):
        _checkpoint(tmp_path, step)
    (tmp_path / "watch").mkdir()
    (tmp_path / "watch" / "step-2.json").write_text("{}")  # scored; 4 is not yet
    deleted = rotate_scored_checkpoints(tmp_path / "checkpoints", keep=2)
    assert [p.name for p in deleted] == ["checkpoint-2"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6",
                                                                           "checkpoint-8"]


class _FakeJob:
    def __init__(self, req: LaunchRequest, ledger_score: float) -> None:
        self.req, self.job_id = req, f"fake-{req.overrides['step']}"
        o = req.overrides
        Ledger(Path(o["stage_dir"])).record(o["step"], {"metrics": {"qa/cer": ledger_score}})

    def state(self) -> JobState:
        return JobState.COMPLETED

    def result(self, timeout_s: float | None = None):
        return SimpleNamespace()


class _FakeExecutor:
    def __init__(self, scores: dict[int, float]) -> None:
        self.scores, self.submitted = scores, []

    def submit(self, req: LaunchRequest) -> _FakeJob:
        self.submitted.append(req)
        return _FakeJob(req, self.scores[req.overrides["step"]])


def _request(stage_dir: Path) -> LaunchRequest:
    return LaunchRequest(job_name="j", stage="text", spec_path="spec.yaml", spec_hash="h", run_dir=str(stage_dir.parent),
                         stage_dir=str(stage_dir), tracking_uri="", tracking_strict=False, run_id=None, gpus=8,
                         chain=["/up/output"])


def test_watcher_submits_one_job_per_checkpoint_and_requests_the_early_stop(tmp_path: Path) -> None:
    stage_dir = tmp_path / "stages" / "text"
    for step in (5, 10, 15):
        _checkpoint(stage_dir, step)
    executor = _FakeExecutor({5: 0.5, 10: 0.4, 15: 0.45, 20: 0.6})
    w = Watcher(request=_request(stage_dir), watch=WatchSpec(suite="s", max_concurrent=2, poll_s=0.01,
                                                             early_stop=EarlyStopSpec(metric="qa/cer", patience=1)),
                executor=executor)
    w.poll()
    assert [r.overrides["step"] for r in executor.submitted] == [5, 10]  # at most max_concurrent at once
    req = executor.submitted[0]
    assert req.task == "checkpoint_eval" and req.single_process and req.gpus == 1 and req.chain == ["/up/output"]
    assert req.stage_dir == str(stage_dir / "watch" / "step-5")
    w.poll()
    assert [r.overrides["step"] for r in executor.submitted] == [5, 10, 15]
    stop = json.loads((stage_dir / STOP_FILE).read_text())
    assert "qa/cer not better than 0.4 (step 10)" in stop["reason"] and w.stop_reason == stop["reason"]
    _checkpoint(stage_dir, 20)
    w.drain(timeout_s=5)
    assert [r.overrides["step"] for r in executor.submitted] == [5, 10, 15, 20]  # the one after the stop request
    w.drain(timeout_s=5)
    assert len(executor.submitted) == 4  # each once


def test_a_live_claim_of_another_watcher_is_left_alone(tmp_path: Path) -> None:
    stage_dir = tmp_path / "stages" / "text"
    _checkpoint(stage_dir, 5)
    (stage_dir / "watch").mkdir(parents=True)
    import os

    (stage_dir / "watch" / "step-5.claim").write_text(json.dumps(
        {"host": os.uname().nodename, "pid": os.getppid(), "time": time.time()}))  # a live process
    executor = _FakeExecutor({5: 0.5})
    Watcher(request=_request(stage_dir), watch=WatchSpec(suite="s"), executor=executor).poll()
    assert executor.submitted == []


def test_watch_block_problems_name_the_field(tmp_path: Path) -> None:
    assert watch_problems(WatchSpec(suite="medical_speech")) == []
    bad = watch_problems(WatchSpec(suite="medical_speech", early_stop=EarlyStopSpec(metric="asr/bleu")))
    assert bad and bad[0].startswith("watch.early_stop.metric: 'asr/bleu' is no metric of suite medical_speech")
    assert watch_problems(WatchSpec(suite="no_such_suite"))[0].startswith("watch.suite: suite 'no_such_suite'")


def test_the_watcher_logs_each_score_once_and_a_restarted_one_logs_what_was_missed(tmp_path: Path) -> None:
    from dataclasses import replace

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("w")).info.run_id
    stage_dir = tmp_path / "stages" / "text"
    for step in (5, 10):
        _checkpoint(stage_dir, step)
    request = replace(_request(stage_dir), tracking_uri=uri, run_id=run_id)
    watch = WatchSpec(suite="s", max_concurrent=2, poll_s=0.01)
    Watcher(request=request, watch=watch, executor=_FakeExecutor({5: 0.5, 10: 0.4, 15: 0.3})).drain(timeout_s=5)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "watch/qa/cer")] == [(5, 0.5), (10, 0.4)]
    assert all(r["logged"] for r in Ledger(stage_dir).results().values())
    # a job that ended while no watcher ran: scored, not logged; the next watcher logs it, and only it
    _checkpoint(stage_dir, 15)
    Ledger(stage_dir).record(15, {"metrics": {"qa/cer": 0.3}, "time": time.time()})
    Watcher(request=request, watch=watch, executor=_FakeExecutor({})).drain(timeout_s=5)
    history = client.get_metric_history(run_id, "watch/qa/cer")
    assert sorted((m.step, m.value) for m in history) == [(5, 0.5), (10, 0.4), (15, 0.3)]


def test_beside_training_on_this_machine_an_evaluation_is_a_one_thread_background_job(tmp_path: Path) -> None:
    stage_dir = tmp_path / "stages" / "text"
    _checkpoint(stage_dir, 5)

    class _Local(_FakeExecutor):
        name = "local"

    for executor, concurrent, background in ((_Local({5: 0.5}), True, True), (_FakeExecutor({5: 0.5}), True, False),
                                             (_Local({5: 0.5}), False, False)):
        Ledger(stage_dir).result_path(5).unlink(missing_ok=True)
        Watcher(request=_request(stage_dir), watch=WatchSpec(suite="s"), executor=executor,
                concurrent=concurrent).poll()
        [req] = executor.submitted
        assert req.background is background  # on SLURM or Ray it has an allocation of its own
        assert (req.env.get("OMP_NUM_THREADS") == "1") is background
