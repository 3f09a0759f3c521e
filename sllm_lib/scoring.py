"""Generate and score: batched greedy (or sampled) generation on encoded records, decoded, and the metrics of the
references. The one loop behind the eval stage, `sllm eval` / the nightly job (eval.scoring) and the quantize
stage's quality check."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from sllm_lib.data.encode import SpeechCollator, encode_records
from sllm_lib.data.records import classification_as_text_qa, read_records
from sllm_lib.metrics.registry import DEFAULT_METRICS, compute_metrics
from sllm_lib.spec import EvalDatasetRef


def generate(model: Any, batch_examples: list[Any], *, chat: Any, gen: Any) -> list[list[int]]:
    """Left-padded batched generation; returns the new token ids of each example (prompt cut off)."""
    import torch

    batch = SpeechCollator(pad_id=chat.pad, padding_side="left")(batch_examples)
    kwargs: dict[str, Any] = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  max_new_tokens=gen.max_new_tokens, do_sample=gen.do_sample, pad_token_id=chat.pad,
                                  eos_token_id=chat.eos, use_cache=True)
    if gen.do_sample:
        kwargs["temperature"] = gen.temperature
    for key, value in batch.items():  # audio features, or a VLM's pixel_values (+ image sizes/grids)
        if key not in ("input_ids", "attention_mask", "labels"):
            kwargs[key] = value
    with torch.no_grad():
        out = model.generate(**kwargs)
    return [row[batch["input_ids"].shape[1]:].tolist() for row in out]


def generate_texts(model: Any, examples: list[Any], *, tokenizer: Any, chat: Any, gen: Any,
                   on_batch: Callable[[int], None] | None = None) -> list[str]:
    """The decoded answer of every example, in batches of `gen.batch_size`; `on_batch(n)` after each batch."""
    hyps: list[str] = []
    for i in range(0, len(examples), gen.batch_size):
        batch = examples[i:i + gen.batch_size]
        for ids in generate(model, batch, chat=chat, gen=gen):
            ids = [t for t in ids if t not in (chat.pad, chat.eos)]
            hyps.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
        if on_batch is not None:
            on_batch(len(batch))
    return hyps


def transcribe_whisper(model: Any, tokenizer: Any, features: Any, records: list[dict[str, Any]], *, language: str,
                       gen: Any, on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Greedy (or sampled) transcripts of ASR records by a Whisper model with its own decoder: each record's
    30 s log-mel chunks (through the active feature cache) transcribed in batches of `gen.batch_size` chunks and
    joined. The language is the record's `language` field, else `language`; the task is always "transcribe"."""
    import torch

    from sllm_lib.audio.features import audio_features_many

    chunks: list[tuple[int, np.ndarray, str]] = []  # (record index, one chunk, language)
    for i, (record, feats) in enumerate(zip(records, audio_features_many([r["audio_path"] for r in records],
                                                                         features))):
        lang = str(record.get("language") or language)
        chunks += [(i, chunk, lang) for chunk in feats]
    texts: list[list[str]] = [[] for _ in records]
    ends = set({i: j for j, (i, _, _) in enumerate(chunks)}.values())  # each record's last chunk
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    for start in range(0, len(chunks), gen.batch_size):
        batch = chunks[start:start + gen.batch_size]
        x = torch.from_numpy(np.stack([c for _, c, _ in batch])).to(device=device, dtype=dtype)
        kwargs: dict[str, Any] = dict(input_features=x, language=[lang for _, _, lang in batch], task="transcribe",
                                      max_new_tokens=gen.max_new_tokens, do_sample=gen.do_sample)
        if gen.do_sample:
            kwargs["temperature"] = gen.temperature
        with torch.no_grad():
            out = model.generate(**kwargs)
        for (i, _, _), ids in zip(batch, out):
            texts[i].append(tokenizer.decode(ids, skip_special_tokens=True).strip())
        if on_batch is not None:
            on_batch(sum(1 for j in range(start, start + len(batch)) if j in ends))
    return [" ".join(t for t in parts if t) for parts in texts]


def evaluate_dataset(ref: EvalDatasetRef, *, model: Any, tokenizer: Any, features: Any, chat: Any,
                     gen: Any) -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
    """Predictions and metrics for one dataset."""
    data = read_records(ref.path, ref.kind, on_bad_record=ref.on_bad_record, labels=ref.labels,
                        max_text_chars=ref.max_text_chars)
    kind = ref.kind
    if kind == "classification":  # asked as in training; the generated text is parsed back to a label
        data, kind = classification_as_text_qa(data, ref.instruction, ref.task_name), "text_qa"
    records = data.records[: ref.max_records] if ref.max_records else data.records
    examples = encode_records(records, kind, tokenizer=tokenizer, chat=chat, feature_extractor=features,
                              max_seq_len=10**9, with_target=False)
    hyps = generate_texts(model, examples, tokenizer=tokenizer, chat=chat, gen=gen)
    refs = [e.target for e in examples]
    names = ref.metrics or DEFAULT_METRICS[ref.kind]
    results = compute_metrics(names, refs, hyps, labels=ref.labels, options=ref.metric_options, language=ref.language)
    preds = [{"dataset": ref.task_name, "kind": ref.kind, "reference": r, "prediction": h,
              **{n: res.per_sample[i] for n, res in results.items() if len(res.per_sample) == len(refs)}}
             for i, (r, h) in enumerate(zip(refs, hyps))]
    return {n: res.score for n, res in results.items()}, preds, data
