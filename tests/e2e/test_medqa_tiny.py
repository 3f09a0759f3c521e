"""The medical QA QLoRA pipeline end to end through the `sllm` CLI on the tiny causal LM: causal_sft (4-bit +
LoRA, chat template with a system prompt) -> merge (registered) -> eval, then `sllm lineage` and `sllm export`
to a hub-ready folder with a model card. Runs once per module; every test reads its outcome."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, run_sllm

pytestmark = pytest.mark.e2e

SPEC = REPO / "jobs" / "medqa_tiny.yaml"
STAGES = ["qa_qlora", "merge", "eval"]


@pytest.fixture(scope="module")
def medqa(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("medqa")
    proc = run_sllm(["submit", str(SPEC)], cwd=work)
    assert proc.returncode == 0, f"medqa failed:\nSTDOUT\n{proc.stdout[-4000:]}\nSTDERR\n{proc.stderr[-4000:]}"
    (state_file,) = list((work / "runs" / "medqa-tiny").glob("*/state.json"))
    return {"work": work, "stdout": proc.stdout, "state": json.loads(state_file.read_text()),
            "run_dir": state_file.parent}


def test_stages_complete_and_the_loss_falls(medqa: dict) -> None:
    stages = medqa["state"]["stages"]
    assert list(stages) == STAGES and all(s["status"] == "COMPLETED" for s in stages.values())
    result = stages["qa_qlora"]["result"]
    assert result["steps"] == 30
    assert result["loss_last"] < result["loss_first"] - 0.5, result
    assert "val_loss" in result["metrics"]


def test_training_used_a_4bit_base_and_the_system_prompt(medqa: dict) -> None:
    stage = medqa["run_dir"] / "stages"
    manifest = json.loads((stage / "qa_qlora" / "output" / "manifest.json").read_text())
    assert manifest["quant"]["bits"] == 4 and manifest["written"] == {"adapter": "adapter"}
    assert manifest["system_prompt"].startswith("당신은 환자의 질문에")
    merged = json.loads((stage / "merge" / "output" / "manifest.json").read_text())
    assert merged["system_prompt"] == manifest["system_prompt"]  # carried to the merged model for evaluation
    preds = [json.loads(line) for line in (stage / "eval" / "output" / "predictions.jsonl").read_text().splitlines()]
    assert preds and all(p["kind"] == "text_qa" and isinstance(p["prediction"], str) for p in preds)


def test_lineage_shows_the_causal_sft_stage_and_its_data(medqa: dict) -> None:
    out = medqa["stdout"]
    assert "lineage of medqa-tiny@candidate" in out
    assert "qa_qlora (causal_sft)" in out and "text_qa_train [train]" in out
    proc = run_sllm(["lineage", "medqa-tiny@candidate"], cwd=medqa["work"])
    assert proc.returncode == 0 and "qa_qlora (causal_sft)" in proc.stdout


def test_export_writes_a_loadable_folder_with_a_lineage_model_card(medqa: dict) -> None:
    work = medqa["work"]
    proc = run_sllm(["export", "medqa-tiny@candidate", "-o", "exported/medqa-tiny"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = work / "exported" / "medqa-tiny"
    names = {p.name for p in folder.iterdir()}
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "sllm_manifest.json"} <= names
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation")
    assert "Registered as `medqa-tiny` version 1 (`@candidate`)" in card
    run_ids = {s["run_id"] for s in medqa["state"]["stages"].values()}
    assert "| qa_qlora | causal_sft |" in card and any(rid in card for rid in run_ids)
    assert "text_qa_train (train, sha " in card and "당신은 환자의 질문에" in card

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok.apply_chat_template([{"role": "user", "content": "두통이 심해요"}], add_generation_prompt=True,
                                  tokenize=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4 or int(out[0, -1]) == tok.eos_token_id

    again = run_sllm(["export", "medqa-tiny@candidate", "-o", "exported/medqa-tiny"], cwd=work)
    assert again.returncode == 2 and "exists and is not empty" in (again.stdout + again.stderr)
    assert (folder / "README.md").read_text() == card  # untouched
    forced = run_sllm(["export", "medqa-tiny@candidate", "-o", "exported/medqa-tiny", "--overwrite"], cwd=work)
    assert forced.returncode == 0, forced.stderr[-2000:]


def test_compression_pipeline_distils_prunes_quantizes_and_reports(medqa: dict) -> None:
    """jobs/compress_medqa_tiny.yaml against the registered medqa-tiny teacher in the same store."""
    work = medqa["work"]
    proc = run_sllm(["submit", str(REPO / "jobs" / "compress_medqa_tiny.yaml")], cwd=work)
    assert proc.returncode == 0, f"STDOUT\n{proc.stdout[-3000:]}\nSTDERR\n{proc.stderr[-3000:]}"
    (state_file,) = list((work / "runs" / "compress-medqa-tiny").glob("*/state.json"))
    state = json.loads(state_file.read_text())
    assert list(state["stages"]) == ["distill", "merge", "prune", "quantize"]
    assert all(s["status"] == "COMPLETED" for s in state["stages"].values())
    stages = state_file.parent / "stages"
    distill = json.loads((stages / "distill" / "output" / "manifest.json").read_text())
    assert distill["teacher"] == "medqa-tiny@candidate" and distill["written"]["modules"]["groups"] == ["llm"]
    out = stages / "quantize" / "output"
    report = json.loads((out / "compression_report.json").read_text())
    assert report["baseline_ref"] == "medqa-tiny@candidate" and report["method"] == "dynamic_int8"
    for side in ("baseline", "compressed"):
        assert report[side]["size_mb"] > 0 and report[side]["ms_per_token"] > 0
        assert set(report[side]["quality"]) == {"text_qa_val/rougeL", "text_qa_val/distinct_1"}
    targets = report["comparison"]["targets"]
    assert set(targets) == {"size_reduction", "speedup", "memory_reduction"}
    assert targets["size_reduction"]["target"] == 0.5 and targets["speedup"]["target"] == 2.0
    assert isinstance(targets["size_reduction"]["met"], bool) and isinstance(targets["speedup"]["met"], bool)
    text = (out / "compression_report.md").read_text()
    assert "| size on disk (MB) |" in text and "| ms per token (CPU) |" in text
    assert (out / "dynamic_int8.pt").is_file() and (out / "sllm_dynamic_int8.json").is_file()
    assert "lineage of medqa-tiny-compressed@candidate" in proc.stdout
    assert "quantize (quantize)" in proc.stdout and "distill (distill)" in proc.stdout
