"""What the checkpoint watcher costs training: the same stage with and without `watch:`, side by side, in one run.

    python bench/watch_overhead.py [--steps 60] [--save-steps 15] [--repeats 2] [--nproc 1]

The stage is LoRA on the tiny model through the local executor (one training process, as on a GPU node where the
evaluations run on other devices or nodes). "training" is the optimizer loop's own wall time (train_loop_s: no
loading, encoding or saving), "stage" the whole stage function, "pipeline" submit to the last score. The watcher
scores every checkpoint as a process of its own while training runs; on a machine with few cores the evaluation
processes compete with training for the same cores, which is what the ratio shows here. The figures are printed
as a table (median of the repeats) and the ratios watch on / watch off.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _spec(tmp: Path, tag: str, *, steps: int, save_steps: int, watch: bool, nproc: int) -> Path:
    import yaml

    suite = tmp / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "bench_watch", "generation": {"max_new_tokens": 8, "batch_size": 4}, "sample_limit": 4,
        "tasks": [{"name": "text_qa", "type": "text_qa", "data": str(REPO / "data/sample/text_qa_val.jsonl"),
                   "metrics": ["rougeL", "cer"]}]}), encoding="utf-8")
    stage = {"name": "text", "kind": "text_sft",
             "data": {"train": [{"kind": "text_qa", "path": str(REPO / "data/sample/text_qa_train.jsonl")}]},
             "train": {"per_device_bsz": 2, "max_steps": steps, "precision": "fp32", "max_seq_len": 96,
                       "save_steps": save_steps, "save_total_limit": 2, "logging_steps": 5, "seed": 1},
             "lora": {"r": 4, "alpha": 8}, "trainable": ["lora"]}
    if watch:
        stage["watch"] = {"suite": str(suite), "poll_s": 1, "max_concurrent": 1}
    (tmp / "profile.yaml").write_text(f"kind: local\nname: bench\nnproc: {nproc}\n", encoding="utf-8")
    path = tmp / f"{tag}.yaml"
    path.write_text(yaml.safe_dump({"name": f"bench-{tag}", "model": {"base": "tiny:voxtral"},
                                    "output_dir": str(tmp / "runs"), "cluster": str(tmp / "profile.yaml"),
                                    "stages": [stage]}), encoding="utf-8")
    return path


def _run(path: Path) -> dict[str, float]:
    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.spec import find_cluster_profile, load_job_spec

    spec = load_job_spec(path)
    plan = build_plan(spec, path, find_cluster_profile(spec.cluster))
    t0 = time.perf_counter()
    outcome = submit_pipeline(plan)
    m = outcome.results["text"].metrics
    scored = len(list((plan.stage_dir("text") / "watch").glob("step-*.json")))
    return {"training": m.get("train_loop_s", float("nan")), "stage": m["train_runtime_s"],
            "pipeline": time.perf_counter() - t0, "scored": float(scored)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--save-steps", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--nproc", type=int, default=1)
    args = ap.parse_args()

    rows: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for i in range(args.repeats):
            for mode in ("off", "on"):  # interleaved, so drift of the machine hits both alike
                folder = tmp / f"{mode}{i}"
                folder.mkdir()
                path = _spec(folder, mode, steps=args.steps, save_steps=args.save_steps, watch=mode == "on",
                             nproc=args.nproc)
                rows[mode].append(_run(path))
                print(f"  repeat {i + 1} watch {mode}: " + ", ".join(f"{k} {v:.1f}" for k, v in rows[mode][-1].items()),
                      flush=True)
    med = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in rows.items()}
    print(f"\n{args.steps} steps, a checkpoint every {args.save_steps}, {args.repeats} repeats (median), "
          f"{args.nproc} training process(es)")
    print(f"{'':12}{'training s':>12}{'stage s':>10}{'pipeline s':>12}{'scored':>8}")
    for mode in ("off", "on"):
        m = med[mode]
        print(f"{'watch ' + mode:12}{m['training']:12.1f}{m['stage']:10.1f}{m['pipeline']:12.1f}{m['scored']:8.0f}")
    print(f"{'on / off':12}{med['on']['training'] / med['off']['training']:11.2f}x"
          f"{med['on']['stage'] / med['off']['stage']:9.2f}x{med['on']['pipeline'] / med['off']['pipeline']:11.2f}x")


if __name__ == "__main__":
    main()
