"""The local executor's warm starter (launch/warm_start.py), for real: a process that imports torch and transformers
once and forks each stage. A forked stage must look like a fresh `python -m launch.worker`: exactly the environment
it was given, its own numpy seed, default signal handlers, no pipe of the starter's; its exit status and signals
reach the executor as subprocess.Popen's would; a starter that dies, idles or cannot import never loses a stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launch.executor import JobState, LaunchRequest
from launch.local import LocalExecutor
from launch.warm_start import ForkedProcess, StarterUnavailable, WarmStarter
from sllm_lib.spec import LocalProfile, dump_resolved_yaml, load_job_spec
from tests.conftest import REPO, SAMPLE

PROBE = "tests.integration.warm_probe"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "", **extra}


def _probe(starter: WarmStarter, tmp: Path, name: str, *, env: dict[str, str] | None = None, **todo: object
           ) -> tuple[ForkedProcess, Path]:
    req = tmp / f"{name}.json"
    req.write_text(json.dumps(todo), encoding="utf-8")
    proc = starter.spawn(req, env or starter.env, str(tmp), tmp / f"{name}.done", entry=PROBE)
    return proc, req.with_suffix(".state.json")


def _state(path: Path, proc: ForkedProcess, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        assert time.monotonic() < deadline, f"the probe (pid {proc.pid}) wrote no {path.name} in {timeout_s:.0f} s"
        time.sleep(0.05)
    return json.loads(path.read_text(encoding="utf-8"))


def _until(cond, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"{what} not within {timeout_s:.0f} s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def starter():
    s = WarmStarter(_env(), str(REPO))
    yield s
    s.close()
    s.proc.wait(timeout=30)


def test_a_forked_stage_starts_as_a_fresh_process_would(starter: WarmStarter, tmp_path: Path) -> None:
    env = _env(SLLM_ONLY_HERE="1")  # a request's env is applied exactly, whatever the starter's
    env.pop("HOME", None)
    a, a_state = _probe(starter, tmp_path, "a", env=env)
    b, b_state = _probe(starter, tmp_path, "b")
    sa, sb = _state(a_state, a), _state(b_state, b)
    assert a.wait(timeout=60) == 0 and b.wait(timeout=60) == 0
    assert sa["ppid"] == sb["ppid"] == starter.proc.pid  # forked by the starter, not started by us
    assert sa["env"] == env and sb["env"] == starter.env
    assert sa["argv"][1] == str(tmp_path / "a.json") and sa["argv"][0].endswith("warm_probe.py")
    assert sa["cwd"] == str(tmp_path)
    assert sa["torch_loaded"]  # imported once, before the fork
    assert sa["numpy"] != sb["numpy"]  # each process its own seed, as two fresh interpreters
    assert sa["sigint_default"] and sa["sigterm_default"]  # the starter's own handlers are not inherited
    assert sa["stdin"] == "/dev/null"
    held = {fd: target for fd, target in sa["fds"].items() if int(fd) > 2}
    assert not [t for t in held.values() if t.startswith("pipe:")], f"the stage holds the starter's pipes: {held}"


def test_exit_codes_and_signals_reach_the_executor(starter: WarmStarter, tmp_path: Path) -> None:
    failed, _ = _probe(starter, tmp_path, "failed", code=3)
    assert failed.wait(timeout=60) == 3 and failed.poll() == 3
    slow, slow_state = _probe(starter, tmp_path, "slow", sleep_s=120)
    _state(slow_state, slow)
    assert slow.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        slow.wait(timeout=0.3)
    slow.terminate()
    assert slow.wait(timeout=30) == -signal.SIGTERM


def test_a_starter_killed_mid_stage_loses_no_stage(tmp_path: Path) -> None:
    """Stages go on without their starter; the status that can no longer be told comes from the result file."""
    s = WarmStarter(_env(), str(REPO))
    ok, ok_state = _probe(s, tmp_path, "ok", sleep_s=3, done=str(tmp_path / "ok.done"))
    bad, bad_state = _probe(s, tmp_path, "bad", sleep_s=3)
    _state(ok_state, ok), _state(bad_state, bad)
    s.proc.kill()
    _until(lambda: not s.alive, "the killed starter seen as gone", 30)
    assert ok.poll() is None and bad.poll() is None  # still running
    assert ok.wait(timeout=60) == 0  # wrote its result: it completed
    assert bad.wait(timeout=60) == 1  # no result: failed
    with pytest.raises(StarterUnavailable):
        _probe(s, tmp_path, "late")


def test_an_idle_starter_leaves() -> None:
    s = WarmStarter(_env(), str(REPO), idle_s=0.5)
    _until(lambda: not s.alive, "the idle starter's exit")
    assert s.proc.wait(timeout=30) == 0 and not s.failed


def test_a_starter_that_cannot_import_says_why(tmp_path: Path) -> None:
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('no torch in this environment')\n")
    s = WarmStarter(_env(PYTHONPATH=f"{tmp_path}:{REPO}"), str(REPO))
    with pytest.raises(StarterUnavailable, match="no torch in this environment"):
        _probe(s, tmp_path, "x")
    assert s.failed and not s.alive


def _stage_request(tmp: Path, name: str, **env: str) -> LaunchRequest:
    spec = {"name": "warm", "model": {"base": "tiny:voxtral"}, "output_dir": str(tmp / name / "runs"), "stages": [{
        "name": "text", "kind": "text_sft",
        "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl")}]},
        "train": {"per_device_bsz": 2, "max_steps": 2, "precision": "fp32", "save_steps": 1000,
                  "logging_steps": 1, "max_seq_len": 64},
        "lora": {"r": 2, "alpha": 4}, "trainable": ["lora"]}]}
    import yaml

    # each request its own spec files: a forked stage starts at once and reads its spec while the next is written
    run = tmp / name
    run.mkdir()
    src = run / "job.yaml"
    src.write_text(yaml.safe_dump(spec), encoding="utf-8")
    resolved = run / "spec.resolved.yaml"
    resolved.write_text(dump_resolved_yaml(load_job_spec(src)), encoding="utf-8")
    return LaunchRequest(job_name="warm", stage="text", spec_path=str(resolved), spec_hash="h", run_dir=str(run),
                         stage_dir=str(tmp / name / "text"), tracking_uri="", tracking_strict=False, run_id=None,
                         single_process=True, env=dict(env))


def test_the_local_executor_forks_stages_whose_environment_matches(tmp_path: Path) -> None:
    executor = LocalExecutor(LocalProfile(kind="local", cpus=1))
    try:
        first = executor.submit(_stage_request(tmp_path, "first"))
        second = executor.submit(_stage_request(tmp_path, "second"))
        other = executor.submit(_stage_request(tmp_path, "other", SLLM_OTHER_ENV="1"))
        for job in (first, second, other):
            assert job.result(timeout_s=300).steps == 2
            assert job.state() is JobState.COMPLETED
        starter = executor._starter
        assert starter is not None
        assert all(isinstance(j.procs[0], ForkedProcess) for j in (first, second))
        assert isinstance(other.procs[0], subprocess.Popen)  # another environment: a fresh interpreter
        assert "stage=text kind=text_sft starting" in (tmp_path / "second" / "text" / "stage.log").read_text()
    finally:
        executor.close()
    assert starter.proc.wait(timeout=30) == 0  # closing the executor ends its starter

