"""LocalExecutor with `nproc`: one process per rank with torch.distributed's env:// variables; a failed rank
ends the stage (its peers are stopped), rank logs, rendering and profile checks."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

import launch.local as local
from launch.executor import JobState, LaunchRequest
from launch.local import LocalExecutor
from sllm_lib.errors import StageFailedError
from sllm_lib.spec import LocalProfile

RANK_SCRIPT = """
import json, os, sys, time
from pathlib import Path
req = json.loads(Path(sys.argv[1]).read_text())
stage = Path(req["stage_dir"])
keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS"]
(stage / f"env{os.environ.get('RANK', 'x')}.json").write_text(json.dumps({k: os.environ.get(k) for k in keys}))
print("hello from rank", os.environ.get("RANK"))
mode = os.environ["FAKE_MODE"]
if mode == "ok":
    if os.environ.get("RANK", "0") == "0":
        (stage / "result.json").write_text(json.dumps({"stage": req["stage"], "kind": "text_sft",
                                                       "output_dir": str(stage / "output")}))
elif mode == "rank1_fails":
    if os.environ["RANK"] == "1":
        sys.exit(3)
    time.sleep(600)  # rank 0 waits in a "collective" that will never complete
elif mode == "wait":
    time.sleep(600)
"""


class FakeExecutor(LocalExecutor):
    def command(self, req: LaunchRequest) -> list[str]:
        return [sys.executable, "-c", RANK_SCRIPT, str(req.request_file)]


def _req(tmp: Path, *, single: bool = False) -> LaunchRequest:
    return LaunchRequest(job_name="j", stage="s1", spec_path=str(tmp / "spec.yaml"), spec_hash="h", run_dir=str(tmp),
                         stage_dir=str(tmp / "stages" / "s1"), tracking_uri="", tracking_strict=False, run_id=None,
                         single_process=single)


def test_each_rank_gets_the_rendezvous_variables(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "ok")
    req = _req(tmp_path)
    job = FakeExecutor(LocalProfile(kind="local", nproc=2, cpus=1)).submit(req)
    result = job.result(timeout_s=60)
    assert result.stage == "s1" and job.state() is JobState.COMPLETED and len(job.procs) == 2
    stage = Path(req.stage_dir)
    envs = [json.loads((stage / f"env{r}.json").read_text()) for r in (0, 1)]
    for r, env in enumerate(envs):
        assert env["RANK"] == env["LOCAL_RANK"] == str(r)
        assert env["WORLD_SIZE"] == "2" and env["MASTER_ADDR"] == "127.0.0.1" and env["OMP_NUM_THREADS"] == "1"
    assert envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"] and int(envs[0]["MASTER_PORT"]) > 0
    assert "hello from rank 1" in (stage / "rank1.log").read_text()  # rank 0 writes to the console/stage.log


def test_merge_and_eval_run_as_one_process_without_rendezvous(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "ok")
    req = _req(tmp_path, single=True)
    # the fake rank script replaces `launch.worker`, which the warm starter would fork instead
    job = FakeExecutor(LocalProfile(kind="local", nproc=2, warm_start=False)).submit(req)
    job.result(timeout_s=60)
    assert len(job.procs) == 1
    env = json.loads((Path(req.stage_dir) / "envx.json").read_text())
    assert env["WORLD_SIZE"] is None and env["RANK"] is None


def test_a_failed_rank_fails_the_stage_and_stops_its_peer(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "rank1_fails")
    monkeypatch.setattr(local, "PEER_GRACE_S", 1.0)
    req = _req(tmp_path)
    job = FakeExecutor(LocalProfile(kind="local", nproc=2)).submit(req)
    t0 = time.monotonic()
    with pytest.raises(StageFailedError, match="ended FAILED"):
        job.result(timeout_s=60)
    assert time.monotonic() - t0 < 30, "the waiting rank was not stopped"
    assert all(p.poll() is not None for p in job.procs)
    assert job.procs[1].returncode == 3


def test_cancel_stops_every_rank(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "rank1_fails")
    monkeypatch.setattr(local, "PEER_GRACE_S", 600.0)
    job = FakeExecutor(LocalProfile(kind="local", nproc=2)).submit(_req(tmp_path))
    time.sleep(0.5)
    job.cancel()
    assert all(p.poll() is not None for p in job.procs)
    assert job.state() is JobState.CANCELLED


def test_render_shows_the_process_count(tmp_path: Path) -> None:
    line = LocalExecutor(LocalProfile(kind="local", nproc=4, cpus=2)).render(_req(tmp_path))
    assert "WORLD_SIZE=4" in line and "OMP_NUM_THREADS=2" in line and line.endswith("# x4 processes")
    single = LocalExecutor(LocalProfile(kind="local", nproc=4)).render(_req(tmp_path, single=True))
    assert "WORLD_SIZE" not in single and "x4" not in single


@pytest.mark.parametrize(("fields", "needle"), [
    ({"nproc": 4, "gpus": 2}, "nproc (4) exceeds gpus (2)"),
    ({"nproc": 2, "isolation": "inprocess"}, "needs isolation: subprocess"),
    ({"nproc": 0}, "greater than 0"),
])
def test_profile_rejects_impossible_process_counts(fields: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        LocalProfile(kind="local", **fields)


def test_world_size_of_each_profile_kind() -> None:
    from sllm_lib.spec import RayProfile, SlurmProfile

    assert LocalProfile(kind="local", nproc=3).world_size == 3
    assert SlurmProfile(kind="slurm", name="s", nodes=2, gpus_per_node=8).world_size == 16
    assert SlurmProfile(kind="slurm", name="s", nodes=2, tasks_per_node=3).world_size == 6
    assert SlurmProfile(kind="slurm", name="s").world_size == 1
    assert RayProfile(kind="ray", name="r", num_workers=4).world_size == 4


def test_a_background_request_runs_at_idle_priority(tmp_path: Path, monkeypatch) -> None:
    """The checkpoint watcher's evaluation beside training: SCHED_IDLE from its first import on."""
    from dataclasses import replace

    monkeypatch.setenv("FAKE_MODE", "wait")
    executor = FakeExecutor(LocalProfile(kind="local", nproc=1))
    job = executor.submit(replace(_req(tmp_path, single=True), background=True))
    plain = executor.submit(replace(_req(tmp_path / "b", single=True)))
    try:
        assert os.sched_getscheduler(job.procs[0].pid) == os.SCHED_IDLE
        assert os.sched_getscheduler(plain.procs[0].pid) == os.SCHED_OTHER
    finally:
        job.cancel()
        plain.cancel()
