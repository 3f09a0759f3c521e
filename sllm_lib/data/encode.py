"""Records -> token ids with answer-only labels, audio placeholders, mixtures and the collator.

Prompts are built at the token-id level from the model's control tokens ([INST], [/INST],
[BEGIN_AUDIO], [AUDIO]), which the tiny preset's tokenizer and Mistral's tekken tokenizer both carry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sllm_lib.audio.features import FRAMES_PER_AUDIO_TOKEN, audio_features, audio_features_many

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
ASR_PROMPT = {"ko": "다음 음성을 한국어로 받아 적으세요.", "en": "Transcribe the audio."}


@dataclass
class Example:
    """One tokenized training or evaluation example."""

    input_ids: list[int]
    labels: list[int]
    features: np.ndarray | dict[str, np.ndarray] | None  # audio float16 (n_chunks, n_mels, 3000); images by name
    target: str
    kind: str


def prompt_text(record: dict, kind: str) -> str:
    """The user-turn text of a record (the instruction plus its input, or the ASR request)."""
    if kind == "asr":
        return ASR_PROMPT.get(record.get("language", "ko"), ASR_PROMPT["en"])
    text = record["instruction"]
    if record.get("input"):
        text = f"{text}\n{record['input']}"
    return text


def target_text(record: dict, kind: str) -> str:
    """What the model must produce."""
    return record["transcript"] if kind == "asr" else record["output"]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _encode_many(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """`_encode` of each text. A fast (Rust-backed) tokenizer gets one batched call per 1,024 texts: its
    single-text encode is that same batch call with one element, so the ids are identical."""
    if not getattr(tokenizer, "is_fast", False):
        return [_encode(tokenizer, t) for t in texts]
    out: list[list[int]] = []
    for i in range(0, len(texts), 1024):
        out += [list(ids) for ids in tokenizer(texts[i:i + 1024], add_special_tokens=False)["input_ids"]]
    return out


_PROMPTS: dict[int, tuple[Any, int, dict[str, tuple[int, ...]]]] = {}  # id -> (tokenizer, its size, text -> ids)


def _encode_prompt(tokenizer: Any, text: str) -> tuple[int, ...]:
    """`_encode` of a prompt text, memoised per tokenizer: every ASR record asks the same question, and a warm
    feature-cache read is faster than tokenizing it again."""
    held = _PROMPTS.get(id(tokenizer))
    size = len(tokenizer)  # a token added since: tokenize again
    if held is None or held[0] is not tokenizer or held[1] != size:
        if len(_PROMPTS) > 8:
            _PROMPTS.clear()
        held = _PROMPTS[id(tokenizer)] = (tokenizer, size, {})
    memo = held[2]
    ids = memo.get(text)
    if ids is None:
        if len(memo) > 4096:
            memo.clear()
        ids = memo[text] = tuple(_encode(tokenizer, text))
    return ids


def build_prompt_ids(tokenizer: Any, chat: Any, text: str, n_audio_tokens: int) -> list[int]:
    """[bos][INST]([BEGIN_AUDIO][AUDIO]*n_audio_tokens)text[/INST] (375 audio tokens per 30 s chunk)."""
    ids: list[int] = []
    if chat.bos is not None:
        ids.append(chat.bos)
    if chat.inst is not None:
        ids.append(chat.inst)
    if n_audio_tokens:
        if chat.begin_audio is not None:
            ids.append(chat.begin_audio)
        ids += [chat.audio] * n_audio_tokens
    ids += _encode_prompt(tokenizer, text)
    if chat.inst_end is not None:
        ids.append(chat.inst_end)
    return ids


def encode_record(
    record: dict, kind: str, *, tokenizer: Any, chat: Any, feature_extractor: Any, max_seq_len: int,
    with_target: bool = True, audio: np.ndarray | None = None, answer_ids: Sequence[int] | None = None,
) -> Example | None:
    """Tokenize one record; loss only on the target (+eos). None when the prompt alone exceeds max_seq_len.

    `audio`, `answer_ids`: the record's features and tokenized target when the caller already has them
    (`encode_records` reads features ahead and tokenizes targets in batches).

    `chat` is the speech LLM's ChatTokens, or a text-only causal LM's TemplateChat (its chat template, text only).
    """
    if kind == "vision":
        return _encode_vision(record, tokenizer=tokenizer, chat=chat, max_seq_len=max_seq_len, with_target=with_target)
    templated = getattr(chat, "prompt_ids", None)
    if templated is not None and kind != "text_qa":
        raise ValueError(f"{kind} records need the speech LLM; a text-only causal LM takes text_qa records only")
    feats = None
    if kind in ("asr", "speech_qa"):
        feats = audio if audio is not None else audio_features(record["audio_path"], feature_extractor)
    # (chunks, mels, frames): every FRAMES_PER_AUDIO_TOKEN frames of every chunk is one audio token
    n_audio = 0 if feats is None else feats.shape[0] * (feats.shape[-1] // FRAMES_PER_AUDIO_TOKEN)
    if templated is not None:
        prompt = templated(tokenizer, prompt_text(record, kind))
    else:
        prompt = build_prompt_ids(tokenizer, chat, prompt_text(record, kind), n_audio)
    target = target_text(record, kind)
    if not with_target:
        return Example(prompt, [IGNORE_INDEX] * len(prompt), feats, target, kind)
    answer = (list(answer_ids) if answer_ids is not None else _encode(tokenizer, target)) + [chat.eos]
    room = max_seq_len - len(prompt)
    if room < 2:
        return None
    answer = answer[:room]  # truncate the answer tail, never the audio placeholders
    return Example(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, feats, target, kind)


def encode_records(
    records: Sequence[dict], kind: str, *, tokenizer: Any, chat: Any, feature_extractor: Any, max_seq_len: int,
    with_target: bool = True,
) -> list[Example | None]:
    """`encode_record` of each record, in order: the same examples, made faster. Targets are tokenized in
    batches, and audio features are read ahead, several at once, through the active feature cache (parallel S3
    GETs on a fresh node) while the records are tokenized."""
    if kind == "vision" or not records:
        return [encode_record(r, kind, tokenizer=tokenizer, chat=chat, feature_extractor=feature_extractor,
                              max_seq_len=max_seq_len, with_target=with_target) for r in records]
    answers: list = (_encode_many(tokenizer, [target_text(r, kind) for r in records]) if with_target
                     else [None] * len(records))
    audio = (audio_features_many([r["audio_path"] for r in records], feature_extractor)
             if kind in ("asr", "speech_qa") else iter([None] * len(records)))
    try:
        return [encode_record(r, kind, tokenizer=tokenizer, chat=chat, feature_extractor=feature_extractor,
                              max_seq_len=max_seq_len, with_target=with_target, audio=feats, answer_ids=ids)
                for r, feats, ids in zip(records, audio, answers)]
    finally:
        getattr(audio, "close", lambda: None)()  # an error mid-way: stop the read-ahead


def _encode_vision(record: dict, *, tokenizer: Any, chat: Any, max_seq_len: int, with_target: bool) -> Example | None:
    """Images + rendered prompt (through the processor) then the target; loss on the target (+eos) only."""
    if not hasattr(chat, "processor"):
        raise ValueError("vision records need a vision-language model")
    prompt, tensors = chat.prompt(record)
    target = record["output"]
    if not with_target:
        return Example(prompt, [IGNORE_INDEX] * len(prompt), tensors, target, "vision")
    room = max_seq_len - len(prompt)
    if room < 2:
        return None
    answer = (_encode(tokenizer, target) + [chat.eos])[:room]
    return Example(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, tensors, target, "vision")


def mixture_indices(sizes: Sequence[int], weights: Sequence[float], *, seed: int) -> list[tuple[int, int]]:
    """(dataset, row) pairs for one epoch: dataset i gets round(w_i / sum(w) * total) rows, cycling if short."""
    total = sum(sizes)
    wsum = float(sum(weights))
    rng = np.random.default_rng(seed)
    out: list[tuple[int, int]] = []
    for d, (size, w) in enumerate(zip(sizes, weights)):
        n = max(1, int(round(w / wsum * total)))
        order = np.concatenate([rng.permutation(size) for _ in range(-(-n // size))])[:n]
        out += [(d, int(r)) for r in order]
    return out


class ExampleDataset:
    """A map-style dataset over encoded examples (torch's DataLoader accepts it)."""

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]

    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.examples]


@dataclass
class SpeechCollator:
    """Pads a batch; audio chunks of all samples are concatenated in row order (Voxtral scatters them so).

    Audio features stay float16, as cached: half the bytes to copy to the device, where Voxtral's audio tower
    casts them to its own dtype (`input_features.to(dtype=conv1.weight.dtype, device=...)`), values unchanged.
    """

    pad_id: int
    padding_side: str = "right"

    def __call__(self, batch: list[Example]) -> dict[str, Any]:
        import torch

        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            n = len(e.input_ids)
            sl = slice(0, n) if self.padding_side == "right" else slice(width - n, width)
            ids[i, sl] = torch.tensor(e.input_ids)
            labels[i, sl] = torch.tensor(e.labels)
            mask[i, sl] = 1
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        feats = [e.features for e in batch if e.features is not None]
        if feats and isinstance(feats[0], dict):  # a VLM processor's image inputs, rows concatenated in order
            for key in feats[0]:
                out[key] = torch.from_numpy(np.concatenate([f[key] for f in feats], axis=0))
        elif feats:
            out["input_features"] = torch.from_numpy(np.concatenate(feats, axis=0))
        return out
