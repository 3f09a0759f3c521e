"""The training loss computes logits only where a label follows, and equals the Trainer's full-logits loss."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from sllm_lib.models.builders import tiny_llama_config, tiny_voxtral_config  # noqa: E402
from sllm_lib.training.runner import _trainer_class  # noqa: E402

VOCAB = 300
AUDIO = 7


def _trainer(model: Any, tmp_path: Any) -> Any:
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_train_batch_size=2)
    return _trainer_class()(model=model, args=args)


def _text_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0  # a padded row
    labels = ids.clone()
    labels[:, :8] = -100  # the prompt
    labels[1, 15:] = -100
    labels[2, :12] = -100  # a longer prompt in another row
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model: Any) -> list:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _both(trainer: Any, model: Any, batch: dict, **kw: Any) -> tuple[float, float, list, list]:
    model.zero_grad()
    ours = trainer.compute_loss(model, dict(batch), **kw)
    ours.backward()
    g_ours = _grads(model)
    model.zero_grad()
    trainer.labelled_logits = False
    full = trainer.compute_loss(model, dict(batch), **kw)  # the Trainer's own path: the model's loss on all logits
    full.backward()
    g_full = _grads(model)
    trainer.labelled_logits = True
    return float(ours), float(full), g_ours, g_full


def _assert_same(ours: float, full: float, g_ours: list, g_full: list) -> None:
    assert ours == pytest.approx(full, rel=1e-5, abs=1e-6)
    assert len(g_ours) == len(g_full) > 0
    for a, b in zip(g_ours, g_full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_text_model_mean_loss_and_gradients_equal_full_logits(tmp_path: Any) -> None:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=VOCAB))
    trainer = _trainer(model, tmp_path)
    trainer.model_accepts_loss_kwargs = False
    _assert_same(*_both(trainer, model, _text_batch()))


def test_text_model_summed_over_num_items_equals_full_logits(tmp_path: Any) -> None:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=VOCAB))
    trainer = _trainer(model, tmp_path)
    assert trainer.model_accepts_loss_kwargs  # Llama takes num_items_in_batch: a gradient-accumulation total
    batch = _text_batch()
    n = int((batch["labels"][:, 1:] != -100).sum()) * 3  # as if this micro-batch were one of three
    ours, full, g_ours, g_full = _both(trainer, model, batch, num_items_in_batch=torch.tensor(n))
    _assert_same(ours, full, g_ours, g_full)
    mean_only = float(trainer.compute_loss(model, dict(batch)))
    assert ours == pytest.approx(mean_only / 3, rel=1e-5)


def test_speech_model_only_labelled_positions_reach_the_lm_head(tmp_path: Any) -> None:
    from transformers import VoxtralForConditionalGeneration

    torch.manual_seed(0)
    model = VoxtralForConditionalGeneration(tiny_voxtral_config(vocab_size=VOCAB, audio_token_id=AUDIO))
    trainer = _trainer(model, tmp_path)
    trainer.model_accepts_loss_kwargs = False
    n_audio = 375
    ids = torch.cat([torch.full((2, n_audio), AUDIO), torch.randint(10, VOCAB, (2, 12))], dim=1)
    labels = ids.clone()
    labels[:, :n_audio + 4] = -100  # audio and the prompt
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "input_features": torch.randn(2, 128, 3000)}
    seen: list[tuple] = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        ours, full, g_ours, g_full = _both(trainer, model, batch)
    finally:
        hook.remove()
    assert seen[0] == (2 * 8, 64)  # 8 labelled next tokens per row, flattened; not 2 x 387 positions
    assert seen[1] == (2, n_audio + 12, 64)  # the full path, for the comparison
    _assert_same(ours, full, g_ours, g_full)


def _assert_falls_back(model_class: type, tmp_path: Any) -> None:
    """The model gets the Trainer's own loss, and the labelled path is switched off once, not retried each step."""
    torch.manual_seed(0)
    model = model_class(tiny_llama_config(vocab_size=VOCAB))
    trainer = _trainer(model, tmp_path)
    trainer.model_accepts_loss_kwargs = False
    batch = _text_batch()
    loss = trainer.compute_loss(model, dict(batch))
    assert trainer.labelled_logits is False
    assert float(loss) == pytest.approx(float(model(**batch).loss), rel=1e-6)


def test_a_model_without_boolean_logits_to_keep_falls_back_to_full_logits(tmp_path: Any) -> None:
    from transformers import LlamaForCausalLM

    class OldStyle(LlamaForCausalLM):
        def forward(self, *args: Any, logits_to_keep: Any = 0, **kw: Any) -> Any:  # ignores the mask
            return super().forward(*args, **kw)

    _assert_falls_back(OldStyle, tmp_path)


def test_a_model_whose_forward_has_no_logits_to_keep_gets_the_trainers_loss(tmp_path: Any) -> None:
    from transformers import LlamaForCausalLM

    class NoParam(LlamaForCausalLM):
        def forward(self, input_ids: Any = None, attention_mask: Any = None, labels: Any = None) -> Any:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    _assert_falls_back(NoParam, tmp_path)  # no TypeError for the unknown keyword


def test_a_peft_wrapped_model_takes_the_labelled_path(tmp_path: Any) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(tiny_llama_config(vocab_size=VOCAB)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    trainer = _trainer(model, tmp_path)
    trainer.model_accepts_loss_kwargs = False
    ours, full, g_ours, g_full = _both(trainer, model, _text_batch())
    assert trainer.labelled_logits is True
    _assert_same(ours, full, g_ours, g_full)


def test_a_model_that_fails_on_a_boolean_mask_falls_back_on_the_first_batch(tmp_path: Any) -> None:
    from transformers import LlamaForCausalLM

    class IntOnly(LlamaForCausalLM):  # remote code written for an int: -logits_to_keep fails on a bool tensor
        def forward(self, *args: Any, logits_to_keep: Any = 0, **kw: Any) -> Any:
            out = super().forward(*args, **kw)
            out.logits = out.logits[:, -logits_to_keep:, :]
            return out

    _assert_falls_back(IntOnly, tmp_path)
