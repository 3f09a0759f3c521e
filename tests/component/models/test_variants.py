"""Device variants of a model folder: the dynamic int8 CPU model saved and rebuilt exactly."""

from __future__ import annotations

from pathlib import Path

import torch

from sllm_lib.models.variants import DYNAMIC_MARKER, load_dynamic_int8, save_dynamic_int8


def _llama(layers: int = 1, vocab: int = 40, seed: int = 0):
    from transformers import LlamaForCausalLM

    from sllm_lib.models.builders import tiny_llama_config

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size=vocab, n_layer=layers)).eval()


def test_dynamic_int8_round_trip_matches_the_quantized_model(tmp_path: Path) -> None:
    import copy

    from torch import nn

    model = _llama()
    ids = torch.randint(3, 40, (1, 6))
    in_memory = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        ref, expected = model(input_ids=ids).logits, in_memory(input_ids=ids).logits
    save_dynamic_int8(model, tmp_path)
    loaded = load_dynamic_int8(tmp_path, model.config)
    assert "quantized.dynamic" in type(loaded.model.layers[0].self_attn.q_proj).__module__
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-6)  # the saved int8 model is the quantized model exactly
    cos = torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0)
    assert float(cos) > 0.98  # int8 rounding of the float model, not a different model
    assert (tmp_path / DYNAMIC_MARKER).is_file()  # what load_base_model looks for
