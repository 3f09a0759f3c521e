"""Tests for launch.pipeline planning: build_plan, model_chain and preflight (no training, no MLflow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from launch.pipeline import Plan, build_plan, model_chain, preflight
from sllm_lib.errors import PlanError, SllmError
from sllm_lib.spec import LocalProfile, load_job_spec, spec_hash

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "jobs" / "demo_sllm_tiny.yaml"
SAMPLE = REPO / "data" / "sample"
DEMO_ORDER = ["text_lora", "asr_projector", "multitask", "merge", "eval"]


@pytest.fixture
def demo_plan(tmp_path: Path, monkeypatch) -> Plan:
    monkeypatch.chdir(tmp_path)  # output_dir "runs" is relative to the working dir
    spec = load_job_spec(DEMO)
    return build_plan(spec, DEMO, LocalProfile(kind="local"))


def write_spec(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def small_raw(sft_train: str, eval_path: str) -> dict[str, Any]:
    return {
        "name": "pf",
        "model": {"base": "tiny:voxtral"},
        "stages": [
            {"name": "sft", "kind": "text_sft", "trainable": ["lora"], "lora": {"r": 4},
             "data": {"train": [{"kind": "text_qa", "path": sft_train}],
                      "val": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_val.jsonl")}]},
             "train": {"max_steps": 2}},
            {"name": "merge", "kind": "merge", "from_stage": "sft"},
            {"name": "eval", "kind": "eval", "from_stage": "merge",
             "datasets": [{"kind": "text_qa", "path": eval_path}]},
        ],
    }


# ------------------------------------------------------------------------------------------ build_plan


def test_plan_stage_order_and_kinds(demo_plan: Plan) -> None:
    assert [s.name for s in demo_plan.stages] == DEMO_ORDER
    assert [s.kind for s in demo_plan.stages] == ["text_sft", "asr_adapter", "multitask", "merge", "eval"]


def test_model_chain() -> None:
    spec = load_job_spec(DEMO)
    assert model_chain(spec, None) == []
    assert model_chain(spec, "text_lora") == ["text_lora"]
    assert model_chain(spec, "asr_projector") == ["text_lora", "asr_projector"]
    assert model_chain(spec, "merge") == ["text_lora", "asr_projector", "multitask"]
    assert model_chain(spec, "eval") == ["text_lora", "asr_projector", "multitask"]


def test_planned_upstream_and_chain(demo_plan: Plan) -> None:
    by_name = {s.name: s for s in demo_plan.stages}
    assert by_name["text_lora"].upstream == []
    assert by_name["text_lora"].chain == []
    assert by_name["multitask"].upstream == ["asr_projector"]
    assert by_name["multitask"].chain == ["text_lora", "asr_projector"]
    assert by_name["merge"].chain == ["text_lora", "asr_projector", "multitask"]
    assert by_name["eval"].upstream == ["merge"]
    assert by_name["eval"].chain == ["text_lora", "asr_projector", "multitask"]


def test_planned_inputs(demo_plan: Plan) -> None:
    by_name = {s.name: s for s in demo_plan.stages}
    assert by_name["text_lora"].inputs == [
        f"text_qa:{SAMPLE / 'text_qa_train.jsonl'}", f"text_qa:{SAMPLE / 'text_qa_val.jsonl'}"]
    assert by_name["merge"].inputs == []
    assert [x.split(":", 1)[0] for x in by_name["eval"].inputs] == ["asr", "speech_qa", "text_qa"]
    assert all(s.resources.startswith("local subprocess, gpus=0") for s in demo_plan.stages)


def test_run_dir_contains_hash_prefix_and_nothing_is_created(demo_plan: Plan, tmp_path: Path) -> None:
    h = spec_hash(demo_plan.spec)
    assert demo_plan.spec_hash == h
    assert demo_plan.run_dir == (tmp_path / "runs" / "demo-sllm-tiny" / h[:12]).resolve()
    assert demo_plan.run_dir.name == h[:12]
    assert demo_plan.stage_dir("merge") == demo_plan.run_dir / "stages" / "merge"
    assert list(tmp_path.iterdir()) == []


def test_run_dir_follows_the_spec_hash(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    prof = LocalProfile(kind="local")
    a = build_plan(load_job_spec(DEMO), DEMO, prof)
    b = build_plan(load_job_spec(DEMO), DEMO, prof)
    c = build_plan(load_job_spec(DEMO, ["stages[0].train.lr=0.02"]), DEMO, prof)
    assert a.run_dir == b.run_dir
    assert c.run_dir != a.run_dir
    assert c.run_dir.parent == a.run_dir.parent


def test_plan_orders_out_of_order_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    raw = small_raw(str(SAMPLE / "text_qa_train.jsonl"), str(SAMPLE / "text_qa_val.jsonl"))
    raw["stages"].reverse()
    spec = load_job_spec(write_spec(tmp_path, raw))
    plan = build_plan(spec, tmp_path / "spec.yaml", LocalProfile(kind="local"))
    assert [s.name for s in plan.stages] == ["sft", "merge", "eval"]


# ------------------------------------------------------------------------------------------ preflight


def test_preflight_accepts_the_demo() -> None:
    preflight(load_job_spec(DEMO))


def test_preflight_lists_every_bad_dataset(tmp_path: Path) -> None:
    missing = tmp_path / "data" / "missing.jsonl"
    broken = tmp_path / "data" / "broken.jsonl"
    broken.parent.mkdir()
    good = json.dumps({"instruction": "q", "input": "", "output": "a"})
    broken.write_text(good + "\n{not json\n", encoding="utf-8")
    spec = load_job_spec(write_spec(tmp_path, small_raw("data/missing.jsonl", "data/broken.jsonl")))
    with pytest.raises(PlanError) as info:
        preflight(spec)
    msg = str(info.value)
    assert msg.startswith("pre-flight checks failed; nothing was submitted:")
    assert f"stage 'sft': {missing}: file not found" in msg
    assert "stage 'eval': " in msg
    assert f"{broken}:2: invalid JSON" in msg
    assert isinstance(info.value, SllmError)


def test_preflight_reports_a_shared_missing_file_once(tmp_path: Path) -> None:
    raw = small_raw("data/missing.jsonl", "data/missing.jsonl")
    spec = load_job_spec(write_spec(tmp_path, raw))
    with pytest.raises(PlanError) as info:
        preflight(spec)
    assert str(info.value).count(str(tmp_path / "data" / "missing.jsonl")) == 1


def test_preflight_skip_mode_tolerates_bad_lines(tmp_path: Path) -> None:
    data = tmp_path / "mixed.jsonl"
    data.write_text(json.dumps({"instruction": "q", "input": "", "output": "a"}) + "\nnot json\n", encoding="utf-8")
    raw = small_raw(str(data), str(SAMPLE / "text_qa_val.jsonl"))
    raw["stages"][0]["data"]["train"][0]["on_bad_record"] = "skip"
    preflight(load_job_spec(write_spec(tmp_path, raw)))


def test_preflight_checks_a_local_model_folder(tmp_path: Path) -> None:
    raw = small_raw(str(SAMPLE / "text_qa_train.jsonl"), str(SAMPLE / "text_qa_val.jsonl"))
    raw["model"]["base"] = "./no_model"
    spec = load_job_spec(write_spec(tmp_path, raw))
    with pytest.raises(PlanError) as info:
        preflight(spec)
    assert f"model.base: {tmp_path / 'no_model'} is not a model folder (no config.json)" in str(info.value)
    (tmp_path / "no_model").mkdir()
    (tmp_path / "no_model" / "config.json").write_text("{}", encoding="utf-8")
    preflight(spec)


def test_an_eval_dataset_declares_its_language_and_its_normaliser_options_are_checked(tmp_path: Path) -> None:
    raw = small_raw(str(SAMPLE / "text_qa_train.jsonl"), str(REPO / "data" / "mini_en" / "asr_val.jsonl"))
    raw["stages"][2]["datasets"] = [{"kind": "asr", "path": str(REPO / "data" / "mini_en" / "asr_val.jsonl"),
                                     "language": "en"}]
    spec = load_job_spec(write_spec(tmp_path, raw))
    assert spec.stages[2].datasets[0].language == "en"
    preflight(spec)
    raw["stages"][2]["datasets"][0]["metric_options"] = {"cer": {"keep_decimal_points": False}}  # a Korean setting
    with pytest.raises(PlanError, match=r"stage 'eval': datasets\[0\]\.metric_options\.cer: option "
                                        r"'keep_decimal_points' of metric 'cer' does not apply to language 'en'"):
        preflight(load_job_spec(write_spec(tmp_path, raw)))
    raw["stages"][2]["datasets"][0]["language"] = "fr"
    with pytest.raises(SllmError, match=r"language"):
        load_job_spec(write_spec(tmp_path, raw))


# ------------------------------------------------------------------------------------------ memory (CLI)

VOXTRAL = REPO / "jobs" / "sllm_voxtral_3stage.yaml"


@pytest.fixture
def cli(monkeypatch, tmp_path: Path):
    """Invoke `sllm` in-process (the memory planner's model walk is cached between calls); logging restored after."""
    import logging

    from typer.testing import CliRunner

    from launch.cli import app

    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield lambda *args: CliRunner().invoke(app, list(args))
    root.handlers, root.level = handlers, level


def gpu_profile(tmp_path: Path, gb: float) -> str:
    path = tmp_path / f"gpu{gb}.yaml"
    path.write_text(yaml.safe_dump({"kind": "local", "name": f"one-gpu-{gb}", "gpus": 1, "gpu_memory_gb": gb}))
    return str(path)


def test_plan_memory_prints_a_table_per_stage_and_the_fix(cli) -> None:
    res = cli("plan", str(VOXTRAL), "--cluster", str(REPO / "cluster_configs" / "slurm_l4_1x4.yaml"), "--memory",
              "--no-show-spec")
    assert res.exit_code == 0, res.output
    for text in ("memory per training process", "stage1_text_lora (text_sft)", "stage3_multitask (multitask)",
                 "weights: LLM layers", "LoRA adapters", "optimizer: AdamW states", "activations: logits + loss",
                 "CUDA context + allocator margin", "24.00 GB", "does NOT fit", "fits (",
                 "cheapest change that fits: --set stages[0]."):
        assert text in res.output, text


def test_plan_without_memory_flag_plans_no_memory(cli) -> None:
    res = cli("plan", str(DEMO), "--no-show-spec")
    assert res.exit_code == 0, res.output
    assert "memory per training process" not in res.output


def test_submit_refuses_a_stage_that_does_not_fit_unless_forced(cli, monkeypatch, tmp_path: Path) -> None:
    from types import SimpleNamespace

    submitted: list[Any] = []
    monkeypatch.setattr("launch.pipeline.submit_pipeline",
                        lambda p, wait, dry_run=False: submitted.append(p) or SimpleNamespace(submitted={}))
    args = ["submit", str(DEMO), "--cluster", gpu_profile(tmp_path, 0.5), "--detach"]
    res = cli(*args)
    assert isinstance(res.exception, PlanError), res.output
    msg = str(res.exception)
    assert msg.startswith("memory check failed; nothing was submitted:")
    assert "stage 'text_lora' is predicted to need" in msg and "has 0.5 GB" in msg
    assert "CUDA context + allocator margin" in msg  # the largest terms are named
    assert "--memory" in msg and "--force" in msg
    assert submitted == []
    res = cli(*args, "--force")
    assert res.exit_code == 0, res.output
    assert len(submitted) == 1


def test_submit_checks_nothing_without_gpu_memory_and_passes_a_fitting_plan(cli, monkeypatch, tmp_path: Path) -> None:
    from types import SimpleNamespace

    import sllm_lib.memory as memory

    submitted: list[Any] = []
    monkeypatch.setattr("launch.pipeline.submit_pipeline",
                        lambda p, wait, dry_run=False: submitted.append(p) or SimpleNamespace(submitted={}))
    assert cli("submit", str(DEMO), "--cluster", gpu_profile(tmp_path, 40), "--detach").exit_code == 0
    monkeypatch.setattr(memory, "plan_memory", lambda *a, **k: pytest.fail("planned without gpu_memory_gb"))
    unknown = tmp_path / "gpu-unknown.yaml"  # GPUs of unknown size: nothing to compare a plan with
    unknown.write_text(yaml.safe_dump({"kind": "local", "name": "one-gpu", "gpus": 1}))
    assert cli("submit", str(DEMO), "--cluster", str(unknown), "--detach").exit_code == 0
    assert len(submitted) == 2


def test_plan_on_a_ray_jobs_api_profile_shows_the_job_it_would_submit(cli) -> None:
    """The plan runs inside one Ray job there: planning must not need (or contact) the cluster."""
    res = cli("plan", str(VOXTRAL), "--cluster", str(REPO / "cluster_configs" / "ray_a100_2x8.yaml"), "--memory",
              "--no-show-spec")
    assert res.exit_code == 0, res.output
    assert "submitted as one Ray job to http://ray-head.internal:8265" in res.output
    assert "launch.cli submit" in res.output and "DDP x 16" in res.output
