"""Prompt building, answer-only labels, audio placeholders, mixtures and the collator."""

from __future__ import annotations

import numpy as np
import pytest

from sllm_lib.data.encode import IGNORE_INDEX, SpeechCollator, encode_record, encode_records, mixture_indices
from sllm_lib.data.records import read_records
from tests.conftest import SAMPLE


@pytest.fixture(scope="module")
def parts():
    from transformers import WhisperFeatureExtractor

    from sllm_lib.models.builders import ChatTokens, build_char_tokenizer

    tok = build_char_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ["<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[BEGIN_AUDIO]",
                                                    "[AUDIO]"]}
    chat = ChatTokens(bos=ids["<s>"], eos=ids["</s>"], pad=ids["<pad>"], inst=ids["[INST]"],
                      inst_end=ids["[/INST]"], begin_audio=ids["[BEGIN_AUDIO]"], audio=ids["[AUDIO]"])
    return tok, chat, WhisperFeatureExtractor(feature_size=128)


def test_text_qa_loss_only_on_answer_and_eos(parts) -> None:
    tok, chat, fe = parts
    rec = {"instruction": "질문", "input": "열이 나요", "output": "해열제를 드세요"}
    ex = encode_record(rec, "text_qa", tokenizer=tok, chat=chat, feature_extractor=fe, max_seq_len=256)
    answer = tok.encode("해열제를 드세요", add_special_tokens=False) + [chat.eos]
    assert ex.features is None
    assert ex.input_ids[:2] == [chat.bos, chat.inst]
    assert ex.input_ids[-len(answer):] == answer
    n_prompt = len(ex.input_ids) - len(answer)
    assert ex.input_ids[n_prompt - 1] == chat.inst_end
    assert ex.labels == [IGNORE_INDEX] * n_prompt + answer
    assert tok.decode(ex.input_ids[2:n_prompt - 1]) == "질문\n열이 나요"


def test_asr_has_375_audio_tokens_per_chunk_and_masks_them(parts) -> None:
    tok, chat, fe = parts
    rec = read_records(SAMPLE / "asr_train.jsonl", "asr").records[0]
    ex = encode_record(rec, "asr", tokenizer=tok, chat=chat, feature_extractor=fe, max_seq_len=1024)
    assert ex.features.shape == (1, 128, 3000)
    assert ex.input_ids.count(chat.audio) == 375
    assert all(lab == IGNORE_INDEX for i, lab in zip(ex.input_ids, ex.labels) if i == chat.audio)
    target = [lab for lab in ex.labels if lab != IGNORE_INDEX]
    assert tok.decode(target[:-1]) == rec["transcript"]


def test_audio_tokens_follow_the_extractors_chunk_length(parts) -> None:
    """A 6 s extractor (mini:voxtral's window): 600 frames per chunk -> 75 audio tokens per chunk."""
    from transformers import WhisperFeatureExtractor

    from sllm_lib.audio.features import chunk_frames, chunk_seconds, log_mel_chunks, num_chunks, tokens_per_chunk

    tok, chat, fe30 = parts
    fe6 = WhisperFeatureExtractor(feature_size=80, chunk_length=6)
    assert (chunk_seconds(fe30), chunk_frames(fe30), tokens_per_chunk(fe30)) == (30, 3000, 375)
    assert (chunk_seconds(fe6), chunk_frames(fe6), tokens_per_chunk(fe6)) == (6, 600, 75)
    assert tokens_per_chunk(None) == 375  # no extractor: Voxtral's 30 s
    assert [num_chunks(n, fe6) for n in (0, 96_000, 96_001, 200_000)] == [1, 1, 2, 3]
    rec = read_records(SAMPLE / "asr_train.jsonl", "asr").records[0]
    feats = log_mel_chunks(np.zeros(7 * 16_000, np.float32), fe6).astype(np.float16)  # 7 s: two 6 s chunks
    assert feats.shape == (2, 80, 600)
    ex = encode_record(rec, "asr", tokenizer=tok, chat=chat, feature_extractor=fe6, max_seq_len=1024, audio=feats)
    assert ex.input_ids.count(chat.audio) == 150
    assert ex.input_ids.index(chat.audio) == ex.input_ids.index(chat.begin_audio) + 1


def test_truncation_keeps_audio_and_drops_answer_tail(parts) -> None:
    tok, chat, fe = parts
    rec = read_records(SAMPLE / "asr_train.jsonl", "asr").records[0]
    full = encode_record(rec, "asr", tokenizer=tok, chat=chat, feature_extractor=fe, max_seq_len=10_000)
    n_prompt = full.labels.count(IGNORE_INDEX)
    ex = encode_record(rec, "asr", tokenizer=tok, chat=chat, feature_extractor=fe, max_seq_len=n_prompt + 3)
    assert len(ex.input_ids) == n_prompt + 3 and ex.input_ids.count(chat.audio) == 375
    assert ex.labels[n_prompt:] == full.labels[n_prompt:n_prompt + 3]
    assert encode_record(rec, "asr", tokenizer=tok, chat=chat, feature_extractor=fe, max_seq_len=n_prompt + 1) is None


