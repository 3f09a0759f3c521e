"""A `sweep:` block: one point per grid combination, each its own MLflow run under the pipeline run; the best is kept."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import SAMPLE

pytestmark = pytest.mark.mlflow


def _sweep_spec(tmp: Path) -> Path:
    stages = [
        {"name": "text", "kind": "text_sft",
         "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl"), "max_records": 8}]},
         "train": {"per_device_bsz": 4, "max_steps": 3, "lr": 1e-3, "precision": "fp32", "logging_steps": 1,
                   "seed": 5, "max_seq_len": 96},
         "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "trainable": ["lora"]},
        {"name": "merge", "kind": "merge", "from_stage": "text", "dtype": "float32",
         "register_as": {"name": "sweep-model"}},
    ]
    spec = {"name": "sw", "model": {"base": "tiny:voxtral"}, "output_dir": str(tmp / "runs"), "stages": stages,
            "sweep": {"stage": "text", "grid": {"train.lr": [1e-4, 1e-2], "lora.r": [2, 4]},
                      "metric": "train_loss", "mode": "min"}}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    # a priced profile that says it has a GPU (the stages still run on this CPU): every run has GPU-hours and a cost
    (tmp / "inproc.yaml").write_text("kind: local\nname: inproc\nisolation: inprocess\ngpus: 1\n"
                                     "cost_per_gpu_hour: 4.0\ncurrency: EUR\n", encoding="utf-8")
    return path


def test_sweep_runs_every_point_and_continues_from_the_best(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.spec import find_cluster_profile, load_job_spec
    from sllm_lib.tracking.lineage import walk_lineage

    spec_path = _sweep_spec(tmp_path)
    plan = build_plan(load_job_spec(spec_path), spec_path, find_cluster_profile(str(tmp_path / "inproc.yaml")))
    outcome = submit_pipeline(plan)
    state = json.loads((plan.run_dir / "state.json").read_text())
    slots = state["stages"]["text"]["points"]
    assert [s["point"] for s in slots] == [{"train.lr": 1e-4, "lora.r": 2}, {"train.lr": 1e-4, "lora.r": 4},
                                           {"train.lr": 1e-2, "lora.r": 2}, {"train.lr": 1e-2, "lora.r": 4}]
    losses = [s["result"]["metrics"]["train_loss"] for s in slots]
    best = losses.index(min(losses))
    assert len(set(losses)) == 4  # the grid really changed the runs
    extras = outcome.results["text"].extras
    assert extras["best_index"] == best
    link = plan.stage_dir("text") / "output"
    assert link.is_symlink() and os.readlink(link) == f"points/{best}/output"
    manifest = json.loads((link / "manifest.json").read_text())
    assert manifest["lora"]["r"] == slots[best]["point"]["lora.r"]  # the point's settings were used

    client = MlflowClient(outcome.tracking_uri)
    runs = [client.get_run(s["run_id"]) for s in slots]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {outcome.parent_run_id}
    assert [json.loads(r.data.tags["sllm.sweep_point"]) for r in runs] == [s["point"] for s in slots]
    assert runs[0].data.params["train.lr"] == "0.0001" and runs[3].data.params["lora.r"] == "4"
    lin = walk_lineage(outcome.tracking_uri, "sweep-model@candidate")
    assert lin.root.upstream[0].run_id == slots[best]["run_id"]

    # what the model cost: every point of the sweep and the merge, each once, equal to the pipeline's sum (issue 19)
    merge_run = client.get_run(outcome.run_ids["merge"])
    stage_runs = runs + [merge_run]
    hours = [r.data.metrics["usage/gpu_hours"] for r in stage_runs]
    assert all(h > 0 for h in hours) and all(r.data.metrics["usage/gpus"] == 1 for r in stage_runs)
    for r in stage_runs:
        assert r.data.metrics["cost/amount"] == pytest.approx(4.0 * r.data.metrics["usage/gpu_hours"])
        assert r.data.tags["sllm.cost.currency"] == "EUR" and r.data.tags["sllm.usage.start"].endswith("Z")
    total = lin.usage
    assert total.runs == 5 and total.gpu_hours == pytest.approx(sum(hours))
    assert total.cost == {"EUR": pytest.approx(4.0 * sum(hours))}
    assert len(lin.root.upstream[0].sweep_points) == 3  # the losing points are in the model's cost
    pipeline = client.get_run(outcome.parent_run_id).data.metrics
    assert pipeline["usage/gpu_hours"] == pytest.approx(sum(hours)) and pipeline["usage/attempts"] == 5
    usage = json.loads((plan.stage_dir("text") / "points" / str(best) / "usage.json").read_text())
    assert [a["state"] for a in usage["attempts"]] == ["completed"] and usage["currency"] == "EUR"

    again = submit_pipeline(plan)  # same spec: nothing re-runs
    assert again.reused == ["text", "merge"]
    assert walk_lineage(outcome.tracking_uri, "sweep-model@candidate").usage.gpu_hours == pytest.approx(sum(hours))


def test_sweep_grid_errors_name_the_field(tmp_path: Path) -> None:
    from sllm_lib.errors import JobSpecError
    from sllm_lib.spec import load_job_spec

    spec_path = _sweep_spec(tmp_path)
    raw = yaml.safe_load(spec_path.read_text())
    raw["sweep"]["grid"] = {"train.lr": [1e-3, -1.0], "lora.rank": [4]}
    raw["sweep"]["stage"] = "text"
    spec_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(JobSpecError) as err:
        load_job_spec(spec_path)
    text = str(err.value)
    assert "sweep.grid: train.lr: Input should be greater than 0 (got -1.0)" in text
    assert "lora.rank: stage 'text' has no field 'rank' there" in text
    raw["sweep"] = {"stage": "merge", "grid": {"dtype": ["float32"]}}
    spec_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(JobSpecError, match="only training stages can be swept"):
        load_job_spec(spec_path)
