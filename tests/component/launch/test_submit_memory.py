"""`sllm submit` of a real-size spec on the CPU-only local profile is refused with the planner's reason, before
anything is submitted; the tiny demo specs still run there. (Builds the real models on the meta device only.)"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import launch.cli.jobs as jobs
from launch.cli.common import _load
from sllm_lib.errors import PlanError

REPO = Path(__file__).resolve().parents[3]
VOXTRAL = REPO / "jobs" / "sllm_voxtral_3stage.yaml"
HOST = 16e9  # a 16 GB machine, whatever this one has


@pytest.fixture(autouse=True)
def _host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "host_memory_bytes", lambda: int(HOST))


def test_real_voxtral_spec_is_refused_on_the_local_cpu_profile() -> None:
    p = _load(VOXTRAL, None, "local")
    with pytest.raises(PlanError) as info:
        jobs._check_memory(p, force=False, cluster="local")
    msg = str(info.value)
    assert str(VOXTRAL) in msg and "mistralai/Voxtral-Mini-3B-2507" in msg and "'local'" in msg
    assert "nothing was submitted" in msg and "this machine has 16.0 GB" in msg
    needed = [float(x.split(" GB")[0]) for x in msg.split("predicted to need ")[1:]]
    assert needed and all(n > 16.0 for n in needed) and needed[0] > 18.7  # stage 1: 4.68B params in fp32, 18.7 GB
    assert "--cluster slurm_a100_2x8" in msg and "--force" in msg


def test_force_submits_anyway_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    p = _load(VOXTRAL, None, "local")
    with caplog.at_level(logging.WARNING):
        jobs._check_memory(p, force=True, cluster="local")
    assert any("--force: submitting anyway" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["demo_sllm_tiny.yaml", "medqa_tiny.yaml", "aac_vlm_tiny.yaml",
                                  "compress_medqa_tiny.yaml", "mental_health_tiny.yaml"])
def test_tiny_specs_still_pass_on_the_local_profile(name: str) -> None:
    jobs._check_memory(_load(REPO / "jobs" / name, None, "local"), force=False, cluster="local")


def test_cli_submit_exits_2_naming_spec_model_and_profile(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from launch.cli import main

    monkeypatch.setattr("sys.argv", ["sllm", "submit", str(VOXTRAL), "--cluster", "local"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    text = " ".join(capsys.readouterr().err.split())
    assert "Voxtral-Mini-3B-2507" in text and "does not fit cluster profile 'local'" in text
