"""Distillation loss, the teacher/student tokenizer check, and the compression report's arithmetic (quantize)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sllm_lib.errors import JobSpecError
from sllm_lib.spec import CompressionTargets
from sllm_lib.training.quantize import compare
from sllm_lib.training.runner import distillation_loss, load_teacher


def _llama(layers: int = 1, vocab: int = 40, seed: int = 0):
    from transformers import LlamaForCausalLM

    from sllm_lib.models.builders import tiny_llama_config

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size=vocab, n_layer=layers)).eval()


def _batch() -> dict:
    ids = torch.randint(3, 40, (2, 7))
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_distillation_loss_blends_kl_and_cross_entropy() -> None:
    student, teacher = _llama(seed=0), _llama(layers=2, seed=1)
    batch = _batch()
    ce = student(**batch).loss
    loss0, _ = distillation_loss(student, teacher, batch, alpha=0.0, temperature=2.0, vocab=40)
    assert torch.allclose(loss0, ce)
    same, _ = distillation_loss(student, student, batch, alpha=1.0, temperature=3.0, vocab=40)
    assert float(same) == pytest.approx(0.0, abs=1e-6)  # a teacher identical to the student adds nothing
    kl, _ = distillation_loss(student, teacher, batch, alpha=1.0, temperature=2.0, vocab=40)
    s = student(**batch).logits[:, :-1][batch["labels"][:, 1:] != -100] / 2.0
    t = teacher(input_ids=batch["input_ids"]).logits[:, :-1][batch["labels"][:, 1:] != -100] / 2.0
    manual = (t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum(-1).mean() * 4.0
    assert float(kl) == pytest.approx(float(manual), rel=1e-5)  # only the answer positions, scaled by T^2
    half, _ = distillation_loss(student, teacher, batch, alpha=0.5, temperature=2.0, vocab=40)
    assert float(half) == pytest.approx(0.5 * float(kl) + 0.5 * float(ce), rel=1e-5)


def test_teacher_with_another_tokenizer_is_refused_before_training(tmp_path: Path) -> None:
    from sllm_lib.models.builders import TINY_CHAT_TEMPLATE, build_char_tokenizer, korean_char_vocab

    teacher_dir = tmp_path / "teacher"
    tok = build_char_tokenizer()
    tok.add_tokens(["<medical>"])
    tok.chat_template = TINY_CHAT_TEMPLATE
    _llama(vocab=len(korean_char_vocab()) + 1).save_pretrained(str(teacher_dir))
    tok.save_pretrained(str(teacher_dir))
    student_tok = build_char_tokenizer()
    stage = SimpleNamespace(name="distill", teacher=str(teacher_dir), teacher_trust_remote_code=False)
    ctx = SimpleNamespace(tracking_uri="", job=SimpleNamespace(model=SimpleNamespace(base="tiny:llama-half")))
    with pytest.raises(JobSpecError, match=r"use different tokenizers \(11384 vs 11383 tokens; e.g. '<medical>'"):
        load_teacher(stage, ctx, student_tok, "float32")


def test_report_ratios_and_targets() -> None:
    base = {"size_mb": 100.0, "model_mem_mb": 200.0, "ms_per_token": 40.0, "quality": {"t/rougeL": 0.5}}
    comp = {"size_mb": 40.0, "model_mem_mb": 80.0, "ms_per_token": 25.0, "quality": {"t/rougeL": 0.45}}
    cmp_ = compare(base, comp, CompressionTargets())
    assert cmp_["size_reduction"] == pytest.approx(0.6) and cmp_["targets"]["size_reduction"]["met"] is True
    assert cmp_["speedup"] == pytest.approx(1.6) and cmp_["targets"]["speedup"]["met"] is False
    assert cmp_["memory_reduction"] == pytest.approx(0.6) and cmp_["targets"]["memory_reduction"]["met"] is False
    assert cmp_["quality_delta"] == {"t/rougeL": pytest.approx(-0.05)}
    unmeasured = compare({**base, "model_mem_mb": 0.0}, comp, CompressionTargets())
    assert unmeasured["memory_reduction"] is None and unmeasured["targets"]["memory_reduction"]["met"] is None
