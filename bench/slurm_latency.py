"""Submit -> stage function start on the local SLURM: sllm's SlurmExecutor vs bare submitit, side by side.

Needs a running local cluster:  eval "$(scripts/slurm_local.sh start /tmp/sllm-slurm)"
    python bench/slurm_latency.py [--repeats 5]

sllm's number includes what a real stage pays before its first line of work: the pickled request, the
worker's imports (torch, transformers) and reading the resolved spec. The bare baseline submits a function
that only records the time. Both use the same partition and resources.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _mark(path: str) -> None:
    Path(path).write_text(str(time.time()))


def bare(tmp: Path, i: int) -> float:
    import submitit

    ex = submitit.AutoExecutor(folder=str(tmp / f"bare{i}" / "%j"), cluster="slurm")
    ex.update_parameters(slurm_partition="debug", cpus_per_task=1, mem_gb=2, timeout_min=10)
    marker = tmp / f"bare{i}.t"
    t0 = time.time()
    job = ex.submit(_mark, str(marker))
    job.result()
    return float(marker.read_text()) - t0


def sllm(tmp: Path, i: int) -> float:
    import yaml

    from launch.executor import LaunchRequest
    from launch.slurm import SlurmExecutor
    from sllm_lib.spec import SlurmProfile, dump_resolved_yaml, load_job_spec

    run = tmp / f"sllm{i}"
    run.mkdir()
    spec = {"name": "lat", "model": {"base": "tiny:voxtral"}, "stages": [{
        "name": "text", "kind": "text_sft",
        "data": {"train": [{"kind": "text_qa", "path": str(REPO / "data/sample/text_qa_train.jsonl"),
                            "max_records": 4}]},
        "train": {"per_device_bsz": 2, "max_steps": 1, "precision": "fp32", "max_seq_len": 64},
        "lora": {"r": 2, "alpha": 4}, "trainable": ["lora"]}]}
    (run / "job.yaml").write_text(yaml.safe_dump(spec))
    resolved = run / "spec.resolved.yaml"
    resolved.write_text(dump_resolved_yaml(load_job_spec(run / "job.yaml")))
    req = LaunchRequest(job_name="lat", stage="text", spec_path=str(resolved), spec_hash="h", run_dir=str(run),
                        stage_dir=str(run / "stages" / "text"), tracking_uri="", tracking_strict=False, run_id=None)
    prof = SlurmProfile(kind="slurm", name="lat", partition="debug", cpus_per_task=1, mem_gb=2, timeout_min=10,
                       python="submitting")
    t0 = time.time()
    SlurmExecutor(prof).submit(req).result(timeout_s=300)
    first = json.loads((run / "stages" / "text" / "attempts.jsonl").read_text().splitlines()[0])
    return first["time"] - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sllm-bench-"))
    b, s = [], []
    for i in range(args.repeats):  # interleaved, so drift hits both alike
        b.append(bare(tmp, i))
        s.append(sllm(tmp, i))
    mb, ms = statistics.median(b), statistics.median(s)
    print(f"submit -> start, median of {args.repeats}: bare submitit {mb:.2f} s | sllm stage {ms:.2f} s | "
          f"ratio {ms / mb:.2f}x")
    print("bare:", " ".join(f"{x:.2f}" for x in b))
    print("sllm:", " ".join(f"{x:.2f}" for x in s))


if __name__ == "__main__":
    main()
