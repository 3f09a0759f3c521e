"""`sllm cache build` sharded over local processes and a SLURM array; stages read through the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import SAMPLE


def _spec(tmp: Path, cache: dict, *, steps: int = 3) -> Path:
    spec = {"name": "cache-it", "model": {"base": "tiny:voxtral"}, "output_dir": str(tmp / "runs"), "cache": cache,
            "stages": [{"name": "asr", "kind": "asr_adapter",
                        "data": {"train": [{"kind": "asr", "path": str(SAMPLE / "asr_train.jsonl"), "max_records": 8}],
                                 "val": [{"kind": "asr", "path": str(SAMPLE / "asr_val.jsonl")}]},
                        "train": {"per_device_bsz": 4, "max_steps": steps, "lr": 2e-3, "precision": "fp32",
                                  "logging_steps": 1, "seed": 5, "max_seq_len": 512, "save_steps": 1000},
                        "trainable": ["projector"]}]}
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    (tmp / "inproc.yaml").write_text("kind: local\nname: inproc\nisolation: inprocess\n", encoding="utf-8")
    return path


def _cli(args: list[str]) -> int:
    from launch import cli

    return int(cli.app(args, standalone_mode=False) or 0)


def _entries(cache_dir: Path) -> list[Path]:
    return [p for p in cache_dir.rglob("*") if p.is_file() and "manifests" not in p.parts and p.suffix != ".json"]


def test_local_build_in_two_processes_then_everything_hits(tmp_path: Path, capsys) -> None:
    cache_dir = tmp_path / "cache"
    job = _spec(tmp_path, {"uri": str(cache_dir)})
    assert _cli(["cache", "build", str(job), "--cluster", str(tmp_path / "inproc.yaml"), "--shards", "2"]) == 0
    out = capsys.readouterr().out
    assert "40 clips" in out and "2 local builders" in out
    assert len(_entries(cache_dir)) == 40  # 32 train + 8 val clips, one entry each
    manifests = sorted(cache_dir.rglob("manifests/*.json"))
    assert [m.stem for m in manifests] == ["asr_train", "asr_val"]
    rows = json.loads(manifests[0].read_text(encoding="utf-8"))
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert len(rows) == 32 and all(r["duration_s"] > 0.5 and r["n_chunks"] == 1 for r in rows)
    shard_stats = [json.loads(p.read_text())["stats"] for p in (tmp_path / "runs" / "cache-build" / "cache-it")
                   .glob("shard-*.json")]
    assert sum(s["misses"] for s in shard_stats) == 40

    assert _cli(["cache", "build", str(job), "--cluster", str(tmp_path / "inproc.yaml"), "--shards", "2"]) == 0
    shard_stats = [json.loads(p.read_text())["stats"] for p in (tmp_path / "runs" / "cache-build" / "cache-it")
                   .glob("shard-*.json")]
    assert sum(s["hits"] for s in shard_stats) == 40 and sum(s["misses"] for s in shard_stats) == 0

    assert _cli(["cache", "verify", str(job), "--recompute"]) == 0
    assert "corrupt 0" in capsys.readouterr().out


@pytest.mark.slurm
def test_build_as_a_slurm_array(slurm_cluster, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    job = _spec(tmp_path, {"uri": str(cache_dir)})
    prof = tmp_path / "slurm.yaml"
    prof.write_text("kind: slurm\nname: t\npartition: debug\ncpus_per_task: 1\nmem_gb: 2\ntimeout_min: 10\n"
                    "python: submitting\n",
                    encoding="utf-8")
    assert _cli(["cache", "build", str(job), "--cluster", str(prof), "--shards", "2"]) == 0
    assert len(_entries(cache_dir)) == 40
    scripts = list((tmp_path / "runs" / "cache-build" / "cache-it" / "slurm").rglob("*_submission.sh"))
    assert scripts and "#SBATCH --array=0-1" in scripts[0].read_text()


def _train(job: Path) -> object:
    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.spec import find_cluster_profile, load_job_spec

    spec_path = job
    plan = build_plan(load_job_spec(spec_path), spec_path, find_cluster_profile(str(job.parent / "inproc.yaml")))
    return submit_pipeline(plan).results["asr"]


def test_stage_reads_through_the_cache_with_the_same_loss(tmp_path: Path) -> None:
    base = _train(_spec(tmp_path / "off", {"mode": "off"}))
    cold = _train(_spec(tmp_path / "cold", {"uri": str(tmp_path / "cache")}))
    warm = _train(_spec(tmp_path / "warm", {"uri": str(tmp_path / "cache"), "mode": "readonly"}))
    assert cold.metrics["cache/misses"] > 0 and warm.metrics["cache/misses"] == 0 and warm.metrics["cache/hits"] > 0
    assert base.loss_first == cold.loss_first == warm.loss_first
    assert base.loss_last == cold.loss_last == warm.loss_last


@pytest.mark.s3
def test_stage_two_from_s3_gives_the_on_the_fly_loss(rclone_s3, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", rclone_s3.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", rclone_s3.secret)
    uri = rclone_s3.new_prefix("stage2")
    s3 = {"uri": uri, "endpoint_url": rclone_s3.endpoint_url}
    base = _train(_spec(tmp_path / "off", {"mode": "off"}))
    cold = _train(_spec(tmp_path / "cold", {**s3, "local_dir": str(tmp_path / "tier-a")}))
    # a fresh node: empty local tier, so every feature comes from S3
    warm = _train(_spec(tmp_path / "warm", {**s3, "mode": "readonly", "local_dir": str(tmp_path / "tier-b")}))
    assert cold.metrics["cache/misses"] > 0 and warm.metrics["cache/misses"] == 0
    assert base.loss_first == cold.loss_first == warm.loss_first
    assert base.loss_last == cold.loss_last == warm.loss_last
    listed = rclone_s3.client().list_objects_v2(Bucket=rclone_s3.bucket, Prefix=uri.split("/", 3)[3])
    assert listed.get("KeyCount", 0) >= 16  # 8 train + 8 val clips, plus the fingerprint's settings
