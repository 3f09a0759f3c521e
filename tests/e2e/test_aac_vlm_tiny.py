"""Vision-language LoRA for AAC card interpretation, end to end through the CLI on the tiny Llava: cards + persona
+ context -> interpretation, merge (registered), eval with BLEU-4, ROUGE-1/2/L and embedding similarity from a
local sentence-embedding model folder (a tiny BERT with random weights, built here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, run_sllm

pytestmark = pytest.mark.e2e

SPEC = REPO / "jobs" / "aac_vlm_tiny.yaml"


def _embedding_model(folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    from sllm_lib.models.builders import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("aac")
    embed = _embedding_model(work / "embedder")
    proc = run_sllm(["submit", str(SPEC),
                     "--set", "stages[2].datasets[0].metrics=[bleu, rouge1, rouge2, rougeL, embedding_similarity]",
                     "--set", f"stages[2].datasets[0].metric_options.embedding_similarity.model_path={embed}"], cwd=work)
    assert proc.returncode == 0, f"failed:\nSTDOUT\n{proc.stdout[-4000:]}\nSTDERR\n{proc.stderr[-4000:]}"
    (state_file,) = list((work / "runs" / "aac-vlm-tiny").glob("*/state.json"))
    return {"stdout": proc.stdout, "state": json.loads(state_file.read_text()), "run_dir": state_file.parent,
            "work": work}


def test_card_lora_learns_and_trains_lora_and_projector(run: dict) -> None:
    result = run["state"]["stages"]["card_lora"]["result"]
    assert result["steps"] == 30 and result["loss_last"] < result["loss_first"] / 2, result
    manifest = json.loads((run["run_dir"] / "stages" / "card_lora" / "output" / "manifest.json").read_text())
    assert manifest["written"]["adapter"] == "adapter" and manifest["written"]["modules"]["groups"] == ["projector"]
    assert manifest["vision_prompt"]["prompt"].startswith("[사용자] {persona}")


def test_eval_scores_bleu_rouge_and_embedding_similarity(run: dict) -> None:
    metrics = run["state"]["stages"]["eval"]["result"]["metrics"]
    assert 0 <= metrics["aac_val/bleu"] <= 1  # the 0-1 scale of every sllm metric
    for name in ("rouge1", "rouge2", "rougeL", "embedding_similarity"):
        assert -1.0 <= metrics[f"aac_val/{name}"] <= 1.0, name
    preds = [json.loads(x) for x in (run["run_dir"] / "stages" / "eval" / "output" / "predictions.jsonl")
             .read_text().splitlines()]
    assert len(preds) == 8 and all(p["kind"] == "vision" for p in preds)
    assert "lineage of aac-vlm-tiny@candidate" in run["stdout"] and "card_lora (vision_sft)" in run["stdout"]


def test_a_missing_card_image_fails_before_anything_runs(run: dict, tmp_path: Path) -> None:
    data = tmp_path / "cards.jsonl"
    data.write_text(json.dumps({"images": ["gone.png"], "output": "물 주세요"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    proc = run_sllm(["submit", str(SPEC), "--set", f"stages[0].data.train[0].path={data}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{data}:1: field 'images': expected a readable image (got 'gone.png': file not found)" in proc.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("state.json"))
