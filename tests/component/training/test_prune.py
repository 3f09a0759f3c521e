"""Magnitude pruning: exact unstructured counts, N:M groups, verification, and the prune stage's spec rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sllm_lib.errors import JobSpecError
from sllm_lib.spec import PruneStage, load_job_spec
from sllm_lib.training.prune import magnitude_keep_mask, prune_model, verify_sparsity
from tests.conftest import SAMPLE


def test_unstructured_zeroes_exactly_the_smallest_share() -> None:
    w = torch.arange(1, 21, dtype=torch.float32).reshape(4, 5) * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    keep = magnitude_keep_mask(w, sparsity=0.25)
    assert int((~keep).sum()) == 5
    assert set(w[~keep].abs().tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}  # by |w|, sign ignored


def test_n_m_keeps_the_n_largest_of_every_group() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 16)
    keep = magnitude_keep_mask(w, n_m=(2, 4))
    groups = keep.reshape(6, 4, 4)
    assert (groups.sum(-1) == 2).all()
    kept_min = (w.abs() * keep).reshape(6, 4, 4).masked_fill(~groups, float("inf")).min(-1).values
    dropped_max = (w.abs() * ~keep).reshape(6, 4, 4).max(-1).values
    assert (kept_min >= dropped_max).all()
    with pytest.raises(ValueError, match="not a multiple of M=4"):
        magnitude_keep_mask(torch.randn(2, 6), n_m=(2, 4))


def _tiny_llama():
    from transformers import LlamaForCausalLM

    from sllm_lib.models.builders import tiny_llama_config

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(vocab_size=64))


def test_pruning_is_permanent_and_verified() -> None:
    model = _tiny_llama()
    embed_before = model.model.embed_tokens.weight.clone()
    stats = prune_model(model, targets=["q_proj", "down_proj"], sparsity=0.3, n_m=None)
    assert stats["modules"] == 4 and stats["sparsity"] == pytest.approx(0.3, abs=1e-3)
    assert not any("weight_orig" in n or "mask" in n for n, _ in model.named_parameters())  # no torch.prune reparam
    assert verify_sparsity(model, targets=["q_proj", "down_proj"], sparsity=0.3, n_m=None) == pytest.approx(0.3, abs=1e-3)
    assert torch.equal(model.model.embed_tokens.weight, embed_before)  # only the targets
    with pytest.raises(RuntimeError, match="expected at least"):
        verify_sparsity(model, targets=["k_proj"], sparsity=0.3, n_m=None)
    with pytest.raises(ValueError, match="no Linear layer matches"):
        prune_model(model, targets=["nope"], sparsity=0.3, n_m=None)


def test_n_m_verification_catches_a_dense_group() -> None:
    model = _tiny_llama()
    prune_model(model, targets=["up_proj"], sparsity=None, n_m=(2, 4))
    assert verify_sparsity(model, targets=["up_proj"], sparsity=None, n_m=(2, 4)) == pytest.approx(0.5)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, :4] = 1.0
    with pytest.raises(RuntimeError, match="a group of 4 holds 4 non-zeros"):
        verify_sparsity(model, targets=["up_proj"], sparsity=None, n_m=(2, 4))


@pytest.mark.parametrize(("fields", "needle"), [
    ({"pattern": "4:2"}, "N must be smaller than M"),
    ({"pattern": "2:4", "sparsity": 0.3}, "contradicts pattern 2:4"),
    ({"pattern": "half"}, "String should match pattern"),
    ({"sparsity": 1.0}, "less than 1"),
])
def test_prune_stage_fields(fields: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        PruneStage(name="p", kind="prune", from_stage="m", **fields)
    assert PruneStage(name="p", kind="prune", from_stage="m", pattern="2:4").target_sparsity == 0.5
    assert PruneStage(name="p", kind="prune", from_stage="m").target_sparsity == 0.25


def test_prune_must_start_from_a_model_folder(tmp_path: Path) -> None:
    stages = [{"name": "sft", "kind": "causal_sft", "train": {"max_steps": 2}, "lora": {"r": 2},
               "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl")}]}},
              {"name": "p", "kind": "prune", "from_stage": "sft"}]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "j", "model": {"base": "tiny:llama"}, "stages": stages}), encoding="utf-8")
    with pytest.raises(JobSpecError, match="prune works on a model folder; 'sft' is causal_sft"):
        load_job_spec(path)
