"""The team tracking stack (scripts/tracking_stack.sh) for real: MLflow with basic auth, runs in PostgreSQL,
artifacts proxied to an S3 server (rclone) on disk; wrong credentials, a killed server and a hung one."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.mlflow


@pytest.fixture
def as_user(tracking_stack, monkeypatch):
    """Credentials from the environment only (what the docs tell users), as the normal user `sllm`."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", tracking_stack.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", tracking_stack.password)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_INSECURE_TLS", raising=False)
    return tracking_stack


def _client(stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.uri)


def _pg(stack):
    import psycopg2

    return psycopg2.connect(stack.pg_uri, connect_timeout=5)


def _new_run(client, tmp_path: Path) -> tuple[str, str]:
    exp_id = client.create_experiment(f"stack-{uuid.uuid4().hex[:10]}")
    run_id = client.create_run(exp_id, run_name="stack-run").info.run_id
    return exp_id, run_id


def test_run_in_postgres_artifact_in_s3(as_user, tmp_path: Path) -> None:
    from mlflow.entities import Metric, Param

    stack, client = as_user, _client(as_user)
    exp_id, run_id = _new_run(client, tmp_path)
    client.log_batch(run_id, params=[Param("lr", "0.001"), Param("stage", "text_sft")],
                     metrics=[Metric("loss", 2.0 - i * 0.5, int(time.time() * 1000), i) for i in range(3)])
    note = tmp_path / "eval_summary.txt"
    note.write_text("wer=0.12 한국어\n", encoding="utf-8")
    client.log_artifact(run_id, str(note), artifact_path="eval")
    client.set_terminated(run_id)

    # read back through the server
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.001", "stage": "text_sft"}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(0, 2.0), (1, 1.5), (2, 1.0)]
    assert [f.path for f in client.list_artifacts(run_id, "eval")] == ["eval/eval_summary.txt"]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: clients never hold S3 keys

    # the rows are in PostgreSQL
    with _pg(stack) as con, con.cursor() as cur:
        cur.execute("SELECT status, experiment_id FROM runs WHERE run_uuid = %s", (run_id,))
        assert cur.fetchone() == ("FINISHED", int(exp_id))
        cur.execute("SELECT key, value FROM params WHERE run_uuid = %s ORDER BY key", (run_id,))
        assert cur.fetchall() == [("lr", "0.001"), ("stage", "text_sft")]
        cur.execute("SELECT step, value FROM metrics WHERE run_uuid = %s AND key = 'loss' ORDER BY step", (run_id,))
        assert cur.fetchall() == [(0, 2.0), (1, 1.5), (2, 1.0)]
    con.close()

    # the object is in the rclone S3 bucket, which is a folder on disk
    on_disk = stack.s3_dir / stack.s3_bucket / "artifacts" / exp_id / run_id / "artifacts" / "eval" / "eval_summary.txt"
    assert on_disk.read_text(encoding="utf-8") == "wer=0.12 한국어\n"
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, aws_access_key_id=stack.s3_access_key,
                      aws_secret_access_key=stack.s3_secret_key, region_name="us-east-1")
    key = f"artifacts/{exp_id}/{run_id}/artifacts/eval/eval_summary.txt"
    assert s3.get_object(Bucket=stack.s3_bucket, Key=key)["Body"].read().decode() == "wer=0.12 한국어\n"

    # downloads come back through the proxy too
    got = Path(client.download_artifacts(run_id, "eval/eval_summary.txt", str(tmp_path / "dl")))
    assert got.read_text(encoding="utf-8") == "wer=0.12 한국어\n"


@pytest.mark.parametrize("who", ["wrong-password", "unknown-user", "no-credentials"])
def test_bad_credentials_rejected_fast(tracking_stack, monkeypatch, who: str) -> None:
    from mlflow.exceptions import MlflowException

    if who == "no-credentials":
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", tracking_stack.username if who == "wrong-password" else "nobody")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    t0 = time.monotonic()
    with pytest.raises(MlflowException) as err:
        _client(tracking_stack).search_experiments(max_results=1)
    assert time.monotonic() - t0 < 10, "a 401 must not be retried"
    text = str(err.value)
    assert "401" in text or "Unauthorized" in text or "403" in text, text


def test_normal_user_is_not_admin(as_user) -> None:
    """The env file hands out `sllm`, a normal user: it cannot create users (admin-only auth API)."""
    import requests

    r = requests.post(f"{as_user.uri}/api/2.0/mlflow/users/create", json={"username": "x", "password": "y"},
                      auth=(as_user.username, as_user.password), timeout=10)
    assert r.status_code == 403, r.text


def test_killed_server_restarts_with_data_kept(as_user, tmp_path: Path, monkeypatch) -> None:
    from mlflow.exceptions import MlflowException

    stack, client = as_user, _client(as_user)
    _, run_id = _new_run(client, tmp_path)
    client.log_metric(run_id, "loss", 1.25, step=7)
    stack.kill_mlflow()
    try:
        assert stack.status() == {"postgres": "up", "rclone": "up", "mlflow": "down"}
        # bounded: no retries, short timeout; the port is closed, so the call fails at once
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
        t0 = time.monotonic()
        with pytest.raises(MlflowException):
            client.get_run(run_id)
        assert time.monotonic() - t0 < 10
        with _pg(stack) as con, con.cursor() as cur:  # postgres stays up while the server is down
            cur.execute("SELECT value FROM metrics WHERE run_uuid = %s AND key = 'loss'", (run_id,))
            assert cur.fetchall() == [(1.25,)]
        con.close()
    finally:
        stack.restart_mlflow()
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(7, 1.25)]
    client.log_metric(run_id, "loss", 1.0, step=8)
    client.set_terminated(run_id)
    assert client.get_run(run_id).data.metrics == {"loss": 1.0}


def test_frozen_server_times_out_then_thaws(as_user, tmp_path: Path, monkeypatch) -> None:
    from mlflow.exceptions import MlflowException

    stack, client = as_user, _client(as_user)
    _, run_id = _new_run(client, tmp_path)
    stack.freeze_mlflow()
    try:
        # a hung server accepts the connection and never answers: only the client's timeout ends the call
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
        t0 = time.monotonic()
        with pytest.raises(MlflowException):
            client.log_metric(run_id, "loss", 3.0, step=1)
        assert 1.5 < time.monotonic() - t0 < 10
    finally:
        stack.thaw_mlflow()
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")
    client.log_metric(run_id, "loss", 2.5, step=2)
    assert client.get_run(run_id).data.metrics["loss"] == 2.5
