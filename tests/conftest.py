"""Shared fixtures: a per-session preset cache and the repo paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session", autouse=True)
def _sllm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny presets are built once per session into a fresh folder (never the user's cache)."""
    home = Path(os.environ.get("SLLM_TEST_HOME") or tmp_path_factory.mktemp("sllm_home"))
    os.environ["SLLM_HOME"] = str(home)
    return home


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_run():
    """Fail a test that leaves an active global MLflow run behind (the launcher must never start one)."""
    yield
    import sys

    if "mlflow" in sys.modules:
        import mlflow

        active = mlflow.active_run()
        if active is not None:
            mlflow.end_run()
            pytest.fail(f"test leaked an active MLflow run {active.info.run_id}")
