"""The demo pipeline through `sllm submit --cluster ray_local`: sllm starts a private Ray head on 127.0.0.1,
runs every stage as a TorchTrainer (2 gloo workers for training, 1 for merge/eval) and stops the head."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import REPO, run_sllm

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.mlflow]

STAGES = ["text_lora", "asr_projector", "multitask", "merge", "eval"]


def _heads() -> set[str]:
    return {p.name for p in Path("/tmp").glob("sllm-ray-*")}


def test_demo_on_ray_local(tmp_path: Path) -> None:
    import importlib.util

    import mlflow

    if importlib.util.find_spec("ray") is None:
        if os.environ.get("SLLM_REQUIRE_SERVICES") == "1":
            pytest.fail("Ray is not installed and SLLM_REQUIRE_SERVICES=1: pip install -e '.[test]'")
        pytest.skip("Ray not installed (pip install -e '.[test]')")

    before = _heads()
    proc = run_sllm(["submit", str(REPO / "jobs" / "demo_sllm_tiny.yaml"), "--cluster", "ray_local"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "lineage of sllm-demo-tiny@candidate" in proc.stdout
    (run_dir,) = list((tmp_path / "runs" / "demo-sllm-tiny").iterdir())
    state = json.loads((run_dir / "state.json").read_text())
    assert list(state["stages"]) == STAGES
    assert all(s["status"] == "COMPLETED" and s["job_id"].startswith("ray-") for s in state["stages"].values())

    for name in ("text_lora", "asr_projector", "multitask"):  # 2 workers, all-reduced: both ranks saw one loss
        stage = run_dir / "stages" / name
        r0 = json.loads((stage / "losses.rank0.json").read_text())
        r1 = json.loads((stage / "losses.rank1.json").read_text())
        assert r0 == r1 and len(r0) >= 4
        assert "rank 0 of 2" in (stage / "stage.log").read_text()
    assert state["stages"]["text_lora"]["result"]["loss_last"] < state["stages"]["text_lora"]["result"]["loss_first"]

    # one MLflow run per stage plus the pipeline run, whatever the number of workers
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sllm-demo")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == len(STAGES) + 1
    assert all(r.info.status == "FINISHED" for r in runs)

    # the private head is gone (stopped by its pid, its temp folder removed)
    assert _heads() <= before