def test_collator_pads_and_concatenates_audio_in_row_order(parts) -> None:
    tok, chat, fe = parts
    asr = read_records(SAMPLE / "asr_train.jsonl", "asr").records[:2]
    text = {"instruction": "질문", "input": "", "output": "답"}
    batch = [encode_record(r, k, tokenizer=tok, chat=chat, feature_extractor=fe, max_seq_len=1024)
             for r, k in [(asr[0], "asr"), (text, "text_qa"), (asr[1], "asr")]]
    out = SpeechCollator(pad_id=chat.pad)(batch)
    width = max(len(e.input_ids) for e in batch)
    assert out["input_ids"].shape == (3, width)
    assert out["input_features"].shape == (2, 128, 3000)
    assert np.allclose(out["input_features"][1].numpy(), batch[2].features[0])
    assert int((out["input_ids"] == chat.audio).sum()) == 750
    row = out["attention_mask"][1]
    assert int(row.sum()) == len(batch[1].input_ids) and int(row[-1]) == 0  # right padding
    left = SpeechCollator(pad_id=chat.pad, padding_side="left")(batch)
    assert int(left["attention_mask"][1][0]) == 0 and int(left["attention_mask"][1][-1]) == 1


def test_float16_features_reach_the_model_unchanged(parts) -> None:
    """Features stay float16 from the cache through the collator; the model casts them to its dtype on its device,
    so the loss equals the one from float32 features of the same values."""
    import torch
    from transformers import VoxtralForConditionalGeneration

    from sllm_lib.models.builders import tiny_voxtral_config

    tok, chat, fe = parts
    asr = read_records(SAMPLE / "asr_train.jsonl", "asr").records[:2]
    batch = [encode_record(r, "asr", tokenizer=tok, chat=chat, feature_extractor=fe, max_seq_len=1024) for r in asr]
    assert all(e.features.dtype == np.float16 for e in batch)
    out = SpeechCollator(pad_id=chat.pad)(batch)
    assert out["input_features"].dtype == torch.float16
    torch.manual_seed(0)
    model = VoxtralForConditionalGeneration(tiny_voxtral_config(vocab_size=len(tok), audio_token_id=chat.audio)).eval()
    with torch.no_grad():
        loss16 = model(**out).loss
        loss32 = model(**{**out, "input_features": out["input_features"].float()}).loss
    assert torch.isfinite(loss16) and loss16.item() == loss32.item()


@pytest.mark.parametrize("with_target", [True, False])
def test_encode_records_equals_one_at_a_time(parts, tmp_path, with_target) -> None:
    """Batched target tokenization and features read ahead through the cache give the very same examples."""
    from sllm_lib.audio.features import set_feature_cache
    from sllm_lib.cache import FeatureCache

    tok, chat, fe = parts
    assert tok.is_fast  # the batched path is the one under test
    asr = read_records(SAMPLE / "asr_train.jsonl", "asr").records[:6]
    text = [{"instruction": "질문", "input": f"열이 {i}일째 나요", "output": "해열제를 드세요" * (i + 1)} for i in range(5)]
    kw = dict(tokenizer=tok, chat=chat, feature_extractor=fe, with_target=with_target)
    for records, kind, limit in [(asr, "asr", 10_000), (text, "text_qa", 256), (text, "text_qa", 30)]:
        one = [encode_record(r, kind, max_seq_len=limit, **kw) for r in records]
        set_feature_cache(FeatureCache(str(tmp_path / "c"), prefetch=3))
        try:
            for _ in range(2):  # computed, then read back
                many = encode_records(records, kind, max_seq_len=limit, **kw)
                assert [m is None for m in many] == [o is None for o in one]
                for m, o in zip(many, one):
                    if o is not None:
                        assert (m.input_ids, m.labels, m.target, m.kind) == (o.input_ids, o.labels, o.target, o.kind)
                        assert (m.features is None) == (o.features is None)
                        if o.features is not None:
                            np.testing.assert_array_equal(m.features, o.features)
        finally:
            set_feature_cache(None)
    short = [encode_record(r, "text_qa", max_seq_len=30, **kw) for r in text]
    assert any(len(o.input_ids) == 30 for o in short) == with_target  # the 30-token case truncates answers


def test_mixture_follows_weights_and_cycles_small_sets() -> None:
    picks = mixture_indices([10, 4], [1.0, 1.0], seed=0)
    counts = [sum(1 for d, _ in picks if d == k) for k in (0, 1)]
    assert counts == [7, 7]  # 14 rows split evenly; the 4-row set is cycled
    assert {r for d, r in picks if d == 1} == {0, 1, 2, 3}
    assert picks == mixture_indices([10, 4], [1.0, 1.0], seed=0)
