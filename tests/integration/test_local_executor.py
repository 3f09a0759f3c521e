"""LocalExecutor contract: submit, state, result, cancel, and the failed-stage error text (real subprocesses)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from launch.executor import JobState, LaunchRequest
from launch.local import LocalExecutor
from sllm_lib.errors import StageFailedError
from sllm_lib.spec import LocalProfile, dump_resolved_yaml, load_job_spec
from tests.conftest import SAMPLE


def _request(tmp: Path, *, data_path: Path, max_steps: int) -> LaunchRequest:
    spec = {"name": "ex", "model": {"base": "tiny:voxtral"}, "output_dir": str(tmp / "runs"), "stages": [{
        "name": "text", "kind": "text_sft",
        "data": {"train": [{"kind": "text_qa", "path": str(data_path)}]},
        "train": {"per_device_bsz": 2, "max_steps": max_steps, "precision": "fp32", "save_steps": 1000,
                  "logging_steps": 1, "max_seq_len": 64},
        "lora": {"r": 2, "alpha": 4}, "trainable": ["lora"]}]}
    src = tmp / "job.yaml"
    src.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    resolved = tmp / "spec.resolved.yaml"
    resolved.write_text(dump_resolved_yaml(load_job_spec(src)), encoding="utf-8")
    return LaunchRequest(job_name="ex", stage="text", spec_path=str(resolved), spec_hash="h", run_dir=str(tmp),
                         stage_dir=str(tmp / "stages" / "text"), tracking_uri="", tracking_strict=False, run_id=None)


@pytest.fixture
def executor() -> LocalExecutor:
    return LocalExecutor(LocalProfile(kind="local", cpus=1))


def test_submit_state_result(tmp_path: Path, executor: LocalExecutor) -> None:
    req = _request(tmp_path, data_path=SAMPLE / "text_qa_train.jsonl", max_steps=2)
    job = executor.submit(req)
    assert job.job_id.startswith("local-")
    result = job.result(timeout_s=300)
    assert job.state() is JobState.COMPLETED
    assert result.stage == "text" and result.steps == 2
    assert Path(result.output_dir, "manifest.json").is_file()
    assert "stage=text step 2/2" in req.log_file.read_text(encoding="utf-8")


def test_failed_stage_error_names_stage_job_and_log_tail(tmp_path: Path, executor: LocalExecutor) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text('{"instruction": "질문", "output": "답"}\n', encoding="utf-8")
    req = _request(tmp_path, data_path=data, max_steps=2)
    data.unlink()  # gone between plan and run
    job = executor.submit(req)
    with pytest.raises(StageFailedError) as err:
        job.result(timeout_s=300)
    text = str(err.value)
    assert job.state() is JobState.FAILED
    assert "stage 'text'" in text and job.job_id in text and "ended FAILED" in text
    assert f"{data}: file not found" in text  # the cause, from the tail of stage.log
    assert "run the same command again" in text
    assert not Path(req.stage_dir, "output").exists()


def test_cancel_stops_the_stage_and_publishes_nothing(tmp_path: Path, executor: LocalExecutor) -> None:
    req = _request(tmp_path, data_path=SAMPLE / "text_qa_train.jsonl", max_steps=100_000)
    job = executor.submit(req)
    deadline = time.monotonic() + 120
    while "step 1/" not in (req.log_file.read_text(encoding="utf-8") if req.log_file.exists() else ""):
        assert time.monotonic() < deadline, f"stage did not start within 120 s; log: {req.log_file}"
        assert job.state() is JobState.RUNNING
        time.sleep(0.5)
    job.cancel()
    assert job.state() is JobState.CANCELLED
    with pytest.raises(StageFailedError, match="ended CANCELLED"):
        job.result(timeout_s=10)
    assert not Path(req.stage_dir, "output").exists()
