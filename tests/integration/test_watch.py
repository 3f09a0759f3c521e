"""The checkpoint watcher (eval/watch.py) on a real local pipeline with an MLflow sqlite store: every checkpoint
scored once as its own process, at its step on the training run; a restarted watcher scores nothing twice and
takes over a dead watcher's claim; the early-stop rule stops training cleanly after its next checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import SAMPLE, run_sllm

pytestmark = pytest.mark.mlflow


def _suite(tmp: Path) -> Path:
    suite = {"name": "watch_it", "generation": {"max_new_tokens": 4, "batch_size": 4}, "sample_limit": 2,
             "tasks": [{"name": "text_qa", "type": "text_qa", "data": str(SAMPLE / "text_qa_val.jsonl"),
                        "metrics": ["rougeL", "cer"]}]}
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, allow_unicode=True), encoding="utf-8")
    return path


def _spec(tmp: Path, *, steps: int, save_steps: int, keep: int, watch: dict, isolation: str = "subprocess",
          profile: str | None = None) -> Path:
    stage = {"name": "text", "kind": "text_sft",
             "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl"), "max_records": 8}]},
             "train": {"per_device_bsz": 2, "max_steps": steps, "lr": 5e-3, "precision": "fp32", "logging_steps": 1,
                       "save_steps": save_steps, "save_total_limit": keep, "seed": 7, "max_seq_len": 96},
             "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "trainable": ["lora"], "watch": watch}
    spec = {"name": "watch-it", "model": {"base": "tiny:voxtral"}, "output_dir": str(tmp / "runs"),
            "cluster": str(tmp / "profile.yaml"), "stages": [stage]}
    (tmp / "profile.yaml").write_text(profile or f"kind: local\nname: wl\nisolation: {isolation}\n", encoding="utf-8")
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return path


def _history(uri: str, run_id: str, key: str) -> list[int]:
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))  # scored concurrently


def test_every_checkpoint_is_scored_once_and_a_restart_scores_nothing_twice(tmp_path: Path) -> None:
    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.spec import find_cluster_profile, load_job_spec

    spec_path = _spec(tmp_path, steps=6, save_steps=2, keep=5,
                      watch={"suite": str(_suite(tmp_path)), "poll_s": 0.5, "max_concurrent": 2})
    spec = load_job_spec(spec_path)
    plan = build_plan(spec, spec_path, find_cluster_profile(spec.cluster))
    outcome = submit_pipeline(plan)
    run_id, uri = outcome.run_ids["text"], outcome.tracking_uri
    stage_dir = plan.stage_dir("text")
    ledger = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in (stage_dir / "watch").glob("step-*.json")}
    assert sorted(ledger) == [2, 4, 6] and all(r["suite"] == "watch_it" for r in ledger.values())
    for key in ("watch/text_qa/rougeL", "watch/text_qa/cer"):
        assert _history(uri, run_id, key) == [2, 4, 6], key  # each checkpoint once, at its step
    # each was its own process: its own folder, request and log, under the stage's watch/
    for step in (2, 4, 6):
        req = json.loads((stage_dir / "watch" / f"step-{step}" / "request.json").read_text())
        assert req["task"] == "checkpoint_eval" and req["overrides"]["step"] == step and req["single_process"]
        assert "scored on watch_it" in (stage_dir / "watch" / f"step-{step}" / "stage.log").read_text()
    assert not list((stage_dir / "watch").glob("*.claim"))

    # a watcher started again (sllm watch) finds everything scored: nothing is logged twice
    res = run_sllm(["watch", str(plan.run_dir), "--stage", "text", "--once"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "3 checkpoint(s) scored (0 now)" in res.stdout
    assert _history(uri, run_id, "watch/text_qa/rougeL") == [2, 4, 6]

    # a watcher killed while it held checkpoint 4: its claim (a dead pid) is taken over, only 4 is scored again
    (stage_dir / "watch" / "step-4.json").unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (stage_dir / "watch" / "step-4.claim").write_text(json.dumps(
        {"host": os.uname().nodename, "pid": int(dead.stdout), "time": 0, "job_id": ""}))
    res = run_sllm(["watch", str(plan.run_dir), "--stage", "text", "--once"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "3 checkpoint(s) scored (1 now)" in res.stdout
    assert _history(uri, run_id, "watch/text_qa/rougeL") == [2, 4, 4, 6]  # 4 again, nothing else


def test_early_stop_publishes_at_the_next_checkpoint_and_the_stage_is_scored_after(tmp_path: Path) -> None:
    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.spec import find_cluster_profile, load_job_spec

    # in-process: the watcher scores after the stage; the early-stop request is already there (as if the watcher
    # had written it), so training stops right after its first checkpoint and publishes
    spec_path = _spec(tmp_path, steps=40, save_steps=3, keep=1, isolation="inprocess",
                      watch={"suite": str(_suite(tmp_path)), "early_stop": {"metric": "text_qa/cer", "patience": 1}})
    spec = load_job_spec(spec_path)
    plan = build_plan(spec, spec_path, find_cluster_profile(spec.cluster))
    stage_dir = plan.stage_dir("text")
    stage_dir.mkdir(parents=True)
    (stage_dir / "STOP_REQUESTED").write_text("{}")
    outcome = submit_pipeline(plan)
    result = outcome.results["text"]
    assert result.steps == 3 and result.metrics["early_stop_step"] == 3
    assert (stage_dir / "output" / "manifest.json").is_file()  # published as usual
    assert sorted(p.name for p in (stage_dir / "watch").glob("step-*.json")) == ["step-3.json"]
    assert _history(outcome.tracking_uri, outcome.run_ids["text"], "watch/text_qa/cer") == [3]
    assert [p.name for p in (stage_dir / "checkpoints").iterdir()] == ["checkpoint-3"]  # the newest is kept


@pytest.mark.slurm
def test_on_slurm_each_checkpoint_is_its_own_job(slurm_cluster, tmp_path: Path) -> None:
    """The same on the single-node SLURM: the stage is one job, each checkpoint's evaluation another."""
    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.spec import find_cluster_profile, load_job_spec

    profile = ("kind: slurm\nname: wsl\npartition: debug\nnodes: 1\ncpus_per_task: 1\nmem_gb: 2\n"
               "timeout_min: 10\npython: submitting\n")
    spec_path = _spec(tmp_path, steps=6, save_steps=2, keep=1, profile=profile,
                      watch={"suite": str(_suite(tmp_path)), "poll_s": 1, "max_concurrent": 1})
    spec = load_job_spec(spec_path)
    plan = build_plan(spec, spec_path, find_cluster_profile(spec.cluster))
    outcome = submit_pipeline(plan)
    stage_dir = plan.stage_dir("text")
    train_job = json.loads((plan.run_dir / "state.json").read_text())["stages"]["text"]["job_id"]
    ledger = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in (stage_dir / "watch").glob("step-*.json")}
    assert sorted(ledger) == [2, 4, 6]
    jobs = {r["slurm_job_id"] for r in ledger.values()}
    assert all(j and j.isdigit() for j in jobs) and len(jobs) == 3 and train_job not in jobs  # three jobs of their own
    assert _history(outcome.tracking_uri, outcome.run_ids["text"], "watch/text_qa/cer") == [2, 4, 6]
    # save_total_limit 1: once scored, the older checkpoints went; the newest stays for a resume
    assert [p.name for p in (stage_dir / "checkpoints").iterdir()] == ["checkpoint-6"]


