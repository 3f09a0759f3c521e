"""Length-grouped batches vs plain shuffled batches, side by side in one run.

For each shipped training set (and the demo's stage-3 mixture) it reports the padding share of both
batchings and the wall time of one forward+backward epoch of the tiny model over each, so the ratio
is measured on the same machine, model and data in the same process.

    python bench/length_grouping.py [--batch-size 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
SETS = [("text_qa_train", "text_qa"), ("asr_train", "asr"), ("speech_qa_train", "speech_qa")]


def _encode_all(tokenizer, chat, features):
    from sllm_lib.data.encode import encode_record, mixture_indices
    from sllm_lib.data.records import read_records

    encoded = {}
    for name, kind in SETS:
        recs = read_records(SAMPLE / f"{name}.jsonl", kind).records
        encoded[name] = [encode_record(r, kind, tokenizer=tokenizer, chat=chat, feature_extractor=features,
                                       max_seq_len=2048) for r in recs]
    parts = [encoded[n] for n, _ in SETS]
    picks = mixture_indices([len(p) for p in parts], [0.5, 1.0, 1.0], seed=7)
    encoded["stage3_mixture"] = [parts[d][i] for d, i in picks]
    return encoded


def _epoch_seconds(model, examples, batches, collator) -> float:
    import torch

    t0 = time.perf_counter()
    for b in batches:
        batch = collator([examples[i] for i in b])
        loss = model(**batch).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table
    from transformers import VoxtralForConditionalGeneration

    from sllm_lib.data.encode import SpeechCollator
    from sllm_lib.data.sampler import length_grouped_batches, padding_share, random_batches
    from sllm_lib.models.builders import chat_tokens, load_tokenizer_and_features, materialize_tiny

    torch.manual_seed(0)
    path = materialize_tiny("voxtral")
    tokenizer, features = load_tokenizer_and_features(str(path))
    model = VoxtralForConditionalGeneration.from_pretrained(path)
    chat = chat_tokens(tokenizer, model.config)
    collator = SpeechCollator(pad_id=chat.pad)
    table = Table(title=f"length-grouped vs random batches, batch size {args.batch_size}, tiny Voxtral, CPU")
    for col in ("dataset", "rows", "padding random", "padding grouped", "epoch s random", "epoch s grouped",
                "speed-up"):
        table.add_column(col, justify="right")
    for name, examples in _encode_all(tokenizer, chat, features).items():
        lengths = [len(e.input_ids) for e in examples]
        rnd = random_batches(lengths, args.batch_size, seed=0)
        grp = length_grouped_batches(lengths, args.batch_size, seed=0)
        t_rnd = min(_epoch_seconds(model, examples, rnd, collator) for _ in range(args.repeats))
        t_grp = min(_epoch_seconds(model, examples, grp, collator) for _ in range(args.repeats))
        table.add_row(name, str(len(examples)), f"{padding_share(lengths, rnd):.1%}",
                      f"{padding_share(lengths, grp):.1%}", f"{t_rnd:.2f}", f"{t_grp:.2f}", f"{t_rnd / t_grp:.2f}x")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
