"""The tracking helper process: the stage never loads MLflow or waits on it, and nothing is lost or reordered
(against MLflow on a sqlite file in the test's folder; a dead port for the outage)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sllm_lib.tracking.journal import JOURNAL, Journal
from sllm_lib.tracking.sidecar import SidecarError, SidecarTracker
from sllm_lib.tracking.tracker import DatasetRecord

REPO = Path(__file__).resolve().parents[3]


def _run(tmp: Path) -> tuple[str, str]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    return uri, client.create_run(client.create_experiment("sidecar")).info.run_id


def _steps(uri: str, run_id: str, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_stage_process_never_loads_mlflow_and_everything_lands_in_order(tmp_path: Path) -> None:
    uri, run_id = _run(tmp_path)
    script = f"""
import json, sys, time
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from sllm_lib.secrets import register_values
from sllm_lib.tracking.sidecar import SidecarTracker
from sllm_lib.tracking.tracker import DatasetRecord
register_values(["hunter2-secret-value"])
t0 = time.perf_counter()
t = SidecarTracker({uri!r}, {run_id!r}, journal_path=Path({str(tmp_path / JOURNAL)!r}))
t.set_status("RUNNING")
t.log_params({{"lr": 0.01, "data": {{"path": "/d/x.jsonl"}}, "token": "hunter2-secret-value"}})
t.log_datasets([DatasetRecord("train", "abc123", "/d/x.jsonl", 4, "train")])
for step in range(1, 21):
    t.log_metrics({{"train/loss": 1.0 / step}}, step=step)
t.set_tags({{"sllm.stage": "text"}})
waited = time.perf_counter() - t0
loaded_before = "mlflow" in sys.modules
last = t.last_step("train/loss")  # runs after every call sent before it
t.set_status("FINISHED")
stats = t.flush()
print(json.dumps({{"waited": waited, "mlflow": loaded_before or "mlflow" in sys.modules, "last": last,
                  "journaled": stats.pending, "exit": t._proc.returncode}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["mlflow"] is False  # the stage process never imported it: the helper did the tracking
    assert got["waited"] < 1.0, got  # 24 calls, none waited for MLflow to load (it takes seconds)
    assert got["last"] == 20 and got["journaled"] == 0 and got["exit"] == 0

    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time
    assert run.data.params["lr"] == "0.01" and run.data.params["data.path"] == "/d/x.jsonl"
    assert run.data.params["token"] == "***"  # the stage's secrets reached the helper (over the pipe)
    assert run.data.tags["sllm.stage"] == "text"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["train"]
    assert _steps(uri, run_id, "train/loss") == list(range(1, 21))


def test_killed_helper_loses_nothing_and_the_stage_takes_over(tmp_path: Path) -> None:
    uri, run_id = _run(tmp_path)
    t = SidecarTracker(uri, run_id, journal_path=tmp_path / JOURNAL)
    for step in range(1, 4):
        t.log_metrics({"loss": float(step)}, step=step)
    assert t.last_step("loss") == 3
    os.kill(t._proc.pid, signal.SIGSTOP)
    for step in range(4, 8):  # sent, never acknowledged: the helper dies before reading them
        t.log_metrics({"loss": float(step)}, step=step)
    os.kill(t._proc.pid, signal.SIGKILL)
    t._proc.wait(timeout=10)
    for step in range(8, 11):
        t.log_metrics({"loss": float(step)}, step=step)
    assert t.last_step("loss") == 10
    t.set_status("FINISHED")
    t.flush()
    assert _steps(uri, run_id, "loss") == list(range(1, 11))  # each step once: re-sent rows are the same rows
    from mlflow.tracking import MlflowClient

    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


def test_a_failed_call_the_stage_waits_for_raises_there_and_the_helper_goes_on(tmp_path: Path) -> None:
    uri, run_id = _run(tmp_path)
    t = SidecarTracker(uri, run_id, journal_path=tmp_path / JOURNAL)
    with pytest.raises(SidecarError, match="log_artifact failed: .*(No such file|not found|does not exist)"):
        t.log_artifact(tmp_path / "missing.txt")
    (tmp_path / "report.md").write_text("# ok\n", encoding="utf-8")
    t.log_artifact(tmp_path / "report.md", "stage")
    t.log_metrics({"loss": 1.0}, step=1)
    t.flush()
    assert t._proc.returncode == 0
    from mlflow.tracking import MlflowClient

    assert [a.path for a in MlflowClient(uri).list_artifacts(run_id, "stage")] == ["stage/report.md"]
    assert _steps(uri, run_id, "loss") == [1]


def test_server_down_the_stage_never_waits_and_the_journal_keeps_every_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    t = SidecarTracker(f"http://127.0.0.1:{port}", "run1", journal_path=tmp_path / JOURNAL, call_timeout_s=1.0)
    slowest = 0.0
    for step in range(1, 11):
        t0 = time.perf_counter()
        t.log_metrics({"loss": float(step)}, step=step)
        slowest = max(slowest, time.perf_counter() - t0)
    t.set_status("FAILED")
    stats = t.flush()
    assert slowest < 0.1  # the training loop never waited on the dead server
    entries = Journal(tmp_path / JOURNAL).entries()
    steps = [row[3] for e in entries if e["op"] == "log_batch" for row in e["payload"]["metrics"]]
    assert steps == list(range(1, 11))  # every step kept, in order, for `sllm tracking sync`
    assert [e["payload"]["status"] for e in entries if e["op"] == "set_status"] == ["FAILED"]
    assert stats.pending == len(entries)
    said = [r.getMessage() for r in caplog.records]  # the helper's warnings reach the stage's own log
    assert any("journaled to" in m for m in said) and any("longest wait on the server" in m for m in said), said


def test_log_datasets_crosses_as_records(tmp_path: Path) -> None:
    uri, run_id = _run(tmp_path)
    t = SidecarTracker(uri, run_id, journal_path=tmp_path / JOURNAL)
    t.log_datasets([DatasetRecord("val", "d1", "/v.jsonl", 2, "val"), DatasetRecord("train", "d2", "/t.jsonl", 9,
                                                                                   "train")])
    t.flush()
    from mlflow.tracking import MlflowClient

    inputs = MlflowClient(uri).get_run(run_id).inputs.dataset_inputs
    assert sorted((i.dataset.name, json.loads(i.dataset.profile)["num_rows"]) for i in inputs) == [("train", 9),
                                                                                                  ("val", 2)]
