"""Ray executor pieces that need no cluster: profiles, placement arithmetic, reachability, rendering, Jobs API
submissions, the environment a worker gets, fault-injection parsing."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from launch.executor import LaunchRequest
from launch.ray_driver import forwarded_env, job_runtime_env, poll_env, ray_run_name
from launch.ray_executor import RayExecutor, check_reachable, placement_problem
from launch.ray_jobs import DEFAULT_EXCLUDES, IN_JOB_ENV, build_submission
from sllm_lib.errors import JobSpecError, SubmissionError
from sllm_lib.spec import RayProfile, load_cluster_profile
from sllm_lib.training.faults import FaultPlan, parse_fault

REPO = Path(__file__).resolve().parents[3]


def _profile(**kw) -> RayProfile:
    return RayProfile(kind="ray", name="r", **kw)


def _req(single: bool = False) -> LaunchRequest:
    return LaunchRequest(job_name="j", stage="s", spec_path="x.yaml", spec_hash="abcdef0123456789", run_dir="/runs/j",
                         stage_dir="/runs/j/stages/s", tracking_uri="", tracking_strict=False, run_id=None,
                         single_process=single)


# ------------------------------------------------------------------------------------------ profiles


def test_shipped_profiles_validate() -> None:
    local = load_cluster_profile(REPO / "cluster_configs" / "ray_local.yaml")
    assert local.kind == "ray" and local.address == "local" and local.num_workers == 2
    multi = load_cluster_profile(REPO / "cluster_configs" / "ray_a100_2x8.yaml")
    assert multi.num_workers == 16 and multi.use_gpu and multi.worker_resources()["GPU"] == 1
    assert multi.storage_path.startswith("s3://") and multi.jobs_api


@pytest.mark.parametrize("address", ["head:6379", "10.0.0.5:6379", "ray://head:10001", "http://head:8265", "auto"])
def test_addresses_accepted(address: str) -> None:
    assert _profile(address=address).address == address


@pytest.mark.parametrize("address", ["head", "head:port", ":6379", "head:70000"])
def test_bad_address_names_the_field(tmp_path: Path, address: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(f"kind: ray\nname: r\naddress: '{address}'\n", encoding="utf-8")
    with pytest.raises(JobSpecError) as err:
        load_cluster_profile(f)
    assert "address" in str(err.value) and "HOST:PORT" in str(err.value) and str(f) in str(err.value)


def test_worker_resources_defaults() -> None:
    assert _profile().worker_resources() == {"CPU": 1.0}
    assert _profile(use_gpu=True).worker_resources() == {"CPU": 1.0, "GPU": 1.0}
    assert _profile(use_gpu=True, resources_per_worker={"CPU": 8, "GPU": 1}).worker_resources() == {"CPU": 8, "GPU": 1}


# ------------------------------------------------------------------------------------------ placement


def test_placement_fits_and_not() -> None:
    nodes = [{"CPU": 2.0}, {"CPU": 3.0}]
    assert placement_problem(nodes, {"CPU": 1.0}, 5, "PACK") is None
    msg = placement_problem(nodes, {"CPU": 1.0}, 6, "PACK")
    assert msg is not None and "6 workers" in msg and "CPU: 5" in msg and "room for 5" in msg


def test_placement_counts_per_node_not_totals() -> None:
    # 3 + 3 CPUs is 6 in all, but a 4-CPU worker fits on neither node
    assert "room for 0" in placement_problem([{"CPU": 3.0}, {"CPU": 3.0}], {"CPU": 4.0}, 1, "PACK")


def test_placement_gpus_and_strict_strategies() -> None:
    nodes = [{"CPU": 16.0, "GPU": 8.0}, {"CPU": 16.0, "GPU": 8.0}]
    gpu = {"CPU": 1.0, "GPU": 1.0}
    assert placement_problem(nodes, gpu, 16, "PACK") is None
    assert placement_problem(nodes, gpu, 16, "STRICT_PACK") is not None  # no single node holds 16 GPUs
    assert placement_problem(nodes, gpu, 8, "STRICT_PACK") is None
    assert placement_problem(nodes, gpu, 2, "STRICT_SPREAD") is None
    assert placement_problem(nodes, gpu, 3, "STRICT_SPREAD") is not None
    assert "GPU: 0" in placement_problem([{"CPU": 2.0}], gpu, 1, "PACK")


# ------------------------------------------------------------------------------------------ reachability


def test_unreachable_address_fails_fast_and_clearly() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(SubmissionError) as err:
        check_reachable(f"127.0.0.1:{port}", 3.0, profile="ray-x")
    assert time.monotonic() - t0 < 10
    text = str(err.value)
    assert "ray-x" in text and f"127.0.0.1:{port}" in text and "not reachable" in text and "nothing was submitted" in text


def test_jobs_api_address_is_not_an_executor_address() -> None:
    with pytest.raises(JobSpecError, match="Ray Jobs API"):
        RayExecutor(_profile(address="http://127.0.0.1:8265"))


def test_inside_a_ray_job_the_jobs_address_means_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IN_JOB_ENV, "1")
    assert RayExecutor(_profile(address="http://127.0.0.1:8265")).profile.address == "auto"


# ------------------------------------------------------------------------------------------ rendering


def test_render_training_and_single_process_stages() -> None:
    ex = RayExecutor(_profile(address="127.0.0.1:6379", num_workers=4, max_failures=2))
    text = ex.render(_req())
    assert "TorchTrainer(4 x" in text and "gloo" in text and "max_failures=2" in text and "/runs/j/ray" in text
    assert "TorchTrainer(1 x" in ex.render(_req(single=True))
    assert RayExecutor.scaling_for(ex.profile, _req())["num_workers"] == 4


# ------------------------------------------------------------------------------------------ environments


def test_job_runtime_env_adds_pythonpath_and_the_placement_bound() -> None:
    env = job_runtime_env(_profile(placement_timeout_s=30), Path("/src/sllm"))
    assert env["env_vars"]["PYTHONPATH"] == "/src/sllm"
    assert env["env_vars"]["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] == "30.0"
    shipped = job_runtime_env(_profile(runtime_env={"working_dir": ".", "env_vars": {"A": "1"}}), Path("/src"))
    assert "PYTHONPATH" not in shipped["env_vars"] and shipped["env_vars"]["A"] == "1"


def test_controller_polls_fast_unless_the_user_exported_ray_s_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    assert poll_env(RayProfile(kind="ray", name="p")) == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}
    assert poll_env(RayProfile(kind="ray", name="p", controller_poll_s=1.5)) == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.5"}
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    assert poll_env(RayProfile(kind="ray", name="p", controller_poll_s=1.5)) == {}
    with pytest.raises(ValueError, match="controller_poll_s"):
        RayProfile(kind="ray", name="p", controller_poll_s=0)


def test_worker_env_forwards_tracking_credentials_outside_the_runtime_env() -> None:
    base = {"MLFLOW_TRACKING_PASSWORD": "pw-123456", "AWS_SECRET_ACCESS_KEY": "sk-abcdef", "HOME": "/root",
            "SLLM_INJECT_FAULT": "step=3"}
    env = forwarded_env(_req(), base)
    assert env["MLFLOW_TRACKING_PASSWORD"] == "pw-123456" and env["AWS_SECRET_ACCESS_KEY"] == "sk-abcdef"
    assert "HOME" not in env and env["SLLM_INJECT_FAULT"] == "step=3"


def test_jobs_submission_shared_checkout(tmp_path: Path) -> None:
    spec, cluster = tmp_path / "jobs" / "a.yaml", tmp_path / "cluster_configs" / "r.yaml"
    prof = _profile(address="http://127.0.0.1:8265", entrypoint_python="/venv/bin/python")
    cmd, env = build_submission(spec, cluster, ["stages.0.train.max_steps=2"], prof, cwd=tmp_path,
                                environ={"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_TRACKING_PASSWORD": "x" * 9})
    assert cmd.startswith(f"cd {tmp_path} && PYTHONPATH={tmp_path}")
    assert "/venv/bin/python -m launch.cli submit jobs/a.yaml --cluster cluster_configs/r.yaml" in cmd
    assert "--set stages.0.train.max_steps=2" in cmd
    assert env["env_vars"][IN_JOB_ENV] == "1" and env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "MLFLOW_TRACKING_PASSWORD" not in env["env_vars"]  # the dashboard shows runtime envs


def test_jobs_submission_uploaded_working_dir(tmp_path: Path) -> None:
    prof = _profile(address="http://h:8265", runtime_env={"working_dir": ".", "excludes": ["data/big"]})
    cmd, env = build_submission(tmp_path / "a.yaml", Path("ray_a100_2x8"), [], prof, cwd=tmp_path,
                                environ={}, cluster_is_name=True)
    assert cmd == "python -m launch.cli submit a.yaml --cluster ray_a100_2x8"
    assert set(DEFAULT_EXCLUDES) | {"data/big"} == set(env["excludes"])


# ------------------------------------------------------------------------------------------ fault injection


def test_fault_plan_parsing() -> None:
    assert parse_fault("step=4") == FaultPlan(step=4)
    assert parse_fault("step=4, rank=1, stage=text, times=2") == FaultPlan(step=4, rank=1, stage="text", times=2)
    for bad in ("rank=1", "step=x", "step=1,when=now"):
        with pytest.raises(JobSpecError, match="SLLM_INJECT_FAULT"):
            parse_fault(bad)


# ------------------------------------------------------------------------------------------ checkpoint restore


class _FakeRayCheckpoint:
    """Shaped like ray.train.Checkpoint: as_directory() yields a folder holding `checkpoint/`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def as_directory(self):
        import contextlib

        return contextlib.nullcontext(str(self.root))


