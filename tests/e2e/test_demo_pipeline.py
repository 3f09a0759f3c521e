"""The demo pipeline end to end through the `sllm` CLI: 3 stages + merge + eval on the tiny model.

Runs once per module (about a minute on 2 cores) and every test reads its outcome.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

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
    assert "mlflow ui --backend-store-uri" in out and "#/experiments/1?workflowType=machine_learning" in out


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


@pytest.fixture(scope="module")
def mlflow_ui(demo: dict, tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server` (the MLflow UI) on the demo's store, 127.0.0.1 and a free port; stopped by its own pid."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from sllm_lib.ports import free_port

    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-ui") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", demo["uri"],
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=demo["work"], start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                what = f"exited {proc.returncode}" if proc.poll() is not None else "no answer on /health in 90 s"
                pytest.fail(f"mlflow server on {url} ({what}); log {log}:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # uvicorn and its worker: the group the server leads
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_lineage_browsable_in_the_mlflow_ui(demo: dict, mlflow_ui: str, tmp_path: Path) -> None:
    """The five pages a teammate opens in the MLflow UI, rendered by headless Chromium against a real `mlflow
    server`: experiment (model-training view), a stage run (its adapter an output, downloadable; its log an
    artifact), the merge run (the merged model its output, registered), the logged model (its registered
    version, built from the adapter) and the registered model (back to the merge run). Screenshots kept."""
    import urllib.parse
    import urllib.request

    from mlflow import MlflowClient

    from tests.browser import artifacts_dir, chromium, run_chromium, visible_text

    exe = chromium()
    shots = artifacts_dir("mlflow-ui")
    client = MlflowClient(tracking_uri=demo["uri"])
    stages = demo["state"]["stages"]
    exp = client.get_experiment_by_name("sllm-demo")
    assert exp.tags["mlflow.experimentKind"] == "finetuning"
    e = exp.experiment_id
    text_run = client.get_run(stages["text_lora"]["run_id"])
    merge_run = client.get_run(stages["merge"]["run_id"])
    (adapter_id,) = [m.model_id for m in text_run.outputs.model_outputs]
    (merged_id,) = [m.model_id for m in merge_run.outputs.model_outputs]
    multitask_id = stages["multitask"]["result"]["extras"]["model_id"]

    def page(name: str, route: str, *expected: str) -> tuple[str, str]:
        """Render route (screenshot + DOM); wait for every expected text, one retry for a slow first render."""
        url = f"{mlflow_ui}/#/{route}?workflowType=machine_learning"
        for attempt in (1, 2):
            budget = f"--virtual-time-budget={20000 * attempt}"
            run_chromium(exe, tmp_path, f"{name}-shot-{attempt}", "--window-size=1400,1800", budget,
                         f"--screenshot={shots / (name + '.png')}", url)
            dom = run_chromium(exe, tmp_path, f"{name}-dom-{attempt}", "--window-size=1400,1800", budget,
                               "--dump-dom", url).stdout
            text = visible_text(dom)
            missing = [x for x in expected if x not in text]
            if not missing:
                assert (shots / (name + ".png")).stat().st_size > 30_000, f"{name}: blank screenshot?"
                return dom, text
        pytest.fail(f"{name} ({url}): {missing} not on the rendered page; it shows: {text[:2500]}")

    # 1. the experiment opens in the model-training view: its runs table, not the GenAI traces overview
    _, text = page("1-experiment", f"experiments/{e}", "sllm-demo", "Runs", "matching runs")
    assert "Traces 0" not in text and "Token Usage" not in text

    # 2. a stage run: its adapter listed as the run's output (a ready logged model), its stage log an artifact
    _, text = page("2-stage-run", f"experiments/{e}/runs/{text_run.info.run_id}", "demo-sllm-tiny/text_lora",
                   "Logged models (1)", "demo-sllm-tiny-text_lora", "First stage of the pipeline")
    assert re.search(r"Output \d+ (#\w+ )?demo-sllm-tiny-text_lora Ready", text), text[:3000]
    _, text = page("2b-stage-artifacts", f"experiments/{e}/runs/{text_run.info.run_id}/artifacts", "stage")
    assert {f.path for f in client.list_artifacts(text_run.info.run_id, "stage")} == {"stage/stage.log",
                                                                                      "stage/stage_config.yaml"}
    log_text = Path(client.download_artifacts(text_run.info.run_id, "stage/stage.log", str(tmp_path))).read_text()
    assert "stage=text_lora kind=text_sft starting" in log_text
    # downloadable through the server, as the UI's download button fetches it: the same bytes as the output
    q = urllib.parse.urlencode({"artifact_file_path": "adapter/adapter_model.safetensors"})
    with urllib.request.urlopen(f"{mlflow_ui}/ajax-api/2.0/mlflow/logged-models/{adapter_id}/artifacts/files?{q}",
                                timeout=30) as r:
        served = r.read()
    local = demo["run_dir"] / "stages" / "text_lora" / "output" / "adapter" / "adapter_model.safetensors"
    assert served == local.read_bytes()

    # 3. the merge run: the merged model is its output (not an input), registered as v1; upstream a link
    dom, text = page("3-merge-run", f"experiments/{e}/runs/{merge_run.info.run_id}", "demo-sllm-tiny/merge",
                     "Logged models (1)", "Upstream stages: multitask")
    assert re.search(r"Output \d+ (#\w+ )?demo-sllm-tiny-merge Ready .*sllm-demo-tiny v1", text), text[:3000]
    assert f'href="#/experiments/{e}/runs/{stages["multitask"]["run_id"]}?workflowType=machine_learning"' in dom

    # 4. the logged model: its registered version, its source run, the adapter it was merged from as a link
    dom, text = page("4-logged-model", f"experiments/{e}/models/{merged_id}", "demo-sllm-tiny-merge",
                     "Model versions sllm-demo-tiny v1", "Source run demo-sllm-tiny/merge", "Built from:")
    assert f'href="#/experiments/{e}/models/{multitask_id}?workflowType=machine_learning"' in dom

    # 5. the registered model and its version: back to the merge run and its logged model
    page("5-registered-model", "models/sllm-demo-tiny", "sllm-demo-tiny", "Version 1", "candidate")
    dom, text = page("5b-model-version", "models/sllm-demo-tiny/versions/1", "Source Run : demo-sllm-tiny/merge",
                     "Source Model : demo-sllm-tiny-merge")
    assert f'href="#/experiments/{e}/runs/{merge_run.info.run_id}"' in dom
    assert adapter_id != merged_id


def test_rerun_reuses_completed_stages(demo: dict) -> None:
    proc = run_sllm(["submit", str(DEMO)], cwd=demo["work"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("(reused)") == len(STAGES)
    (state_file,) = list((demo["work"] / "runs" / "demo-sllm-tiny").glob("*/state.json"))
    state = json.loads(state_file.read_text())
    assert state["parent_run_id"] == demo["state"]["parent_run_id"]
    proc = run_sllm(["status", str(demo["work"] / "runs")], cwd=demo["work"])
    assert proc.returncode == 0 and "COMPLETED" in proc.stdout
