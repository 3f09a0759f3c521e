"""Text-only causal LMs: the chat-template prompt (system prompt, loss on the answer only), the architecture
checks of causal_sft vs the speech stages, and the spec rules of causal_sft."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from sllm_lib.data.encode import IGNORE_INDEX, encode_record
from sllm_lib.errors import JobSpecError
from sllm_lib.models.builders import (
    TINY_CHAT_TEMPLATE,
    TemplateChat,
    build_char_tokenizer,
    chat_for,
    is_speech_model,
    korean_char_vocab,
    tiny_llama_config,
    tiny_voxtral_config,
)
from sllm_lib.spec import load_job_spec
from sllm_lib.training.runner import check_architecture
from tests.conftest import SAMPLE

RECORD = {"instruction": "두통이 심해요", "input": "", "output": "물을 드세요"}


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_char_tokenizer()
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def test_prompt_follows_the_chat_template_with_the_system_prompt(tokenizer) -> None:
    chat = chat_for(tokenizer, tiny_llama_config(vocab_size=len(korean_char_vocab())), system_prompt="의사입니다")
    assert isinstance(chat, TemplateChat)
    ids = chat.prompt_ids(tokenizer, "두통이 심해요")
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<s>의사입니다\n[INST]두통이 심해요[/INST]"
    no_system = TemplateChat(eos=chat.eos, pad=chat.pad).prompt_ids(tokenizer, "두통이 심해요")
    assert tokenizer.decode(no_system, skip_special_tokens=False) == "<s>[INST]두통이 심해요[/INST]"


def test_loss_only_on_the_answer_and_its_eos(tokenizer) -> None:
    chat = TemplateChat(eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id, system_prompt="의사입니다")
    ex = encode_record(RECORD, "text_qa", tokenizer=tokenizer, chat=chat, feature_extractor=None, max_seq_len=512)
    prompt = chat.prompt_ids(tokenizer, RECORD["instruction"])
    assert ex.input_ids[: len(prompt)] == prompt
    assert ex.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    answer = ex.labels[len(prompt):]
    assert tokenizer.decode(answer[:-1]) == "물을 드세요" and answer[-1] == tokenizer.eos_token_id
    # truncation cuts the answer's tail, never the prompt; a prompt longer than the limit drops the record
    short = encode_record(RECORD, "text_qa", tokenizer=tokenizer, chat=chat, feature_extractor=None,
                          max_seq_len=len(prompt) + 3)
    assert short.input_ids[: len(prompt)] == prompt and len(short.input_ids) == len(prompt) + 3
    assert encode_record(RECORD, "text_qa", tokenizer=tokenizer, chat=chat, feature_extractor=None,
                         max_seq_len=len(prompt)) is None


def test_audio_records_are_refused_for_a_causal_lm(tokenizer) -> None:
    chat = TemplateChat(eos=2, pad=0)
    with pytest.raises(ValueError, match="text-only causal LM takes text_qa records only"):
        encode_record({"audio_path": "x.wav", "transcript": "t"}, "asr", tokenizer=tokenizer, chat=chat,
                      feature_extractor=None, max_seq_len=64)


def test_a_tokenizer_without_chat_template_is_a_clear_error() -> None:
    with pytest.raises(JobSpecError, match="has no chat template; use an instruct model"):
        chat_for(build_char_tokenizer(), tiny_llama_config(vocab_size=100))


def test_speech_config_gets_the_control_token_chat(tokenizer) -> None:
    vocab = korean_char_vocab()
    cfg = tiny_voxtral_config(vocab_size=len(vocab), audio_token_id=vocab.index("[AUDIO]"))
    assert is_speech_model(cfg) and not is_speech_model(tiny_llama_config(vocab_size=10))
    assert not isinstance(chat_for(tokenizer, cfg, system_prompt="ignored"), TemplateChat)


@pytest.mark.parametrize(("kind", "config", "needle"), [
    ("causal_sft", "voxtral", "is a speech LLM (voxtral); use text_sft"),
    ("text_sft", "llama", "is a text-only llama model; text_sft needs the speech LLM (use causal_sft)"),
    ("asr_adapter", "llama", "asr_adapter needs the speech LLM"),
])
def test_stage_and_architecture_must_match(kind: str, config: str, needle: str) -> None:
    vocab = korean_char_vocab()
    cfg = (tiny_voxtral_config(vocab_size=len(vocab), audio_token_id=vocab.index("[AUDIO]")) if config == "voxtral"
           else tiny_llama_config(vocab_size=len(vocab)))
    with pytest.raises(JobSpecError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_architecture(SimpleNamespace(kind=kind, name="s"), cfg, "some/model")
    check_architecture(SimpleNamespace(kind="causal_sft" if config == "llama" else "text_sft", name="s"), cfg, "m")


def _spec(tmp: Path, stage: dict) -> Path:
    base = {"name": "s1", "kind": "causal_sft", "train": {"max_steps": 2},
            "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl")}]},
            "lora": {"r": 4}}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "j", "model": {"base": "tiny:llama"}, "stages": [{**base, **stage}]},
                                   allow_unicode=True), encoding="utf-8")
    return path


def test_causal_sft_spec_defaults_and_rules(tmp_path: Path) -> None:
    job = load_job_spec(_spec(tmp_path, {"system_prompt": "의사입니다"}))
    s = job.stage("s1")
    assert s.kind == "causal_sft" and s.trainable == ["lora"] and s.system_prompt == "의사입니다"
    with pytest.raises(JobSpecError, match=r"stages\[0\].*causal_sft takes text_qa or classification datasets only"):
        load_job_spec(_spec(tmp_path, {"data": {"train": [{"kind": "asr", "path": str(SAMPLE / "asr_train.jsonl")}]}}))
    with pytest.raises(JobSpecError, match="a text-only causal LM has no audio parts"):
        load_job_spec(_spec(tmp_path, {"trainable": ["lora", "projector"]}))


def test_shipped_medqa_specs_validate() -> None:
    repo = Path(__file__).resolve().parents[3]
    real = load_job_spec(repo / "jobs" / "medqa_exaone_qlora.yaml")
    assert real.model.base == "LGAI-EXAONE/EXAONE-3.5-7.8B-Instruct" and real.model.trust_remote_code
    assert [s.kind for s in real.stages] == ["causal_sft", "merge", "eval"]
    assert real.stage("qa_qlora").quant.bits == 4
    tiny = load_job_spec(repo / "jobs" / "medqa_tiny.yaml")
    assert tiny.model.base == "tiny:llama" and tiny.stage("merge").register_as.name == "medqa-tiny"


def test_a_merged_folder_loads_with_the_trust_its_merge_recorded(tmp_path: Path) -> None:
    from sllm_lib.models.builders import folder_model_spec

    assert folder_model_spec(tmp_path).trust_remote_code is False  # no manifest: never trusted implicitly
    (tmp_path / "manifest.json").write_text('{"trust_remote_code": true}', encoding="utf-8")
    spec = folder_model_spec(tmp_path)
    assert spec.base == str(tmp_path) and spec.trust_remote_code is True
