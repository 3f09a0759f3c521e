"""Every shipped job spec and cluster profile validates (new files are picked up by the glob)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sllm_lib.spec import JobSpec, find_cluster_profile, load_cluster_profile, load_job_spec, spec_hash, topo_order

REPO = Path(__file__).resolve().parents[2]


def _yaml_files(folder: str) -> list[Path]:
    root = REPO / folder
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in {".yaml", ".yml"})


JOB_FILES = _yaml_files("jobs")
CLUSTER_FILES = _yaml_files("cluster_configs")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO)) for p in paths]


def test_globs_find_files() -> None:
    assert JOB_FILES, "no job specs found under jobs/"
    assert CLUSTER_FILES, "no cluster profiles found under cluster_configs/"
    assert REPO / "jobs" / "demo_sllm_tiny.yaml" in JOB_FILES
    assert REPO / "cluster_configs" / "local.yaml" in CLUSTER_FILES


@pytest.mark.parametrize("path", JOB_FILES, ids=_ids(JOB_FILES))
def test_job_spec_validates(path: Path) -> None:
    spec = load_job_spec(path)
    assert isinstance(spec, JobSpec)
    assert len(topo_order(spec)) == len(spec.stages)
    assert len(spec_hash(spec)) == 64
    # the cluster it names resolves (a shipped file, or the embedded local default)
    find_cluster_profile(spec.cluster, spec_path=path)


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=_ids(CLUSTER_FILES))
def test_cluster_profile_validates(path: Path) -> None:
    prof = load_cluster_profile(path)
    assert prof.kind in {"local", "slurm", "ray"}
    assert prof.name
