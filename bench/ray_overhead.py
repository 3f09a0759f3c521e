"""What Ray costs a stage: the same trivial stage through the local executor and the Ray executor, side by side,
plus the local head's start time and memory. Ray is timed two ways: a driver process per stage
(`reuse_driver: false`), and the pipeline's driver (the default), which stays connected between stages; its rows
time the stages after a pipeline's first (the first starts the driver, as a driver per stage does).

    python bench/ray_overhead.py [--repeats 3] [--only pipeline|fresh]

The local executor's row is its default, stages forked from its warm starter (the untimed first stage starts it);
"fresh interpreter" is the same with `warm_start: false`, each stage importing torch and transformers itself
(`--only fresh`: the two local rows alone).

The trivial stage is one optimizer step of LoRA on the tiny model (4 records), so the figures are the fixed
cost a stage pays before and after its work: process start, imports, (Ray: job + controller + worker group
+ process group setup, report, teardown). The Ray executor runs against an already started head, as on a
real cluster; the head's own start is timed separately. Memory: RSS of the head's whole process tree, idle,
without and with the dashboard (the Jobs API needs the dashboard).
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


def _request(tmp: Path, i: int, tag: str):
    import yaml

    from launch.executor import LaunchRequest
    from sllm_lib.spec import dump_resolved_yaml, load_job_spec

    run = tmp / f"{tag}{i}"
    run.mkdir()
    spec = {"name": "trivial", "model": {"base": "tiny:voxtral"}, "stages": [{
        "name": "text", "kind": "text_sft",
        "data": {"train": [{"kind": "text_qa", "path": str(REPO / "data/sample/text_qa_train.jsonl"),
                            "max_records": 4}]},
        "train": {"per_device_bsz": 2, "max_steps": 1, "precision": "fp32", "max_seq_len": 64,
                  "save_steps": 1000},
        "lora": {"r": 2, "alpha": 4}, "trainable": ["lora"]}]}
    (run / "job.yaml").write_text(yaml.safe_dump(spec))
    resolved = run / "spec.resolved.yaml"
    resolved.write_text(dump_resolved_yaml(load_job_spec(run / "job.yaml")))
    return LaunchRequest(job_name="trivial", stage="text", spec_path=str(resolved), spec_hash=f"{i:016d}",
                         run_dir=str(run), stage_dir=str(run / "stages" / "text"), tracking_uri="",
                         tracking_strict=False, run_id=None)


def _timed(executor, req) -> dict[str, float]:
    """Wall time of one stage, cut where the stage's own files say it started and ended (and, on Ray, at each
    step of the driver: ray_timing.json)."""
    import json

    t0 = time.time()
    executor.submit(req).result(timeout_s=600)
    end = time.time()
    stage_dir = Path(req.stage_dir)
    start = json.loads((stage_dir / "attempts.jsonl").read_text().splitlines()[0])["time"]
    done = req.result_file.stat().st_mtime
    cuts = {"wall": end - t0, "to stage start": start - t0, "stage": done - start, "after stage": end - done}
    timing = stage_dir / "ray_timing.json"
    if timing.is_file():
        t = json.loads(timing.read_text())
        cuts.update({"driver start": t["driver_start"] - t0, "import ray + connect": t["connected"] - t["driver_start"],
                     "TorchTrainer (torch import)": t["trainer_built"] - t["connected"],
                     "fit -> stage start": start - t["trainer_built"], "stage end -> fit returns": t["fit_returned"] - done,
                     "disconnect + exit": end - t["fit_returned"]})
    return cuts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="", help="only the rows whose name contains this (e.g. 'pipeline'), and the "
                                               "local executor's")
    args = ap.parse_args()

    from launch.local import LocalExecutor
    from launch.ray_executor import RayExecutor, import_ray
    from launch.ray_head import start_local_head
    from sllm_lib.spec import LocalProfile, RayProfile

    import_ray()
    tmp = Path(tempfile.mkdtemp(prefix="sllm-bench-ray-"))
    rows: list[tuple[str, list[float]]] = []

    t0 = time.perf_counter()
    head = start_local_head(2, num_gpus=0)
    start_s = time.perf_counter() - t0
    try:
        time.sleep(3)
        rss_idle = head.rss_bytes()
        local = LocalExecutor(LocalProfile(kind="local", cpus=1))
        def ray(workers: int, reuse: bool) -> RayExecutor:
            return RayExecutor(RayProfile(kind="ray", name="bench", address=head.gcs_address, num_workers=workers,
                                          reuse_driver=reuse))

        _timed(local, _request(tmp, 99, "warm"))  # the tiny preset and OS caches, once, for everyone
        cases = [("local executor (1 process)", local, False),
                 # the same without the warm starter: each stage imports torch and transformers itself
                 ("local executor, fresh interpreter", LocalExecutor(LocalProfile(kind="local", cpus=1,
                                                                                 warm_start=False)), False),
                 ("ray 1w, driver per stage", ray(1, False), False),
                 ("ray 2w, driver per stage", ray(2, False), False),
                 # a pipeline's stages after its first: the pipeline's driver is already connected
                 ("ray 1w, pipeline driver", ray(1, True), True),
                 ("ray 2w, pipeline driver", ray(2, True), True)]
        cases = [c for c in cases if not args.only or args.only in c[0] or c[1] is local]
        for name, ex, served in cases:
            if served:  # the pipeline's first stage starts its driver; it is not one of the timed stages
                _timed(ex, _request(tmp, 98, f"first{len(rows)}"))
            cuts = [_timed(ex, _request(tmp, i, f"r{len(rows)}-")) for i in range(args.repeats)]
            ex.close()
            rows.append((name, cuts))
            print(f"  {name}: " + ", ".join(f"{c['wall']:.1f}" for c in cuts) + " s", flush=True)
        rss_busy = head.rss_bytes()
    finally:
        head.stop()
    t0 = time.perf_counter()
    dash = start_local_head(2, num_gpus=0, dashboard=True)
    dash_start_s = time.perf_counter() - t0
    try:
        time.sleep(3)
        rss_dash = dash.rss_bytes()
    finally:
        dash.stop()

    def med(cuts: list[dict[str, float]], key: str) -> float:
        return statistics.median(c[key] for c in cuts)

    base = med(rows[0][1], "wall")
    print(f"\ntrivial stage (1 optimizer step, tiny model), median of {args.repeats}, 2 cores:")
    print(f"{'executor':<30} {'wall s':>8} {'vs local':>9} {'fixed cost s':>13}")
    for name, cuts in rows:
        wall = med(cuts, "wall")
        print(f"{name:<30} {wall:>8.1f} {wall / base:>8.2f}x {wall - base:>13.1f}")
    print("\nwhere the time goes (median seconds):")
    keys = [k for k in rows[-1][1][0] if k != "wall"]
    print(f"{'':<28} " + " ".join(f"{name.split(' (')[0]:>25}" for name, _ in rows))
    for key in keys:
        print(f"{key:<28} " + " ".join(f"{med(c, key):>25.2f}" if key in c[0] else f"{'':>25}" for _, c in rows))
    gib = 1024 ** 3
    print(f"\nlocal head start: {start_s:.1f} s (no dashboard), {dash_start_s:.1f} s (dashboard + Jobs API)")
    print(f"head memory (RSS of its process tree): idle {rss_idle / gib:.2f} GiB, after the runs "
          f"{rss_busy / gib:.2f} GiB (idle workers kept), with dashboard {rss_dash / gib:.2f} GiB")


if __name__ == "__main__":
    main()
