"""The training loss with logits only where a label follows vs the Trainer's full-logits loss, side by side.

One forward + backward per batch through the stage trainer's `compute_loss`, the same batches both ways in one
process (alternating, so drift hits both), on `mini:voxtral` (SmolLM2's 49,152-token vocabulary) by default or
`tiny:voxtral` (random weights). Rows: the ASR set (audio tokens and prompt carry no label), the speech QA set
and the text QA set of `data/mini_en` (`data/sample` for tiny). It reports the labelled share of positions, ms
per step both ways, the ratio, the largest loss difference and the logits' bytes per batch both ways (fp32;
Voxtral-Mini-3B's 131,072-token vocabulary scales them by 2.7x).

    python bench/labelled_logits.py [--model mini|tiny] [--batch-size 8] [--batches 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SETS = [("asr_train", "asr"), ("speech_qa_train", "speech_qa"), ("text_qa_train", "text_qa")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["mini", "tiny"], default="mini")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=3, help="timed batches per set (after one warm-up)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch
    from transformers import TrainingArguments

    from sllm_lib.data.encode import SpeechCollator, encode_records
    from sllm_lib.data.records import read_records
    from sllm_lib.models.builders import chat_for, materialize_tiny
    from sllm_lib.models.mini import materialize_mini
    from sllm_lib.models.refs import load_model
    from sllm_lib.training.runner import _trainer_class

    folder = materialize_mini("voxtral") if args.model == "mini" else materialize_tiny("voxtral")
    data = REPO / "data" / ("mini_en" if args.model == "mini" else "sample")
    model, tokenizer, extractor = load_model(folder)
    from sllm_lib.models.adapters import prepare_trainable
    from sllm_lib.spec.stages import LoraSpec

    # stage 3's trainable set, as jobs/demo_sllm_mini.yaml: LoRA r16 on the 7 projections, and the projector
    lora = LoraSpec(r=16, alpha=32, dropout=0.0,
                    targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = prepare_trainable(model, lora=lora, trainable=["projector", "lora"], gradient_checkpointing=False)
    model.train()
    chat = chat_for(tokenizer, model.config)
    collate = SpeechCollator(pad_id=chat.pad)
    vocab = model.get_output_embeddings().weight.shape[0]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer_class()(model=model, args=TrainingArguments(output_dir=tmp, report_to=[], use_cpu=True))
    trainer.model_accepts_loss_kwargs = False

    def step(batch: dict, labelled: bool) -> tuple[float, float]:
        trainer.labelled_logits = labelled
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        return time.perf_counter() - t0, float(loss.detach())

    rows = []
    for name, kind in SETS:
        records = read_records(data / f"{name}.jsonl", kind).records[:args.batch_size * (args.batches + 1)]
        examples = encode_records(records, kind, tokenizer=tokenizer, chat=chat, feature_extractor=extractor,
                                  max_seq_len=1024)
        examples = [e for e in examples if e is not None]  # None: longer than max_seq_len
        batches = [collate(examples[i:i + args.batch_size]) for i in range(0, len(examples), args.batch_size)]
        step(batches[0], True), step(batches[0], False)  # warm-up
        full_s = ours_s = 0.0
        diff = 0.0
        positions = labelled = 0
        for b in batches[1:]:
            t_full, l_full = step(b, False)
            t_ours, l_ours = step(b, True)
            full_s, ours_s, diff = full_s + t_full, ours_s + t_ours, max(diff, abs(l_full - l_ours))
            positions += b["labels"].numel()
            labelled += int((b["labels"][:, 1:] != -100).sum())
        n = len(batches) - 1
        rows.append({"set": name, "labelled_share": labelled / positions, "full_ms": 1000 * full_s / n,
                     "labelled_ms": 1000 * ours_s / n, "speedup": full_s / ours_s, "max_loss_diff": diff,
                     "logits_mb_full": positions / n * vocab * 4 / 1e6,
                     "logits_mb_labelled": labelled / n * vocab * 4 / 1e6})

    print(f"model {args.model} ({vocab:,} vocab), batch {args.batch_size}, {args.batches} batches per set, "
          f"{torch.get_num_threads()} threads")
    print(f"{'set':<16} {'labelled':>8} {'full ms':>9} {'ours ms':>9} {'speedup':>8} {'|dloss|':>9} "
          f"{'logits MB':>16}")
    for r in rows:
        print(f"{r['set']:<16} {r['labelled_share']:>8.1%} {r['full_ms']:>9.0f} {r['labelled_ms']:>9.0f} "
              f"{r['speedup']:>7.2f}x {r['max_loss_diff']:>9.1e} "
              f"{r['logits_mb_full']:>7.0f} -> {r['logits_mb_labelled']:<6.0f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "vocab": vocab, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
