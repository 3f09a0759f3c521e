"""The Ray executor on a real local Ray head (127.0.0.1, 2 CPUs): worker-failure recovery, placement and
reachability errors, and a whole plan sent through the Ray Jobs API with status / logs / cancel."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launch.executor import LaunchRequest
from launch.pipeline import build_plan, submit_pipeline
from launch.ray_executor import RayExecutor
from sllm_lib.errors import JobSpecError, StageFailedError, SubmissionError
from sllm_lib.spec import RayProfile, dump_resolved_yaml, load_cluster_profile, load_job_spec
from tests.conftest import SAMPLE, run_sllm

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]


def _spec(tmp: Path, name: str, *, max_steps: int = 8, save_steps: int = 2) -> Path:
    spec = {"name": name, "model": {"base": "tiny:voxtral"}, "output_dir": str(tmp / "runs"),
            "tracking": {"experiment": "ray-tests"},
            "stages": [{
                "name": "text", "kind": "text_sft",
                "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl")}]},
                "train": {"per_device_bsz": 4, "max_steps": max_steps, "precision": "fp32", "save_steps": save_steps,
                          "logging_steps": 1, "max_seq_len": 128, "lr": 5.0e-3, "seed": 3},
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "trainable": ["lora"]}]}
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return path


def _profile(tmp: Path, address: str, **kw) -> Path:
    data = {"kind": "ray", "name": "ray-test", "address": address, "num_workers": 2,
            "resources_per_worker": {"CPU": 1}, **kw}
    path = tmp / f"ray-{abs(hash(json.dumps(data, sort_keys=True))) % 10**8}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _run(spec_path: Path, profile_path: Path):
    spec = load_job_spec(spec_path)
    return submit_pipeline(build_plan(spec, spec_path, load_cluster_profile(profile_path)))


def _trained_tensors(outcome, stage: str = "text") -> dict:
    from safetensors.torch import load_file

    out = Path(outcome.results[stage].output_dir)
    return {str(f.relative_to(out)): load_file(str(f)) for f in sorted(out.rglob("*.safetensors"))}


# ------------------------------------------------------------------------------------------ recovery


def test_worker_failure_resumes_from_checkpoint_with_equal_result(ray_head, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    profile = _profile(tmp_path, ray_head.gcs_address, max_failures=1)
    clean = _run(_spec(tmp_path / "clean", "ray-clean"), profile)

    monkeypatch.setenv("SLLM_INJECT_FAULT", "step=5,rank=1")  # rank 1 raises after step 5; checkpoint-4 exists
    faulty = _run(_spec(tmp_path / "faulty", "ray-faulty"), profile)

    stage_dir = faulty.plan.stage_dir("text")
    assert len(list((stage_dir / "faults").iterdir())) == 1  # the fault did fire, once
    attempts = (stage_dir / "attempts.jsonl").read_text().splitlines()
    assert len(attempts) == 2  # the worker group was started again
    assert "resuming from" in (log := (stage_dir / "stage.log").read_text()) and "checkpoint-4" in log

    a, b = clean.results["text"], faulty.results["text"]
    assert a.steps == b.steps == 8
    assert b.loss_last == pytest.approx(a.loss_last, rel=1e-6)
    assert b.loss_first == pytest.approx(a.loss_first, rel=1e-6)  # the whole stage's, not the restart's (issue 22)
    assert b.metrics["train_loss"] == pytest.approx(a.metrics["train_loss"], rel=1e-5)
    ta, tb = _trained_tensors(clean), _trained_tensors(faulty)
    assert ta.keys() == tb.keys() and ta
    for fname in ta:
        for key, tensor in ta[fname].items():
            assert tensor.shape == tb[fname][key].shape
            assert (tensor - tb[fname][key]).abs().max().item() < 1e-5, key

    # one MLflow run for the stage across the restart, every step's loss exactly once
    client = mlflow.MlflowClient(faulty.tracking_uri)
    run_id = faulty.run_ids["text"]
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 9))
    assert client.get_run(run_id).info.status == "FINISHED"
    exp = client.get_experiment_by_name("ray-tests")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`sllm.job` = 'ray-faulty'")
    assert len(runs) == 2  # the pipeline run and the one stage run: never one run per worker or per attempt
    # Ray Train kept the reported checkpoints in its storage (<run dir>/ray)
    assert list((faulty.plan.run_dir / "ray").glob("*/checkpoint_*/checkpoint/sllm_complete.json"))


# ------------------------------------------------------------------------------------------ refusals


def test_more_workers_than_the_cluster_can_place_is_refused_before_anything(ray_head, tmp_path: Path) -> None:
    profile = _profile(tmp_path, ray_head.gcs_address, num_workers=3)
    spec = _spec(tmp_path, "ray-too-many")
    t0 = time.monotonic()
    with pytest.raises(JobSpecError) as err:
        _run(spec, profile)
    assert time.monotonic() - t0 < 30
    text = str(err.value)
    assert "ray-test" in text and "3 workers" in text and "CPU: 2" in text and "Nothing was submitted" in text
    assert not (tmp_path / "runs").exists()


def test_unreachable_head_is_a_clear_error_within_10s(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(SubmissionError) as err:
        _run(_spec(tmp_path, "ray-unreachable"), _profile(tmp_path, f"127.0.0.1:{port}"))
    assert time.monotonic() - t0 < 10
    assert f"127.0.0.1:{port} is not reachable" in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_unplaceable_workers_fail_after_the_placement_bound(ray_head, tmp_path: Path) -> None:
    """Past the pre-flight (e.g. an autoscaling cluster that never grows): a bounded wait, then a clear failure."""
    spec_path = _spec(tmp_path, "ray-unplaceable", max_steps=2)
    resolved = tmp_path / "spec.resolved.yaml"
    resolved.write_text(dump_resolved_yaml(load_job_spec(spec_path)), encoding="utf-8")
    req = LaunchRequest(job_name="ray-unplaceable", stage="text", spec_path=str(resolved), spec_hash="0" * 16,
                        run_dir=str(tmp_path), stage_dir=str(tmp_path / "stages" / "text"), tracking_uri="",
                        tracking_strict=False, run_id=None)
    profile = RayProfile(kind="ray", name="ray-test", address=ray_head.gcs_address, num_workers=1,
                         resources_per_worker={"CPU": 1, "accelerator_that_never_comes": 1}, placement_timeout_s=5)
    t0 = time.monotonic()
    job = RayExecutor(profile).submit(req)
    with pytest.raises(StageFailedError) as err:
        job.result(timeout_s=120)
    assert time.monotonic() - t0 < 90
    assert "WorkerGroupStartupTimeout" in str(err.value) and "placement_timeout_s=5 s" in str(err.value)


# ------------------------------------------------------------------------------------------ Ray Jobs API


def _sllm(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return run_sllm(args, timeout=timeout)


def test_plan_sent_through_the_jobs_api_then_status_logs_cancel(ray_head, tmp_path: Path) -> None:
    profile = _profile(tmp_path, ray_head.dashboard_url, entrypoint_python=sys.executable)
    spec = _spec(tmp_path, "ray-jobs", max_steps=2, save_steps=100)
    proc = _sllm(["submit", str(spec), "--cluster", str(profile)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Ray job sllm-ray-jobs-" in proc.stdout
    assert "stage=text step 2/2" in proc.stdout  # the job's log, streamed back
    (run_dir,) = list((tmp_path / "runs" / "ray-jobs").iterdir())
    record = json.loads((run_dir / "ray_job.json").read_text())
    assert record["address"] == ray_head.dashboard_url
    state = json.loads((run_dir / "state.json").read_text())  # the cluster ran the plan (a shared folder here)
    assert state["stages"]["text"]["status"] == "COMPLETED" and state["stages"]["text"]["job_id"].startswith("ray-")

    status = _sllm(["status", str(run_dir)])
    assert status.returncode == 0 and f"Ray job {record['submission_id']}" in status.stdout
    assert "SUCCEEDED" in status.stdout and "COMPLETED" in status.stdout
    logs = _sllm(["logs", str(run_dir)])
    assert logs.returncode == 0 and "stage text: done" in logs.stdout
    done = _sllm(["cancel", str(run_dir)])
    assert done.returncode == 0 and "already ended" in done.stdout

    long_spec = _spec(tmp_path, "ray-jobs-long", max_steps=5000, save_steps=5000)
    proc = _sllm(["submit", str(long_spec), "--cluster", str(profile), "--detach"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (long_dir,) = list((tmp_path / "runs" / "ray-jobs-long").iterdir())
    cancel = _sllm(["cancel", str(long_dir)])
    assert cancel.returncode == 0 and "cancelled: Ray job" in cancel.stdout
    deadline = time.monotonic() + 60
    while "STOPPED" not in (out := _sllm(["status", str(long_dir)]).stdout):
        assert time.monotonic() < deadline, f"the cancelled Ray job is not STOPPED after 60 s; sllm status says:\n{out}"
        time.sleep(1)
    # nothing of that job runs on unsupervised (launcher, stage driver), so its CPUs are free for the next
    deadline = time.monotonic() + 30
    while left := _processes_mentioning(str(long_spec)) + _processes_mentioning(str(long_dir)):
        assert time.monotonic() < deadline, f"still running after the stop: {left}"
        time.sleep(1)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and proc.name != str(os.getpid()):
            found.append(f"{proc.name}: {cmd[:120]}")
    return found


def test_jobs_api_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    profile = _profile(tmp_path, f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    proc = _sllm(["submit", str(_spec(tmp_path, "ray-jobs-down")), "--cluster", str(profile)])
    assert time.monotonic() - t0 < 30
    assert proc.returncode != 0
    assert f"Ray Jobs API at http://127.0.0.1:{port} is not reachable" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------ S3 storage


@pytest.mark.s3
def test_checkpoints_reported_to_s3_storage(ray_head, rclone_s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", rclone_s3.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", rclone_s3.secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", rclone_s3.endpoint_url)
    prefix = rclone_s3.new_prefix("ray")
    profile = _profile(tmp_path, ray_head.gcs_address, storage_path=prefix, num_to_keep=1)
    outcome = _run(_spec(tmp_path, "ray-s3", max_steps=4, save_steps=2), profile)
    assert outcome.results["text"].steps == 4
    fs = s3fs.S3FileSystem(key=rclone_s3.key, secret=rclone_s3.secret, endpoint_url=rclone_s3.endpoint_url,
                           skip_instance_cache=True)
    markers = fs.glob(prefix[len("s3://"):] + "/*/checkpoint_*/checkpoint/sllm_complete.json")
    assert len(markers) == 1  # num_to_keep=1: Ray Train deleted the older one
    assert not (outcome.plan.run_dir / "ray").exists()  # nothing went to the local default


# ------------------------------------------------------------------------------------------ Ray Client


def test_stage_through_ray_client_address(ray_head, tmp_path: Path) -> None:
    profile = _profile(tmp_path, ray_head.wait_client(), num_workers=2)
    try:
        outcome = _run(_spec(tmp_path, "ray-client", max_steps=2, save_steps=100), profile)
    except StageFailedError as exc:  # say what the head's Ray Client servers logged, not only "see ...err"
        pytest.fail(f"{exc}\n\nthe head's Ray Client server logs:\n{ray_head.session_logs('ray_client_server*')}")
    assert outcome.results["text"].steps == 2
    assert (outcome.plan.stage_dir("text") / "losses.rank1.json").is_file()  # both workers ran


# ------------------------------------------------------------------------------------------ one driver per pipeline


def _stage_request(tmp: Path, name: str, data: Path) -> LaunchRequest:
    spec_path = _spec(tmp / name, name, max_steps=1, save_steps=100)
    spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    spec["stages"][0]["data"]["train"][0]["path"] = str(data)
    spec_path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    resolved = tmp / name / "spec.resolved.yaml"
    resolved.write_text(dump_resolved_yaml(load_job_spec(spec_path)), encoding="utf-8")
    return LaunchRequest(job_name=name, stage="text", spec_path=str(resolved), spec_hash=name, run_dir=str(tmp / name),
                         stage_dir=str(tmp / name / "stages" / "text"), tracking_uri="", tracking_strict=False,
                         run_id=None)


def test_stages_of_a_pipeline_share_one_driver_and_a_failure_does_not_end_it(ray_head, tmp_path: Path) -> None:
    executor = RayExecutor(RayProfile(kind="ray", name="t", address=ray_head.gcs_address, num_workers=1,
                                      resources_per_worker={"CPU": 1}))
    bad = tmp_path / "gone.jsonl"
    bad.write_text('{"instruction": "질문", "output": "답"}\n', encoding="utf-8")
    reqs = [_stage_request(tmp_path, n, SAMPLE / "text_qa_train.jsonl" if n != "b" else bad) for n in "abc"]
    try:
        first = executor.submit(reqs[0])
        assert first.result(timeout_s=300).steps == 1
        bad.unlink()  # stage b fails inside the shared driver
        second = executor.submit(reqs[1])
        with pytest.raises(StageFailedError) as err:
            second.result(timeout_s=300)
        assert f"{bad}: file not found" in str(err.value) and second.job_id in str(err.value)
        third = executor.submit(reqs[2])
        assert third.result(timeout_s=300).steps == 1
        assert first.job_id == second.job_id == third.job_id  # one driver process ran all three
        timings = [json.loads(Path(r.stage_dir, "ray_timing.json").read_text()) for r in reqs]
        assert [t["reused_driver"] for t in timings] == [False, True, True]
        server = executor._server
        assert server is not None and server.proc.poll() is None
    finally:
        executor.close()
    assert server.proc.poll() is not None  # closing the executor ends the driver (and its Ray job)


def test_a_stage_with_another_environment_gets_its_own_driver(ray_head, tmp_path: Path) -> None:
    executor = RayExecutor(RayProfile(kind="ray", name="t", address=ray_head.gcs_address, num_workers=1,
                                      resources_per_worker={"CPU": 1}))
    try:
        a = _stage_request(tmp_path, "a", SAMPLE / "text_qa_train.jsonl")
        first = executor.submit(a)
        assert first.result(timeout_s=300).steps == 1
        b = dataclasses.replace(_stage_request(tmp_path, "b", SAMPLE / "text_qa_train.jsonl"),
                                env={"SLLM_TEST_MARK": "b"})  # e.g. an evaluation with its own settings: never a driver started without them
        second = executor.submit(b)
        assert second.result(timeout_s=300).steps == 1
        assert second.job_id != first.job_id
        assert json.loads(Path(b.stage_dir, "ray_timing.json").read_text())["reused_driver"] is False
    finally:
        executor.close()
