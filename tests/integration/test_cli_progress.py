"""No progress-bar noise when the CLI's output is not a terminal: `sllm export` of a registered model downloads
its logged model through MLflow (whose "Downloading artifacts" tqdm bar used to fill logs and pipes). A sqlite
store and a model folder of two small files: no model is built or loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, sllm_env

pytestmark = pytest.mark.mlflow


def _registered(tmp_path: Path) -> str:
    """A registered version whose logged model is a folder with config.json (what `sllm export` needs)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("models", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp, run_name="merge")
    model = client.create_logged_model(exp, source_run_id=run.info.run_id, name="merged")
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"weights")
    client.log_model_artifacts(model.model_id, str(folder))
    client.finalize_logged_model(model.model_id, "READY")
    client.set_terminated(run.info.run_id, "FINISHED")
    client.create_registered_model("progress-demo")
    from sllm_lib.tracking.tracker import global_tracking_uri

    with global_tracking_uri(uri):  # the sqlite registry resolves models:/<id> through mlflow's global client
        client.create_model_version("progress-demo", f"models:/{model.model_id}", run_id=run.info.run_id,
                                    model_id=model.model_id)
    return uri


def _export(uri: str, out: Path, home: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = sllm_env()
    for k in ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(k, None)
    env.update(SLLM_HOME=str(home), **extra_env)
    return subprocess.run([sys.executable, "-m", "launch.cli", "export", "models:/progress-demo/1", "-o", str(out),
                           "--tracking-uri", uri], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=120)


def test_export_through_a_pipe_has_no_download_bars(tmp_path: Path) -> None:
    uri = _registered(tmp_path)
    res = _export(uri, tmp_path / "out", tmp_path / "home", {})
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"weights"
    assert "Downloading artifacts" not in res.stdout + res.stderr and "\r" not in res.stdout + res.stderr
    # the same download with the bar asked for explicitly (a user's own setting wins) shows it: the check above
    # looks at the output the bar would be in
    shown = _export(uri, tmp_path / "out2", tmp_path / "home2", {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "true"})
    assert shown.returncode == 0, shown.stderr
    assert "Downloading artifacts" in shown.stderr
