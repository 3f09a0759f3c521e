"""Every hub model a shipped spec names has a bundled config snapshot (the planner's offline source)."""

from __future__ import annotations

import json

import pytest

from sllm_lib.memory.config import bundled_config_path
from sllm_lib.memory.standins import STAND_INS, phi3v_image_tokens
from sllm_lib.spec import load_job_spec
from tests.conftest import REPO


def _hub_ids() -> list[tuple[str, str]]:
    out = []
    for path in sorted((REPO / "jobs").glob("*.yaml")):
        spec = load_job_spec(path)
        base = spec.model.base if spec.model is not None else ""
        if base and not base.startswith(("tiny:", "mini:", "/", ".", "~")):  # presets are built, not downloaded
            out.append((path.name, base))
    return out


@pytest.mark.parametrize(("spec", "repo_id"), _hub_ids())
def test_hub_model_of_every_shipped_spec_is_bundled(spec: str, repo_id: str) -> None:
    path = bundled_config_path(repo_id)
    assert path.is_file(), f"jobs/{spec} names {repo_id}: add its config.json as sllm_lib/model_configs/{path.name}"
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["model_type"] and raw["architectures"]


def test_the_real_specs_are_all_there() -> None:
    names = {r for _, r in _hub_ids()}
    assert {"LGAI-EXAONE/EXAONE-3.5-7.8B-Instruct", "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct",
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "microsoft/Phi-3.5-vision-instruct",
            "mistralai/Voxtral-Mini-3B-2507"} <= names


def test_remote_code_snapshots_have_a_stand_in() -> None:
    for path in (REPO / "sllm_lib" / "model_configs").glob("*.json"):
        raw = json.loads(path.read_text(encoding="utf-8"))
        if "Exaone" in raw["architectures"][0] or raw["model_type"] == "phi3_v":
            assert raw["model_type"] in STAND_INS, path.name


def test_phi3v_image_tokens_follow_the_hd_transform() -> None:
    assert phi3v_image_tokens(1) == (1 + 1) * 144 + 1 + 2 * 12  # one crop + the global view: 313
    assert phi3v_image_tokens(4) == (4 + 1) * 144 + 1 + 5 * 12  # 4 x 1 crops is the largest layout: 781