def test_restore_puts_the_reported_checkpoint_back_atomically(tmp_path: Path) -> None:
    from launch.ray_driver import restore_checkpoint
    from sllm_lib.training.runner import COMPLETE_MARKER, latest_complete_checkpoint

    src = tmp_path / "ray" / "checkpoint"
    src.mkdir(parents=True)
    (src / "trainer_state.json").write_text(json.dumps({"global_step": 6, "max_steps": 8}))
    (src / "trainable.safetensors").write_bytes(b"x" * 10)
    (src / COMPLETE_MARKER).write_text("{}")
    folder = tmp_path / "stage" / "checkpoints"
    (folder / "checkpoint-6").mkdir(parents=True)  # a half-written leftover, no marker
    placed = restore_checkpoint(_FakeRayCheckpoint(tmp_path / "ray"), folder, rank=0)
    assert placed == folder / "checkpoint-6"
    assert latest_complete_checkpoint(folder) == placed
    assert (placed / "trainable.safetensors").read_bytes() == b"x" * 10
    assert not list(folder.glob(".restore-*"))
    assert restore_checkpoint(None, folder, rank=0) is None  # a first attempt: nothing to restore
    assert restore_checkpoint(_FakeRayCheckpoint(tmp_path / "ray"), folder, rank=1) is None  # rank 0's job


