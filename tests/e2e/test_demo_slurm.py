"""The demo pipeline through `sllm submit --cluster slurm_local` on the real local SLURM, then status/logs/cancel."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_sllm

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]


def _sllm(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_sllm(args, cwd)


def test_demo_on_slurm_local(slurm_cluster, tmp_path: Path) -> None:
    proc = _sllm(["submit", str(REPO / "jobs" / "demo_sllm_tiny.yaml"), "--cluster", "slurm_local"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = re.findall(r"stage (\w+) \(\w+\): submitted as job (\d+)", proc.stdout)
    assert [s for s, _ in ids] == ["text_lora", "asr_projector", "multitask", "merge", "eval"]
    assert "lineage of sllm-demo-tiny@candidate" in proc.stdout
    (run_dir,) = list((tmp_path / "runs" / "demo-sllm-tiny").iterdir())

    deadline = time.monotonic() + 60  # the last job's epilogue may still run when submitit has its result
    while True:
        status = _sllm(["status", str(run_dir)], cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        rows = status.stdout.replace("│", " ")
        if all(re.search(rf"COMPLETED\s+{job_id}\s+COMPLETED", rows) for _, job_id in ids):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(2)

    logs = _sllm(["logs", str(run_dir), "text_lora"], cwd=tmp_path)
    assert logs.returncode == 0 and "stage=text_lora step 40/40" in logs.stdout

    cancel = _sllm(["cancel", str(run_dir)], cwd=tmp_path)
    assert cancel.returncode == 0 and "nothing (no unfinished stage)" in cancel.stdout
