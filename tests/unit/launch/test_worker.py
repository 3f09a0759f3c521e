"""launch/worker.py: a stage's attempt is accounted whatever fails, and only a written result counts as completed."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml

import launch.worker as W
from launch.executor import LaunchRequest
from sllm_lib.stage import StageResult
from sllm_lib.usage import USAGE_DIR, USAGE_FILE


def _request(tmp_path: Path) -> LaunchRequest:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "w", "model": {"base": "tiny:voxtral"}, "output_dir": str(tmp_path / "runs"),
        "stages": [{"name": "text", "kind": "text_sft",
                    "data": {"train": [{"kind": "text_qa", "path": "data/sample/text_qa_train.jsonl"}]},
                    "train": {"max_steps": 1}, "lora": {"r": 4}, "trainable": ["lora"]}]}),
        encoding="utf-8")
    stage_dir = tmp_path / "runs" / "stages" / "text"
    stage_dir.mkdir(parents=True)
    return LaunchRequest(job_name="w", stage="text", spec_path=str(spec), spec_hash="h", run_dir=str(stage_dir.parent),
                         stage_dir=str(stage_dir), tracking_uri="", tracking_strict=False, run_id=None, gpus=1)


def _attempts(req: LaunchRequest) -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8"))
            for p in sorted((Path(req.stage_dir) / USAGE_DIR).glob("attempt-*.json"))]


def _no_heartbeat() -> bool:
    return not any(t.name == "sllm-usage-heartbeat" and t.is_alive() for t in threading.enumerate())


def test_a_failure_before_the_stage_function_still_ends_its_attempt(tmp_path: Path, monkeypatch) -> None:
    def down(job, stage):
        raise RuntimeError("feature cache unreachable")

    monkeypatch.setattr(W, "_activate_cache", down)
    req = _request(tmp_path)
    with pytest.raises(RuntimeError, match="unreachable"):
        W.run_request(req)
    [attempt] = _attempts(req)
    assert attempt["state"] == "failed" and attempt["end"] is not None
    assert _no_heartbeat()  # the recorder's thread does not outlive the stage
    assert json.loads((Path(req.stage_dir) / USAGE_FILE).read_text(encoding="utf-8"))["attempts"]


def test_a_result_that_cannot_be_written_leaves_a_failed_attempt(tmp_path: Path, monkeypatch) -> None:
    from launch import stages

    monkeypatch.setitem(stages.STAGE_FUNCTIONS, "text_sft", lambda stage, ctx: StageResult(stage.name, stage.kind, None))

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(W, "write_json_atomic", full)
    req = _request(tmp_path)
    with pytest.raises(OSError, match="No space"):
        W.run_request(req)
    [attempt] = _attempts(req)
    assert attempt["state"] == "failed"  # not "completed": the launcher never saw a result
    assert not req.result_file.exists() and _no_heartbeat()
