"""sllm against the real team tracking stack: MLflow server + PostgreSQL + S3 artifacts + basic auth.

Lineage through the server, a wrong password refused before anything runs, an outage mid-stage that
training rides out with a journal `sllm tracking sync` replays exactly once, a hung server that never
blocks a call past the bound, and planted secrets found nowhere: not in the database, the artifact
store or the logs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SAMPLE, run_sllm

pytestmark = pytest.mark.mlflow

ENV_SECRET = "planted-env-secret-7c1f9a"
SPEC_SECRET = "planted-spec-token-4be20d"


def _spec(tmp: Path, stack, *, steps: int, merge: bool, name: str, extra: dict | None = None) -> Path:
    stages: list[dict] = [{
        "name": "text", "kind": "text_sft",
        "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl"), "max_records": 16}]},
        "train": {"per_device_bsz": 2, "max_steps": steps, "lr": 5e-3, "precision": "fp32", "save_steps": 1000,
                  "logging_steps": 1, "seed": 3, "max_seq_len": 64},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "trainable": ["lora"],
    }]
    if merge:
        stages.append({"name": "merge", "kind": "merge", "from_stage": "text", "dtype": "float32",
                       "register_as": {"name": name, "alias": "candidate"}})
    spec = {"name": name, "model": {"base": "tiny:voxtral"}, "output_dir": str(tmp / "runs"),
            "tracking": {"uri": stack.uri, "experiment": name, "call_timeout_s": 3.0},
            "stages": stages, **(extra or {})}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return path


def _env(stack, **extra: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": stack.username, "MLFLOW_TRACKING_PASSWORD": stack.password,
           "PYTHONUNBUFFERED": "1", **extra}
    for k in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        env.pop(k, None)
    return env


def _sllm(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return run_sllm(args, env=env, timeout=timeout)


def _pg_text(pg_uri: str) -> str:
    """Every row of every table of the tracking database, as text."""
    import psycopg2

    con = psycopg2.connect(pg_uri.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        cur = con.cursor()
        cur.execute("select tablename from pg_tables where schemaname = 'public'")
        out = []
        for (table,) in cur.fetchall():
            cur.execute(f'select * from "{table}"')
            out += [repr(row) for row in cur.fetchall()]
        return "\n".join(out)
    finally:
        con.close()


def _tree_bytes(root: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_pipeline_through_the_server_lineage_and_no_secret_anywhere(tracking_stack, tmp_path: Path) -> None:
    from sllm_lib.tracking.lineage import walk_lineage

    job = _spec(tmp_path, tracking_stack, steps=3, merge=True, name="team-model", extra={
        "description": f"contact ops if {ENV_SECRET} expires",  # a secret value pasted into a plain field
        "env": {"HF_TOKEN": SPEC_SECRET, "SLLM_LOG_LEVEL": "DEBUG"},
    })
    proc = _sllm(["submit", str(job)], _env(tracking_stack, SLLM_PLANTED_API_KEY=ENV_SECRET))
    assert proc.returncode == 0, proc.stderr[-3000:]

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = (tracking_stack.username,
                                                                                     tracking_stack.password)
    try:
        lin = walk_lineage(tracking_stack.uri, "team-model@candidate")
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME")
        os.environ.pop("MLFLOW_TRACKING_PASSWORD")
    assert lin.root.stage == "merge" and [u.stage for u in lin.root.upstream] == ["text"]
    assert lin.root.upstream[0].datasets[0]["name"] == "text_qa_train"
    assert (tracking_stack.s3_dir / tracking_stack.s3_bucket).exists()

    db = _pg_text(tracking_stack.pg_uri)
    assert "team-model" in db and "***" in db  # the run is there, with its secrets masked
    store = _tree_bytes(tracking_stack.s3_dir)
    assert b"HF_TOKEN" in store  # the resolved spec artifact reached S3 ...
    logs = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "runs").rglob("*.log"))
    for secret in (ENV_SECRET, SPEC_SECRET):
        assert secret not in db, f"{secret} in the tracking database"
        assert secret.encode() not in store, f"{secret} in the artifact store"  # ... without its value
        assert secret not in logs and secret not in proc.stdout + proc.stderr, f"{secret} in the logs"


def test_wrong_password_fails_before_anything_is_created(tracking_stack, tmp_path: Path) -> None:
    job = _spec(tmp_path, tracking_stack, steps=2, merge=False, name="team-badpw")
    t0 = time.monotonic()
    proc = _sllm(["submit", str(job)], {**_env(tracking_stack), "MLFLOW_TRACKING_PASSWORD": "wrong-password"})
    assert proc.returncode == 2
    assert "authentication refused" in proc.stderr and "MLFLOW_TRACKING_PASSWORD" in proc.stderr
    assert "wrong-password" not in proc.stderr + proc.stdout
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "runs" / "team-badpw").exists()


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path.is_file() and re.search(pattern, path.read_text(errors="replace"))):
        assert proc.poll() is None, f"sllm exited early ({proc.returncode})"
        assert time.monotonic() < deadline, f"{pattern!r} not in {path} after {timeout_s} s"
        time.sleep(0.2)


def _metric_steps(stack, run_id: str, key: str) -> list[int]:
    from mlflow import MlflowClient

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = stack.username, stack.password
    try:
        return sorted(m.step for m in MlflowClient(tracking_uri=stack.uri).get_metric_history(run_id, key))
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME")
        os.environ.pop("MLFLOW_TRACKING_PASSWORD")


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_outage_mid_stage_training_goes_on_and_sync_replays_once(tracking_stack, tmp_path: Path, fault: str) -> None:
    steps = 40
    job = _spec(tmp_path, tracking_stack, steps=steps, merge=False, name=f"team-outage-{fault}")
    out = open(tmp_path / "sllm.out", "w")
    proc = subprocess.Popen([sys.executable, "-m", "launch.cli", "submit", str(job)], cwd=REPO,
                            env=_env(tracking_stack), stdout=out, stderr=subprocess.STDOUT, text=True)
    run_dir: Path | None = None
    try:
        deadline = time.monotonic() + 120
        while run_dir is None:
            found = list((tmp_path / "runs").glob(f"team-outage-{fault}/*/stages/text/stage.log"))
            run_dir = found[0].parents[2] if found else None
            assert proc.poll() is None and time.monotonic() < deadline, (
                f"no stages/text/stage.log of team-outage-{fault} within 120 s (sllm "
                f"{'exited ' + str(proc.returncode) if proc.poll() is not None else 'still running'}); its output:\n"
                + (tmp_path / "sllm.out").read_text())
            time.sleep(0.2)
        stage_log = run_dir / "stages" / "text" / "stage.log"
        _wait_for(stage_log, rf"step 5/{steps}", proc)
        if fault == "killed":
            tracking_stack.kill_mlflow()
        else:
            tracking_stack.freeze_mlflow()
        assert proc.wait(timeout=600) == 0, (tmp_path / "sllm.out").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
        if fault == "killed":
            tracking_stack.restart_mlflow()
        else:
            tracking_stack.thaw_mlflow()
    text = stage_log.read_text(errors="replace")
    m = re.search(r"longest wait on the server ([0-9.]+) s", text)
    assert m, text[-2000:]
    assert float(m.group(1)) <= 3.0 + 1.0  # tracking.call_timeout_s + scheduling slack
    journal = run_dir / "stages" / "text" / "tracking_journal.jsonl"
    assert journal.is_file()
    state = json.loads((run_dir / "state.json").read_text())
    run_id = state["stages"]["text"]["run_id"]

    pending = sum(1 for _ in open(journal, encoding="utf-8"))
    sync = _sllm(["tracking", "sync", str(run_dir)], _env(tracking_stack), timeout=300)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    print(f"[{fault}] longest wait {m.group(1)} s; journal lines before sync {pending}; sync:\n{sync.stdout}")
    assert _metric_steps(tracking_stack, run_id, "train/loss") == list(range(1, steps + 1))  # each step once
    again = _sllm(["tracking", "sync", str(run_dir)], _env(tracking_stack), timeout=300)
    assert again.returncode == 0
    assert _metric_steps(tracking_stack, run_id, "train/loss") == list(range(1, steps + 1))
