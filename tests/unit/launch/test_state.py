"""The pipeline state file: typed, and the layout `sllm status`, re-runs and users' scripts read kept exactly."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from launch.state import STATE_FILE, PipelineState, StageEntry

OLD_LAYOUT = {
    "stages": {
        "text": {"status": "COMPLETED", "job_id": "local-12", "run_id": "a" * 32,
                 "result": {"stage": "text", "kind": "text_sft", "output_dir": "/r/stages/text/output", "steps": 4}},
        "sweep": {"status": "COMPLETED", "run_id": "b" * 32, "result": {"stage": "sweep"},
                  "points": [{"point": {"train.lr": 0.1}, "run_id": "c" * 32, "status": "COMPLETED", "job_id": "7_0",
                              "result": {"metrics": {"eval/loss": 1.0}}},
                             {"point": {"train.lr": 0.2}, "run_id": "d" * 32, "status": "FAILED", "job_id": "7_1"}]},
        "merge": {"status": "SUBMITTED", "job_id": "8", "run_id": "e" * 32, "future_key": [1, 2]},
    },
    "tracking_uri": "sqlite:///runs/mlflow.db",
    "parent_run_id": "f" * 32,
    "written_by": "a later sllm",
}


def test_round_trip_keeps_the_layout_and_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    path.write_text(json.dumps(OLD_LAYOUT), encoding="utf-8")
    state = PipelineState.read(path)
    assert state.stages["text"].result["steps"] == 4 and state.stages["merge"].job_id == "8"
    assert [p.status for p in state.stages["sweep"].points] == ["COMPLETED", "FAILED"]
    assert state.stages["sweep"].points[0].point == {"train.lr": 0.1}
    assert state.stages["text"].finished and not state.stages["merge"].finished
    state.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == OLD_LAYOUT  # nothing added, lost or renamed


def test_unset_fields_are_left_out_and_entries_made_on_first_use(tmp_path: Path) -> None:
    state = PipelineState()
    entry = state.entry("text")
    assert state.entry("text") is entry
    entry.status, entry.job_id = "SUBMITTED", "local-1"
    state.tracking_uri = "sqlite:///x.db"
    assert state.to_dict() == {"stages": {"text": {"status": "SUBMITTED", "job_id": "local-1"}},
                               "tracking_uri": "sqlite:///x.db"}
    assert StageEntry().to_dict() == {}


def test_missing_or_unreadable_state_starts_fresh(tmp_path: Path, caplog) -> None:
    assert PipelineState.load(tmp_path).stages == {}
    (tmp_path / STATE_FILE).write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="launch.state"):
        assert PipelineState.load(tmp_path).stages == {}
    assert "unreadable" in caplog.text
    (tmp_path / STATE_FILE).write_text("[1, 2]", encoding="utf-8")
    assert PipelineState.load(tmp_path).stages == {}
