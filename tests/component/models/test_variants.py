"""Device variants of a model folder: the dynamic int8 CPU model saved and rebuilt exactly."""

from __future__ import annotations

import os
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


def test_measure_cpu_measures_each_model_in_its_own_process(tmp_path: Path) -> None:
    """The compression report's two rows: baseline and int8 model, each measured by a process of its own whose
    peak RSS is its own (issue 21: both rows showed the parent stage's 565.742 MB, inherited through execve)."""
    import shutil

    from sllm_lib.models.builders import materialize_tiny
    from sllm_lib.models.variants import measure_cpu, peak_rss_mb

    src = materialize_tiny("llama")
    baseline, compressed = tmp_path / "baseline", tmp_path / "int8"
    shutil.copytree(src, baseline)
    from sllm_lib.models.builders import folder_model_spec, load_base_model

    save_dynamic_int8(load_base_model(str(src), model=folder_model_spec(src), dtype="float32"), compressed)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name not in (
                "config.json", "generation_config.json"):
            shutil.copy2(f, compressed / f.name)
    ballast = b"\x01" * (1536 * 2**20)  # this process (the stage's stand-in) now peaks far above either child
    rows = [measure_cpu(baseline, tokens=4), measure_cpu(compressed, tokens=4)]
    parent_peak = peak_rss_mb()
    del ballast
    assert all("error" not in r for r in rows), rows
    assert len({rows[0]["pid"], rows[1]["pid"], os.getpid()}) == 3
    for r in rows:
        assert r["model_mem_mb"] < r["peak_rss_mb"] < parent_peak - 1024, (r, parent_peak)
    assert rows[0]["peak_rss_mb"] != rows[1]["peak_rss_mb"]
