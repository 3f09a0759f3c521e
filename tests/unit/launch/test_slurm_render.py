"""Rendered sbatch scripts of the shipped SLURM profiles, compared with golden files.

Regenerate after an intended change: SLLM_REGEN_GOLDEN=1 pytest tests/unit/launch/test_slurm_render.py
"""

from __future__ import annotations

import difflib
import os
import sys

import pytest

from launch.executor import LaunchRequest
from launch.slurm import SlurmExecutor
from sllm_lib.spec import load_cluster_profile
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden"
CASES = [("slurm_local", "text_lora", []), ("slurm_a100_2x8", "multitask", ["101", "102"])]


def _render(profile: str, stage: str, after: list[str]) -> str:
    prof = load_cluster_profile(REPO / "cluster_configs" / f"{profile}.yaml")
    req = LaunchRequest(job_name="demo-sllm-tiny", stage=stage, spec_path="/runs/demo/abc/spec.resolved.yaml",
                        spec_hash="abc", run_dir="/runs/demo/abc", stage_dir=f"/runs/demo/abc/stages/{stage}",
                        tracking_uri="", tracking_strict=False, run_id=None, after=after)
    return SlurmExecutor(prof).render(req).replace(sys.executable, "<python>")


@pytest.mark.parametrize(("profile", "stage", "after"), CASES)
def test_sbatch_matches_golden(profile: str, stage: str, after: list[str]) -> None:
    text = _render(profile, stage, after)
    golden = GOLDEN / f"{profile}.{stage}.sbatch"
    if os.environ.get("SLLM_REGEN_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8")
    expected = golden.read_text(encoding="utf-8")
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(golden), "rendered"))
    assert text == expected, f"{diff}\nregenerate: SLLM_REGEN_GOLDEN=1 pytest {__file__}"


def test_render_is_pure(tmp_path) -> None:
    prof = load_cluster_profile(REPO / "cluster_configs" / "slurm_local.yaml")
    req = LaunchRequest(job_name="j", stage="s", spec_path=str(tmp_path / "x.yaml"), spec_hash="h",
                        run_dir=str(tmp_path / "run"), stage_dir=str(tmp_path / "run" / "s"), tracking_uri="",
                        tracking_strict=False, run_id=None)
    SlurmExecutor(prof).render(req)
    assert list(tmp_path.iterdir()) == []


def test_dependencies_and_task_layout() -> None:
    text = _render("slurm_a100_2x8", "multitask", ["101", "102"])
    assert "#SBATCH --dependency=afterok:101:102" in text
    assert "#SBATCH --kill-on-invalid-dep=yes" in text
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=8" in text  # one process per GPU
    assert "#SBATCH --signal=USR2@180" in text
    assert "--dependency" not in _render("slurm_local", "text_lora", [])


def _command_line(text: str) -> str:
    return next(ln for ln in text.splitlines() if "submitit.core._submit" in ln)


def test_a100_runs_the_python_its_setup_lines_activate() -> None:
    text = SlurmExecutor(load_cluster_profile(REPO / "cluster_configs" / "slurm_a100_2x8.yaml")).render(
        LaunchRequest(job_name="j", stage="s", spec_path="/r/spec.yaml", spec_hash="h", run_dir="/r",
                      stage_dir="/r/s", tracking_uri="", tracking_strict=False, run_id=None))
    lines = text.splitlines()
    activate = lines.index("source /shared/envs/sllm/bin/activate")
    command = _command_line(text)
    assert lines.index(command) > activate
    assert " python -u -m submitit.core._submit " in command  # resolved on the node, after the activation
    assert sys.executable not in text


def test_local_cluster_runs_the_submitting_interpreter() -> None:
    command = _command_line(_render("slurm_local", "text_lora", []))
    assert " <python> -u -m submitit.core._submit " in command  # _render writes sys.executable as <python>


@pytest.mark.parametrize(("value", "expected"), [
    ("python", "python"), ("/shared/envs/sllm/bin/python", "/shared/envs/sllm/bin/python"),
    ("singularity exec /img/sllm.sif python", "singularity exec /img/sllm.sif python"),
    ("submitting", sys.executable),
])
def test_profile_python_reaches_the_script(value: str, expected: str) -> None:
    from sllm_lib.spec import SlurmProfile

    prof = SlurmProfile(kind="slurm", name="t", partition="debug", python=value)
    req = LaunchRequest(job_name="j", stage="s", spec_path="/r/spec.yaml", spec_hash="h", run_dir="/r",
                        stage_dir="/r/s", tracking_uri="", tracking_strict=False, run_id=None)
    assert _command_line(SlurmExecutor(prof).render(req)).split(" -u -m submitit")[0].endswith(" " + expected)


def test_blank_python_is_refused(tmp_path) -> None:
    from sllm_lib.errors import JobSpecError

    path = tmp_path / "p.yaml"
    path.write_text("kind: slurm\nname: t\npython: '  '\n", encoding="utf-8")
    with pytest.raises(JobSpecError, match=r"python.*blank"):
        load_cluster_profile(path)


@pytest.mark.parametrize(("profile", "stage", "after"), CASES)
def test_render_needs_no_slurm_on_this_machine(profile: str, stage: str, after: list[str], tmp_path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`sllm plan --cluster slurm_...` on a laptop: the same script, without srun on PATH (submitit's own
    constructor refuses that); submitting still needs SLURM (preflight says sbatch is missing)."""
    import shutil

    from sllm_lib.errors import SubmissionError

    with_slurm = _render(profile, stage, after)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no srun, no sbatch
    assert shutil.which("srun") is None
    assert _render(profile, stage, after) == with_slurm
    prof = load_cluster_profile(REPO / "cluster_configs" / f"{profile}.yaml")
    with pytest.raises(SubmissionError, match="sbatch not found on PATH"):
        SlurmExecutor(prof).preflight(LaunchRequest(
            job_name="j", stage=stage, spec_path="x", spec_hash="h", run_dir=str(tmp_path), stage_dir=str(tmp_path),
            tracking_uri="", tracking_strict=False, run_id=None))
