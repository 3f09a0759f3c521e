"""SlurmExecutor against a real single-node SLURM: DDP, chains, failure, signals, requeue, cancel, bad input."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from launch.executor import JobState, LaunchRequest
from launch.slurm import SlurmExecutor
from sllm_lib.errors import JobSpecError, StageFailedError, SubmissionError
from sllm_lib.spec import SlurmProfile, dump_resolved_yaml, load_job_spec
from tests.conftest import SAMPLE

pytestmark = pytest.mark.slurm


def _profile(**kw) -> SlurmProfile:
    base = dict(kind="slurm", name="t", partition="debug", nodes=1, cpus_per_task=1, mem_gb=2, timeout_min=10,
                signal_delay_s=20, max_num_timeout=3, python="submitting")  # the node shares this machine's venv
    return SlurmProfile(**{**base, **kw})


def _text_stage(name: str = "text", *, steps: int = 4, save_steps: int = 1000, **extra) -> dict:
    return {"name": name, "kind": "text_sft",
            "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl"), "max_records": 16}]},
            "train": {"per_device_bsz": 2, "max_steps": steps, "lr": 5e-3, "precision": "fp32", "logging_steps": 1,
                      "save_steps": save_steps, "seed": 11, "max_seq_len": 96},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "trainable": ["lora"], **extra}


def _write_spec(tmp: Path, stages: list[dict], base: str = "tiny:voxtral") -> Path:
    spec = {"name": "sl", "model": {"base": base}, "output_dir": str(tmp / "runs"), "stages": stages}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return path


def _request(tmp: Path, stage: dict, *, tracked: bool = False) -> LaunchRequest:
    """The stage's request; `tracked`: with an MLflow run of its own in a sqlite store under `tmp`."""
    spec_path = _write_spec(tmp, [stage])
    resolved = tmp / "spec.resolved.yaml"
    resolved.write_text(dump_resolved_yaml(load_job_spec(spec_path)), encoding="utf-8")
    uri, run_id = "", None
    if tracked:
        from mlflow import MlflowClient

        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("sl", artifact_location=(tmp / "art").as_uri())).info.run_id
    return LaunchRequest(job_name="sl", stage=stage["name"], spec_path=str(resolved), spec_hash="h",
                         run_dir=str(tmp), stage_dir=str(tmp / "stages" / stage["name"]), tracking_uri=uri,
                         tracking_strict=False, run_id=run_id)


def _wait_log(path: Path, needle: str, job, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while needle not in (path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""):
        assert time.monotonic() < deadline, f"{needle!r} not in {path} after {timeout_s} s (job {job.job_id})"
        assert job.state() in (JobState.PENDING, JobState.RUNNING), f"job ended early: {job.job.state}"
        time.sleep(0.3)


def _adapter(out_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out_dir / "adapter" / "adapter_model.safetensors"))


def _uninterrupted_adapter(tmp: Path, stage: dict, results: list | None = None) -> dict:
    """The same stage run straight through in this process (same seed); its StageResult appended to `results`."""
    from sllm_lib.stage import StageContext
    from sllm_lib.training.runner import run_training_stage

    ref = tmp / "reference"
    ref.mkdir()
    job = load_job_spec(_write_spec(ref, [stage]))
    result = run_training_stage(job.stage(stage["name"]), StageContext(job=job, spec_hash="h", stage_dir=ref / "stage"))
    if results is not None:
        results.append(result)
    return _adapter(ref / "stage" / "output")


