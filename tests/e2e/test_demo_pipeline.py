"""The demo pipeline end to end through the `sllm` CLI: 3 stages + merge + eval on the tiny model.

Runs once per module (about a minute on 2 cores) and every test reads its outcome.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, run_sllm

pytestmark = pytest.mark.e2e

DEMO = REPO / "jobs" / "demo_sllm_tiny.yaml"
STAGES = ["text_lora", "asr_projector", "multitask", "merge", "eval"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("demo")
    proc = run_sllm(["submit", str(DEMO)], cwd=work)
    assert proc.returncode == 0, f"demo failed:\nSTDOUT\n{proc.stdout[-4000:]}\nSTDERR\n{proc.stderr[-4000:]}"
    (state_file,) = list((work / "runs" / "demo-sllm-tiny").glob("*/state.json"))
    return {"work": work, "stdout": proc.stdout, "state": json.loads(state_file.read_text()),
            "run_dir": state_file.parent, "uri": f"sqlite:///{work / 'runs' / 'mlflow.db'}"}


def test_every_stage_completed_with_its_own_run(demo: dict) -> None:
    stages = demo["state"]["stages"]
    assert list(stages) == STAGES
    assert all(s["status"] == "COMPLETED" for s in stages.values())
    assert len({s["run_id"] for s in stages.values()}) == len(STAGES)
    for name in STAGES:
        assert (demo["run_dir"] / "stages" / name / "output" / "manifest.json").is_file()


def test_stage1_loss_falls(demo: dict) -> None:
    result = demo["state"]["stages"]["text_lora"]["result"]
    assert result["steps"] == 40
    assert result["loss_last"] < result["loss_first"] - 1.0, result


def test_table_and_lineage_printed(demo: dict) -> None:
    out = demo["stdout"]
    for name in STAGES:
        assert name in out
    assert "lineage of sllm-demo-tiny@candidate" in out
    assert "mlflow ui --backend-store-uri" in out


def test_model_registered_with_candidate_alias(demo: dict) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=demo["uri"])
    mv = client.get_model_version_by_alias("sllm-demo-tiny", "candidate")
    assert mv.run_id == demo["state"]["stages"]["merge"]["run_id"]
    run = client.get_run(mv.run_id)
    assert run.data.tags["mlflow.parentRunId"] == demo["state"]["parent_run_id"]


def test_lineage_walks_back_to_every_training_dataset(demo: dict) -> None:
    from sllm_lib.tracking.lineage import walk_lineage

    lin = walk_lineage(demo["uri"], "sllm-demo-tiny@candidate")
    assert lin.root.stages() == ["merge", "multitask", "asr_projector", "text_lora"]
    text = lin.root.upstream[0].upstream[0].upstream[0]
    names = {d["name"] for d in text.datasets}
    assert names == {"text_qa_train", "text_qa_val"}
    assert all(len(d["digest"]) >= 12 for d in text.datasets)
    proc = run_sllm(["lineage", "sllm-demo-tiny@candidate", "--tracking-uri", demo["uri"]], cwd=demo["work"])
    assert proc.returncode == 0, proc.stderr
    assert "text_lora" in proc.stdout and "asr_train" in proc.stdout


def test_eval_metrics_and_predictions(demo: dict) -> None:
    metrics = demo["state"]["stages"]["eval"]["result"]["metrics"]
    for key in ("asr_val/cer", "asr_val/wer", "speech_qa_val/rougeL", "text_qa_val/distinct_2"):
        assert key in metrics
    preds = (demo["run_dir"] / "stages" / "eval" / "output" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 8 + 8 + 16


def test_merged_model_reloads_and_generates(demo: dict) -> None:
    import torch
    from transformers import AutoTokenizer, VoxtralForConditionalGeneration

    path = demo["run_dir"] / "stages" / "merge" / "output"
    model = VoxtralForConditionalGeneration.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("혈압", return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] >= ids.shape[1] + 1


def test_rerun_reuses_completed_stages(demo: dict) -> None:
    proc = run_sllm(["submit", str(DEMO)], cwd=demo["work"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("(reused)") == len(STAGES)
    (state_file,) = list((demo["work"] / "runs" / "demo-sllm-tiny").glob("*/state.json"))
    state = json.loads(state_file.read_text())
    assert state["parent_run_id"] == demo["state"]["parent_run_id"]
    proc = run_sllm(["status", str(demo["work"] / "runs")], cwd=demo["work"])
    assert proc.returncode == 0 and "COMPLETED" in proc.stdout
