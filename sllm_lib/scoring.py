"""Generate and score: batched greedy (or sampled) generation on encoded records, decoded, and the metrics of the
references. The one loop behind the eval stage, `sllm eval` / the nightly job (eval.scoring) and the quantize
stage's quality check."""

from __future__ import annotations

from typing import Any, Callable

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
    results = compute_metrics(names, refs, hyps, labels=ref.labels, options=ref.metric_options)
    preds = [{"dataset": ref.task_name, "kind": ref.kind, "reference": r, "prediction": h,
              **{n: res.per_sample[i] for n, res in results.items() if len(res.per_sample) == len(refs)}}
             for i, (r, h) in enumerate(zip(refs, hyps))]
    return {n: res.score for n, res in results.items()}, preds, data