def _assert_same_adapter(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"adapters differ by {worst}"


def _squeue_empty(timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True).stdout.strip()
        if not out:
            return True
        time.sleep(0.5)
    return False


def test_two_task_stage_runs_ddp_with_identical_loss_on_both_ranks(slurm_cluster, tmp_path: Path) -> None:
    req = _request(tmp_path, _text_stage(steps=3))
    job = SlurmExecutor(_profile(tasks_per_node=2)).submit(req)
    result = job.result(timeout_s=300)
    assert result.steps == 3
    stage_dir = Path(req.stage_dir)
    r0 = json.loads((stage_dir / "losses.rank0.json").read_text())
    r1 = json.loads((stage_dir / "losses.rank1.json").read_text())
    assert len(r0) == 3 and r0 == r1
    assert "rank 0 of 2" in req.log_file.read_text()


def test_chain_uses_afterok_and_records_job_ids(slurm_cluster, tmp_path: Path) -> None:
    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.tracking.lineage import walk_lineage

    stages = [_text_stage("a", steps=2), _text_stage("b", steps=2, from_stage="a"),
              {"name": "m", "kind": "merge", "from_stage": "b", "dtype": "float32",
               "register_as": {"name": "sl-model"}}]
    spec_path = _write_spec(tmp_path, stages)
    plan = build_plan(load_job_spec(spec_path), spec_path, _profile())
    outcome = submit_pipeline(plan)
    state = json.loads((plan.run_dir / "state.json").read_text())
    ids = [state["stages"][n]["job_id"] for n in ("a", "b", "m")]
    assert all(i.isdigit() for i in ids) and len(set(ids)) == 3
    script_b = next((plan.run_dir / "slurm" / "b").glob("*/*_submission.sh")).read_text()
    assert f"#SBATCH --dependency=afterok:{ids[0]}" in script_b
    assert "#SBATCH --kill-on-invalid-dep=yes" in script_b
    assert walk_lineage(outcome.tracking_uri, "sl-model@candidate").root.stages() == ["m", "b", "a"]
    from mlflow import MlflowClient

    tags = MlflowClient(outcome.tracking_uri).get_run(outcome.parent_run_id).data.tags
    assert tags["sllm.job_id.b"] == ids[1]


def test_crashing_stage_fails_clearly_and_cancels_downstream(slurm_cluster, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from launch.pipeline import build_plan, submit_pipeline

    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json", encoding="utf-8")
    spec_path = _write_spec(tmp_path, [_text_stage("a", steps=2), _text_stage("b", steps=2, from_stage="a")],
                            base=str(broken))
    plan = build_plan(load_job_spec(spec_path), spec_path, _profile())
    with pytest.raises(StageFailedError) as err:
        submit_pipeline(plan)
    text = str(err.value)
    assert "stage 'a' (SLURM job" in text and ") failed: " in text and "last lines of its log" in text
    # the cause, not submitit's wrapper: the config is read (and refused) before any weight loads
    assert "failed: sllm_lib.errors.ArtifactNotFoundError: model.base: cannot load" in text
    assert "not a valid JSON file" in text.split("last lines of its log:")[1]  # and the stage's own log
    state = json.loads((plan.run_dir / "state.json").read_text())
    assert state["stages"]["a"]["status"] == "FAILED" and state["stages"]["b"]["status"] == "CANCELLED"
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert client.get_run(state["stages"]["a"]["run_id"]).info.status == "FAILED"
    assert client.get_run(state["stages"]["b"]["run_id"]).info.status == "KILLED"
    assert _squeue_empty(), "a dependent job was left pending"


def test_usr2_checkpoints_requeues_and_resumes_to_the_same_adapter(slurm_cluster, tmp_path: Path) -> None:
    stage = _text_stage(steps=40)  # no periodic checkpoint: only the signal path can save one
    req = _request(tmp_path, stage)
    job = SlurmExecutor(_profile()).submit(req)
    _wait_log(req.log_file, "step 5/40", job)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    result = job.result(timeout_s=300)
    log_text = req.log_file.read_text()
    assert "stop requested: checkpointing at step" in log_text
    assert "resuming from" in log_text and result.steps == 40
    attempts = [json.loads(x) for x in (Path(req.stage_dir) / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) == 2 and {a["slurm_job_id"] for a in attempts} == {job.job_id}  # requeued, same job
    _assert_same_adapter(_adapter(Path(req.stage_dir) / "output"), _uninterrupted_adapter(tmp_path, stage))


def test_scontrol_requeue_resumes_from_the_periodic_checkpoint(slurm_cluster, tmp_path: Path, monkeypatch) -> None:
    # submitit ignores the SIGTERM that precedes the kill (KillWait=2 s here): the stage must outlast it
    import dataclasses

    from mlflow import MlflowClient

    monkeypatch.setenv("SLLM_USAGE_HEARTBEAT_S", "1")  # the killed attempt's end is its last heartbeat (sbatch exports)
    stage = _text_stage(steps=400, save_steps=5)
    req = dataclasses.replace(_request(tmp_path, stage, tracked=True), cost_per_gpu_hour=3.0)
    job = SlurmExecutor(_profile(gpus_per_node=1)).submit(req)  # one of the test cluster's (fake) GPUs
    _wait_log(req.log_file, "step 12/400", job)
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    result = job.result(timeout_s=300)
    assert result.steps == 400
    log_text = req.log_file.read_text()
    assert log_text.count("starting (run") == 2 and "resuming from" in log_text
    assert "step 400/400" in log_text.split("resuming from")[1]  # the second attempt trained to the end
    straight: list = []
    _assert_same_adapter(_adapter(Path(req.stage_dir) / "output"), _uninterrupted_adapter(tmp_path, stage, straight))
    # the run's history: every step once across both attempts, and the whole stage's loss (issue 22)
    client = MlflowClient(req.tracking_uri)
    assert [m.step for m in client.get_metric_history(req.run_id, "train/loss")] == list(range(1, 401))
    assert result.metrics["train_loss"] == pytest.approx(straight[0].metrics["train_loss"], rel=1e-5)
    assert result.loss_first == pytest.approx(straight[0].loss_first, rel=1e-6)
    tags = client.get_run(req.run_id).data.tags
    assert tags["sllm.attempt"] == "2" and int(tags["sllm.resumed_from_step"]) % 5 == 0
    # GPU-hours count both attempts, the requeued one as interrupted; GPUs are SLURM's allocation (issue 19)
    usage = json.loads((Path(req.stage_dir) / "usage.json").read_text())
    first, second = usage["attempts"]
    assert (first["state"], second["state"]) == ("interrupted", "completed")
    assert first["gpus"] == second["gpus"] == 1 and first["slurm_job_id"] == second["slurm_job_id"] == job.job_id
    assert first["wall_s"] > 2 and second["wall_s"] > 2 and second["start"] >= first["end"]
    assert usage["gpu_hours"] == pytest.approx((first["wall_s"] + second["wall_s"]) / 3600)
    assert usage["interrupted_gpu_hours"] == pytest.approx(first["wall_s"] / 3600)
    metrics = client.get_run(req.run_id).data.metrics
    assert metrics["usage/attempts"] == 2 and metrics["usage/gpu_hours"] == pytest.approx(usage["gpu_hours"])
    assert metrics["cost/amount"] == pytest.approx(3.0 * usage["gpu_hours"])
    # against SLURM's own accounting (sacct -D: one record per attempt): as long as ours or longer (the allocation
    # starts before Python does); the GPUs above are SLURM's (SLURM_GPUS_ON_NODE in the job)
    out = subprocess.run(["sacct", "-j", job.job_id, "-D", "-X", "-n", "-P", "-o", "ElapsedRaw"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert len(out) == 2, out
    assert sum(int(e) for e in out) + 2 >= first["wall_s"] + second["wall_s"]  # sacct counts whole seconds


def test_cancel(slurm_cluster, tmp_path: Path) -> None:
    req = _request(tmp_path, _text_stage(steps=100_000))
    job = SlurmExecutor(_profile()).submit(req)
    _wait_log(req.log_file, "step 1/", job)
    job.cancel()
    with pytest.raises(StageFailedError, match="did not complete"):
        job.result(timeout_s=60)
    assert not Path(req.stage_dir, "output").exists()


@pytest.mark.parametrize(("override", "expected"), [
    ({"partition": "nope"}, "invalid partition"),
    ({"cpus_per_task": 512}, "SLURM rejects stage 'text'"),
])
def test_bad_profile_is_rejected_before_anything_is_submitted(slurm_cluster, tmp_path: Path, override, expected) -> None:
    from launch.pipeline import build_plan, submit_pipeline

    spec_path = _write_spec(tmp_path, [_text_stage()])
    plan = build_plan(load_job_spec(spec_path), spec_path, _profile(**override))
    with pytest.raises(JobSpecError) as err:
        submit_pipeline(plan)
    assert expected.lower() in str(err.value).lower()
    assert not (tmp_path / "runs").exists()
    assert _squeue_empty(timeout_s=1)


def test_sbatch_missing_is_a_clear_error(slurm_cluster, tmp_path: Path, monkeypatch) -> None:
    req = _request(tmp_path, _text_stage())
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SubmissionError, match="sbatch not found on PATH"):
        SlurmExecutor(_profile()).preflight(req)


def test_controller_down_fails_within_bounded_time(slurm_cluster, tmp_path: Path, monkeypatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    conf = (slurm_cluster / "slurm.conf").read_text()
    conf = "\n".join(f"SlurmctldPort={dead_port}" if line.startswith("SlurmctldPort=") else line
                     for line in conf.splitlines())
    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "slurm.conf").write_text(conf + "\n")
    (dead / "gres.conf").write_text((slurm_cluster / "gres.conf").read_text())
    monkeypatch.setenv("SLURM_CONF", str(dead / "slurm.conf"))
    req = _request(tmp_path, _text_stage())
    t0 = time.monotonic()
    with pytest.raises(SubmissionError) as err:
        SlurmExecutor(_profile()).preflight(req)
    assert time.monotonic() - t0 < 15
    assert "slurmctld" in str(err.value)


def test_sweep_points_run_as_one_job_array(slurm_cluster, tmp_path: Path) -> None:
    from launch.pipeline import build_plan, submit_pipeline

    spec = {"name": "arr", "model": {"base": "tiny:voxtral"}, "output_dir": str(tmp_path / "runs"),
            "stages": [_text_stage("text", steps=2)],
            "sweep": {"stage": "text", "grid": {"train.lr": [1e-3, 2e-3, 4e-3]}, "metric": "train_loss",
                      "max_parallel": 2}}
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    plan = build_plan(load_job_spec(spec_path), spec_path, _profile())
    outcome = submit_pipeline(plan)
    slots = json.loads((plan.run_dir / "state.json").read_text())["stages"]["text"]["points"]
    ids = [s["job_id"] for s in slots]
    array_ids = {i.split("_")[0] for i in ids}
    assert len(array_ids) == 1 and [i.split("_")[1] for i in ids] == ["0", "1", "2"], ids
    script = next((plan.run_dir / "slurm" / "text").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --array=0-2%2" in script
    assert outcome.results["text"].extras["best_index"] in (0, 1, 2)


def test_detached_submission_is_reconciled_by_status(slurm_cluster, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from launch.pipeline import build_plan, submit_pipeline
    from launch.status import find_state_files, stage_statuses

    spec_path = _write_spec(tmp_path, [_text_stage("a", steps=2), _text_stage("b", steps=2, from_stage="a")])
    plan = build_plan(load_job_spec(spec_path), spec_path, _profile())
    t0 = time.monotonic()
    outcome = submit_pipeline(plan, wait=False)
    assert time.monotonic() - t0 < 30 and list(outcome.submitted) == ["a", "b"]
    (state_file,) = find_state_files(plan.run_dir)
    deadline = time.monotonic() + 240
    while True:
        rows = {s.stage: s for s in stage_statuses(state_file)}
        if all(r.status == "COMPLETED" for r in rows.values()):
            break
        assert not any(r.status in ("FAILED", "CANCELLED") for r in rows.values()), rows
        assert time.monotonic() < deadline, f"stages not all COMPLETED within 240 s: {rows}"
        time.sleep(2)
    client = MlflowClient(outcome.tracking_uri)
    assert client.get_run(rows["a"].run_id).info.status == "FINISHED"
    assert client.get_run(rows["b"].run_id).info.status == "FINISHED"
    assert client.get_run(outcome.parent_run_id).info.status == "FINISHED"
    assert json.loads(state_file.read_text())["stages"]["b"]["result"]["steps"] == 2


def test_detach_is_refused_for_the_local_executor(tmp_path: Path) -> None:
    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.errors import SllmError
    from sllm_lib.spec import LocalProfile

    spec_path = _write_spec(tmp_path, [_text_stage("a", steps=2)])
    plan = build_plan(load_job_spec(spec_path), spec_path, LocalProfile(kind="local"))
    with pytest.raises(SllmError, match="--detach needs a scheduler"):
        submit_pipeline(plan, wait=False)
    assert not (tmp_path / "runs").exists()
