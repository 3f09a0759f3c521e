"""The executor contract, one suite run against every executor: local (subprocesses), SLURM (a real single-node
cluster) and Ray (a real local head). Each must: run a stage and hand back its result; report a failed stage with
the stage, the job id and the cause from the tail of its log; cancel a running stage, publishing nothing; say
where a job is (state) while it runs and after it ends."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from launch.executor import JobState, LaunchRequest
from sllm_lib.errors import StageFailedError
from sllm_lib.spec import LocalProfile, RayProfile, SlurmProfile, dump_resolved_yaml, load_job_spec
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
                         stage_dir=str(tmp / "stages" / "text"), tracking_uri="", tracking_strict=False, run_id=None,
                         single_process=True)  # one process on every backend: the contract, not the ranks


@pytest.fixture(params=["local", "local_cold", pytest.param("slurm", marks=pytest.mark.slurm),
                        pytest.param("ray", marks=pytest.mark.ray)])
def executor(request: pytest.FixtureRequest):
    if request.param.startswith("local"):  # stages forked by the warm starter (the default), and fresh interpreters
        from launch.local import LocalExecutor

        executor = LocalExecutor(LocalProfile(kind="local", cpus=1, warm_start=request.param == "local"))
        yield executor
        executor.close()
        return
    if request.param == "slurm":
        from launch.slurm import SlurmExecutor

        request.getfixturevalue("slurm_cluster")
        yield SlurmExecutor(SlurmProfile(kind="slurm", name="t", partition="debug", nodes=1, cpus_per_task=1,
                                         mem_gb=2, timeout_min=10, python="submitting"))
        return
    from launch.ray_executor import RayExecutor

    head = request.getfixturevalue("ray_head")
    executor = RayExecutor(RayProfile(kind="ray", name="t", address=head.gcs_address, num_workers=1,
                                      resources_per_worker={"CPU": 1}))
    yield executor
    executor.close()  # the pipeline's driver (reuse_driver) ends with the executor


def _wait_state(job, wanted: set[JobState], timeout_s: float) -> JobState:
    """Poll job.state() until it is one of `wanted` (bounded; the failure says what was seen)."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while (state := job.state()) not in wanted:
        seen.append(state.value)
        assert time.monotonic() < deadline, (f"job {job.job_id} not in {sorted(s.value for s in wanted)} after "
                                             f"{timeout_s:.0f} s; states seen: {sorted(set(seen))}")
        time.sleep(0.5)
    return state


def _wait_log(req: LaunchRequest, needle: str, job, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while needle not in (req.log_file.read_text(encoding="utf-8") if req.log_file.exists() else ""):
        assert time.monotonic() < deadline, f"{needle!r} not in {req.log_file} after {timeout_s:.0f} s"
        assert job.state() in (JobState.PENDING, JobState.RUNNING), f"job {job.job_id} ended: {job.state()}"
        time.sleep(0.5)


def test_runs_a_stage_and_returns_its_result(tmp_path: Path, executor) -> None:
    req = _request(tmp_path, data_path=SAMPLE / "text_qa_train.jsonl", max_steps=2)
    job = executor.submit(req)
    assert job.job_id and job.state() in (JobState.PENDING, JobState.RUNNING, JobState.COMPLETED)
    result = job.result(timeout_s=300)
    assert result.stage == "text" and result.steps == 2
    assert Path(result.output_dir, "manifest.json").is_file()
    assert "stage=text step 2/2" in req.log_file.read_text(encoding="utf-8")
    assert _wait_state(job, {JobState.COMPLETED, JobState.FAILED}, 60) is JobState.COMPLETED


def test_a_failed_stage_names_stage_job_and_cause(tmp_path: Path, executor) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text('{"instruction": "질문", "output": "답"}\n', encoding="utf-8")
    req = _request(tmp_path, data_path=data, max_steps=2)
    data.unlink()  # gone between plan and run
    job = executor.submit(req)
    with pytest.raises(StageFailedError) as err:
        job.result(timeout_s=300)
    text = str(err.value)
    assert "stage 'text'" in text and job.job_id in text
    assert f"{data}: file not found" in text  # the cause, from the tail of stage.log
    assert "again" in text  # the next step: fix the cause, run / submit again
    if executor.name in ("local", "ray"):  # a process of this machine (a Ray stage's driver)
        assert "ended FAILED" in text and "run the same command again" in text
    assert _wait_state(job, {JobState.COMPLETED, JobState.FAILED}, 60) is JobState.FAILED
    assert not Path(req.stage_dir, "output").exists()


def test_cancel_stops_a_running_stage_and_publishes_nothing(tmp_path: Path, executor) -> None:
    req = _request(tmp_path, data_path=SAMPLE / "text_qa_train.jsonl", max_steps=100_000)
    job = executor.submit(req)
    _wait_log(req, "step 1/", job)
    assert job.state() is JobState.RUNNING
    job.cancel()
    if executor.name in ("local", "ray"):  # cancel() returns once the process is gone
        assert job.state() is JobState.CANCELLED
    assert _wait_state(job, {JobState.CANCELLED, JobState.COMPLETED, JobState.FAILED}, 60) is JobState.CANCELLED
    with pytest.raises(StageFailedError) as err:
        job.result(timeout_s=60)
    assert "stage 'text'" in str(err.value) and job.job_id in str(err.value)
    if executor.name in ("local", "ray"):
        assert "ended CANCELLED" in str(err.value)
    assert not Path(req.stage_dir, "output").exists()