@pytest.mark.ray
def test_on_ray_each_checkpoint_is_scored_by_a_ray_worker_of_its_own(ray_head, tmp_path: Path) -> None:
    """The same through a real Ray head: training one Ray worker, each evaluation another (2 CPUs: both fit)."""
    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.spec import find_cluster_profile, load_job_spec

    profile = (f"kind: ray\nname: wray\naddress: {ray_head.gcs_address}\nnum_workers: 1\n"
               "resources_per_worker: {CPU: 1}\n")
    spec_path = _spec(tmp_path, steps=4, save_steps=2, keep=2, profile=profile,
                      watch={"suite": str(_suite(tmp_path)), "poll_s": 1})
    spec = load_job_spec(spec_path)
    plan = build_plan(spec, spec_path, find_cluster_profile(spec.cluster))
    outcome = submit_pipeline(plan)
    stage_dir = plan.stage_dir("text")
    assert sorted(int(p.stem.split("-")[1]) for p in (stage_dir / "watch").glob("step-*.json")) == [2, 4]
    assert _history(outcome.tracking_uri, outcome.run_ids["text"], "watch/text_qa/rougeL") == [2, 4]
    for step in (2, 4):  # each scored through its own Ray driver and worker
        assert "scored on watch_it" in (stage_dir / "watch" / f"step-{step}" / "stage.log").read_text()
