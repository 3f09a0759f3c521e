"""Eval generation throughput: sllm's batched left-padded generation vs one sample at a time.

The baseline is what a user writes first: a loop calling `model.generate` per sample. Both run in
the same process on the same tiny model (random weights, so every answer runs to max_new_tokens:
the worst case for throughput) and the same held-out sets of the medical_speech suite.

    python bench/eval_throughput.py [--batch-size 8] [--max-new-tokens 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(model, tokenizer, features, suite, batch_size: int, max_new_tokens: int) -> tuple[int, float]:
    from eval.scoring import score_task
    from sllm_lib.models.builders import chat_tokens

    chat = chat_tokens(tokenizer, model.config)
    over = suite.model_copy(update={"generation": suite.generation.model_copy(
        update={"batch_size": batch_size, "max_new_tokens": max_new_tokens})})
    n, seconds = 0, 0.0
    for task in over.tasks:
        task = task.model_copy(update={"generation": task.generation.model_copy(
            update={"batch_size": None, "max_new_tokens": None})})
        _, samples, secs = score_task(task, over, model=model, tokenizer=tokenizer, features=features, chat=chat)
        n += len(samples)
        seconds += secs
    return n, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import logging

    import torch

    from sllm_lib.models.refs import load_model
    from eval.suites import find_suite, load_suite
    from sllm_lib.models.builders import materialize_tiny

    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    suite = load_suite(find_suite("medical_speech"))
    model, tokenizer, features = load_model(materialize_tiny("voxtral"))
    _run(model, tokenizer, features, suite, args.batch_size, 4)  # warm-up (allocator, kernels)
    rows = []
    for label, bs in (("one at a time (baseline)", 1), (f"sllm batched (batch {args.batch_size})", args.batch_size)):
        best = float("inf")
        n = 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            n, _ = _run(model, tokenizer, features, suite, bs, args.max_new_tokens)
            best = min(best, time.perf_counter() - t0)
        rows.append((label, n, best, n / best))
    print(f"tiny:voxtral, suite medical_speech ({rows[0][1]} samples: 8 ASR, 8 speech QA, 16 text QA), "
          f"max_new_tokens {args.max_new_tokens}, torch threads {torch.get_num_threads()}, best of {args.repeats}")
    print(f"{'':34} {'samples':>8} {'seconds':>8} {'samples/s':>10}")
    for label, n, secs, sps in rows:
        print(f"{label:34} {n:>8} {secs:>8.2f} {sps:>10.2f}")
    print(f"speed-up: {rows[1][3] / rows[0][3]:.2f}x")


if __name__ == "__main__":
    main()