def test_ray_run_names_are_per_stage_folder() -> None:
    from dataclasses import replace

    req = _req()
    assert ray_run_name(req) == "j-abcdef012345-s"
    p0 = replace(req, stage_dir="/runs/j/stages/s/points/0")
    p1 = replace(req, stage_dir="/runs/j/stages/s/points/1")
    assert ray_run_name(p0) == "j-abcdef012345-s-points-0" != ray_run_name(p1)  # sweep points never share checkpoints


def test_worker_env_never_overrides_rays_gpu_assignment() -> None:
    assert "CUDA_VISIBLE_DEVICES" not in forwarded_env(_req(), {"CUDA_VISIBLE_DEVICES": "0,1", "HF_HOME": "/h"})


def test_loopback_settings_only_for_private_heads() -> None:
    from launch.ray_head import is_loopback, ray_env

    assert is_loopback(None) and is_loopback("local") and is_loopback("127.0.0.1:6379")
    assert is_loopback("ray://localhost:10001") and not is_loopback("10.0.0.5:6379")
    assert not is_loopback("ray://head.internal:10001")
    remote = ray_env({}, loopback=False)
    assert "RAY_AUTH_MODE" not in remote and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in remote  # the user's own
    assert ray_env({}, loopback=True)["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert ray_env({"RAY_AUTH_MODE": "token"})["RAY_AUTH_MODE"] == "token"


class _FakeRay:
    """`ray.init` that refuses the first `refusals` connections with Ray Client's proxy error (or `error`)."""

    REFUSED = ("Initialization failure from server:\nTraceback (most recent call last):\nRuntimeError: Starting Ray "
               "client server failed. See ray_client_server_23000.err for detailed logs.")

    def __init__(self, refusals: int, error: str = REFUSED) -> None:
        self.refusals, self.error, self.inits, self.shutdowns, self._up = refusals, error, 0, 0, False

    def init(self, **kw):
        self.inits += 1
        if self.inits <= self.refusals:
            self._up = True  # a refused Ray Client connection can leave the client context half set
            raise ConnectionAbortedError(self.error)
        self._up = True

    def is_initialized(self):
        return self._up

    def shutdown(self):
        self.shutdowns += 1
        self._up = False


def test_ray_client_refusal_is_retried_then_reported(caplog) -> None:
    from launch.ray_driver import connect

    ray = _FakeRay(refusals=2)
    with caplog.at_level("WARNING", logger="launch.ray_driver"):
        connect(ray, "ray://127.0.0.1:10001", {}, pause_s=0)
    assert ray.inits == 3 and ray.shutdowns == 2 and "try 2/3" in caplog.text
    zombie = ("Initialization failure from server:\nTraceback (most recent call last):\n  File \".../proxier.py\", "
              "line 396, in start_specific_server\n    cmd = psutil_proc.cmdline()\npsutil.ZombieProcess: PID still "
              "exists but it's a zombie (pid=19265)")
    ray = _FakeRay(refusals=1, error=zombie)  # the proxy looked at the server process after it had exited
    connect(ray, "ray://127.0.0.1:10001", {}, pause_s=0)
    assert ray.inits == 2
    ray = _FakeRay(refusals=5)
    with pytest.raises(ConnectionAbortedError, match="Starting Ray client server failed"):
        connect(ray, "ray://127.0.0.1:10001", {}, pause_s=0)
    assert ray.inits == 3
    ray = _FakeRay(refusals=1)  # a GCS address never goes through Ray Client's proxy: no retry
    with pytest.raises(ConnectionAbortedError):
        connect(ray, "127.0.0.1:6379", {}, pause_s=0)
    ray = _FakeRay(refusals=1, error="Initialization failure from server: version mismatch")
    with pytest.raises(ConnectionAbortedError, match="version mismatch"):  # other refusals are final
        connect(ray, "ray://127.0.0.1:10001", {}, pause_s=0)
    assert ray.inits == 1
