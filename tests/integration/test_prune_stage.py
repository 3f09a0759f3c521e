"""The prune stage in a pipeline (MLflow sqlite store): causal_sft -> merge -> prune (registered) -> eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import SAMPLE

pytestmark = pytest.mark.mlflow


def test_pruned_model_is_published_verified_registered_and_evaluated(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.spec import find_cluster_profile, load_job_spec
    from sllm_lib.tracking.lineage import walk_lineage

    stages = [
        {"name": "sft", "kind": "causal_sft", "system_prompt": "의사입니다",
         "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl"), "max_records": 8}]},
         "train": {"per_device_bsz": 4, "max_steps": 2, "precision": "fp32", "max_seq_len": 128, "save_steps": 100},
         "lora": {"r": 4, "alpha": 8}},
        {"name": "merge", "kind": "merge", "from_stage": "sft", "dtype": "float32"},
        {"name": "prune", "kind": "prune", "from_stage": "merge", "sparsity": 0.3, "dtype": "float32",
         "register_as": {"name": "pruned-tiny"}},
        {"name": "eval", "kind": "eval", "from_stage": "prune", "generation": {"max_new_tokens": 4},
         "datasets": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_val.jsonl"), "max_records": 2}]},
    ]
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "pr", "model": {"base": "tiny:llama"},
                                         "output_dir": str(tmp_path / "runs"), "stages": stages},
                                        allow_unicode=True), encoding="utf-8")
    (tmp_path / "inproc.yaml").write_text("kind: local\nname: inproc\nisolation: inprocess\n", encoding="utf-8")
    plan = build_plan(load_job_spec(spec_path), spec_path, find_cluster_profile(str(tmp_path / "inproc.yaml")))
    outcome = submit_pipeline(plan)
    assert list(outcome.results) == ["sft", "merge", "prune", "eval"]

    out = plan.stage_dir("prune") / "output"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["measured_sparsity"] >= 0.3 - 1e-6 and manifest["modules"] == 14
    assert manifest["system_prompt"] == "의사입니다"  # carried on for evaluation
    weights = load_file(str(out / "model.safetensors"))
    merged = load_file(str(plan.stage_dir("merge") / "output" / "model.safetensors"))
    for name, w in weights.items():
        if name.endswith("q_proj.weight"):
            zeros = (w == 0)
            assert float(zeros.float().mean()) == pytest.approx(0.3, abs=0.01)
            kept = merged[name][~zeros].abs().min()
            assert float(merged[name][zeros].abs().max()) <= float(kept)  # the smallest magnitudes went
        elif "embed" in name or "norm" in name:
            assert torch.equal(w, merged[name])
    assert outcome.results["prune"].metrics["prune/sparsity"] == pytest.approx(0.3, abs=1e-3)
    assert "eval" in outcome.results and (plan.stage_dir("eval") / "output" / "predictions.jsonl").is_file()

    lineage = walk_lineage(outcome.tracking_uri, "pruned-tiny/1")
    assert lineage.root.stage == "prune" and lineage.root.upstream[0].stage == "merge"
    assert lineage.root.upstream[0].upstream[0].stage == "sft"
