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


def _require_services() -> bool:
    return os.environ.get("SLLM_REQUIRE_SERVICES") == "1"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real single-node SLURM (munge, MariaDB, slurmdbd, slurmctld, slurmd) on 127.0.0.1, fresh state dir.

    Skips when SLURM is not installed, unless SLLM_REQUIRE_SERVICES=1 (CI), where that is a failure.
    """
    import shutil
    import subprocess

    script = REPO / "scripts" / "slurm_local.sh"
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        if _require_services():
            pytest.fail("SLURM is not installed and SLLM_REQUIRE_SERVICES=1: run scripts/slurm_local.sh install")
        pytest.skip("SLURM not installed (scripts/slurm_local.sh install)")
    state = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(["bash", str(script), "start", str(state)], capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in (state / "log").glob("*"))
        pytest.fail(f"local SLURM did not start:\n{proc.stderr}\n{logs}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        yield state
    finally:
        subprocess.run(["bash", str(script), "stop", str(state)], capture_output=True, timeout=60)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
