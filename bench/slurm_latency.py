"""Submit -> stage function start on the local SLURM: sllm's SlurmExecutor vs bare submitit, side by side.

Needs a running local cluster:  eval "$(scripts/slurm_local.sh start /tmp/sllm-slurm)"
    python bench/slurm_latency.py [--repeats 5]

The baseline is the hand-written script sllm replaces: submitit submits a function that imports torch and
transformers (every training stage does) and starts. sllm's number is its SlurmExecutor submitting a real stage
request (resolved spec, MLflow tracking on a sqlite file as the embedded default, feature cache settings), up to
the first line of the stage function, with the same imports done. Both use the same partition and resources,
and runs alternate so drift on this machine hits both alike.

Each run is cut at the same points, so the table says where the time goes:
  submit   the submitting call (sbatch included)       batch    sbatch returned -> the batch script's first line
  step     batch script -> the job's Python process    python   Python start -> the function running (imports ...)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAMP = "SLLM_BENCH_BATCH_START"
SETUP = [f'echo "{STAMP}=$(date +%s.%N)"']  # the batch script's first line of its own (both sides)


def _process_start() -> float:
    """This process's start time (epoch s, 10 ms resolution), from /proc: the job's Python as srun started it."""
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - (uptime - start_ticks / ticks)


def _started(path: str) -> None:
    """What the job records once it may start work: its Python's start and now, torch and transformers imported."""
    import torch  # noqa: F401
    import transformers  # noqa: F401

    Path(path).write_text(json.dumps({"python": _process_start(), "start": time.time()}))


def _batch_start(folder: Path) -> float:
    for log in folder.rglob("*_log.out"):
        for line in log.read_text().splitlines():
            if line.startswith(STAMP + "="):
                return float(line.split("=", 1)[1])
    raise RuntimeError(f"no {STAMP} line in the job logs under {folder}")


def _cuts(t0: float, submitted: float, folder: Path, marker: Path) -> dict[str, float]:
    m = json.loads(marker.read_text())
    batch = _batch_start(folder)
    return {"submit": submitted - t0, "batch": batch - submitted, "step": m["python"] - batch,
            "python": m["start"] - m["python"], "total": m["start"] - t0}


def bare(tmp: Path, i: int) -> dict[str, float]:
    import submitit

    folder = tmp / f"bare{i}"
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm")
    ex.update_parameters(slurm_partition="debug", cpus_per_task=1, mem_gb=2, timeout_min=10, slurm_setup=SETUP)
    marker = tmp / f"bare{i}.json"
    t0 = time.time()
    job = ex.submit(_started, str(marker))
    submitted = time.time()
    job.result()
    return _cuts(t0, submitted, folder, marker)


class _BenchStage:
    """Wraps sllm's StageJob in the job: every stage kind's function becomes `_started` (so sllm's whole path up
    to the stage function runs for real, and the end point is the baseline's)."""

    def __init__(self, inner: Any, marker: str) -> None:
        self.inner, self.marker = inner, marker

    def __call__(self) -> Any:
        import launch.stages as stages
        from sllm_lib.stage import StageResult

        def first_line(stage: Any, ctx: Any) -> StageResult:
            _started(self.marker)
            return StageResult(stage=stage.name, kind=stage.kind, output_dir=str(ctx.stage_dir / "output"))

        for kind in stages.STAGE_FUNCTIONS:
            stages.STAGE_FUNCTIONS[kind] = first_line
        return self.inner()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.checkpoint(*args, **kwargs)


def sllm(tmp: Path, i: int) -> dict[str, float]:
    from unittest import mock

    import yaml

    import launch.slurm as slurm
    from launch.executor import LaunchRequest
    from sllm_lib.spec import SlurmProfile, dump_resolved_yaml, load_job_spec

    run = tmp / f"sllm{i}"
    run.mkdir()
    spec = {"name": "lat", "model": {"base": "tiny:voxtral"},
            "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "lat"}, "stages": [{
                "name": "text", "kind": "text_sft",
                "data": {"train": [{"kind": "text_qa", "path": str(REPO / "data/sample/text_qa_train.jsonl"),
                                    "max_records": 4}]},
                "train": {"per_device_bsz": 2, "max_steps": 1, "precision": "fp32", "max_seq_len": 64},
                "lora": {"r": 2, "alpha": 4}, "trainable": ["lora"]}]}
    (run / "job.yaml").write_text(yaml.safe_dump(spec))
    resolved = run / "spec.resolved.yaml"
    resolved.write_text(dump_resolved_yaml(load_job_spec(run / "job.yaml")))
    run_id = _mlflow_run(tmp)
    req = LaunchRequest(job_name="lat", stage="text", spec_path=str(resolved), spec_hash="h", run_dir=str(run),
                        stage_dir=str(run / "stages" / "text"), tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                        tracking_strict=False, run_id=run_id)
    prof = SlurmProfile(kind="slurm", name="lat", partition="debug", cpus_per_task=1, mem_gb=2, timeout_min=10,
                        python="submitting", setup=SETUP)
    marker = tmp / f"sllm{i}.json"
    real = slurm.StageJob
    with mock.patch.object(slurm, "StageJob", lambda r: _BenchStage(real(r), str(marker))):
        t0 = time.time()
        handle = slurm.SlurmExecutor(prof).submit(req)
        submitted = time.time()
    handle.result(timeout_s=300)
    return _cuts(t0, submitted, run / "slurm", marker)


def _mlflow_run(tmp: Path) -> str:
    """A run for the stage, as the pipeline opens one before submitting (not timed: the launcher's own work)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("lat") or client.get_experiment(client.create_experiment("lat"))
    return client.create_run(exp.experiment_id).info.run_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sllm-bench-"))
    sllm(tmp, -1)  # warm-up, not counted: the first job on a fresh node pays the page cache and the sqlite schema
    rows: dict[str, list[dict[str, float]]] = {"bare submitit": [], "sllm stage": []}
    for i in range(args.repeats):
        rows["bare submitit"].append(bare(tmp, i))
        rows["sllm stage"].append(sllm(tmp, i))
    cols = ["submit", "batch", "step", "python", "total"]
    med = {name: {c: statistics.median(r[c] for r in runs) for c in cols} for name, runs in rows.items()}
    print(f"submit -> stage function start, median of {args.repeats} (seconds)")
    print(f"| {'':14} | " + " | ".join(f"{c:>6}" for c in cols) + " |")
    print(f"| {'-' * 14} | " + " | ".join("-" * 6 for _ in cols) + " |")
    for name, m in med.items():
        print(f"| {name:14} | " + " | ".join(f"{m[c]:6.2f}" for c in cols) + " |")
    ratio = med["sllm stage"]["total"] / med["bare submitit"]["total"]
    print(f"ratio sllm / bare: {ratio:.2f}x")
    for name, runs in rows.items():
        print(f"{name} totals:", " ".join(f"{r['total']:.2f}" for r in runs))


if __name__ == "__main__":
    main()
