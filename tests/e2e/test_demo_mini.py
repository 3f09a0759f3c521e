"""The mini demo (`jobs/demo_sllm_mini.yaml`) learns for real: real pretrained parts, real speech, measured learning.

`mini:voxtral` is Whisper base's encoder + SmolLM2-135M + a fresh projector. A random-weight model cannot show that the
speech path works; this one can, because each stage has to change what the model does on held-out data:
- stage 1 (text LoRA) lowers the text QA loss on held-out questions;
- the stage-1 model cannot transcribe (it has never seen audio): its CER on held-out clips is high;
- after stage 2 (the ASR projector) the CER is far below it, and the model listens: the held-out transcripts' loss
  with the clips' features is far below their loss with all-zero features. A CER alone cannot say so: a model that
  does not listen still reaches ~0.7 on these templated sentences by writing their most common wording;
- stage 3 (multitask) keeps the ASR within a margin of stage 2 while speech QA improves, and the merged, registered
  model is the one scored.

A shortened variant of the spec (fewer steps and eval records, through `--set`) runs once per module; the thresholds
come from measured runs (README, "The mini demo": the same seed gives CER 0.52 on one CPU and 0.59 on another), with
room for that noise. Feeding zeros as features in training fails the listening check (see the README).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, run_sllm

pytestmark = [pytest.mark.e2e, pytest.mark.network]

DEMO = REPO / "jobs" / "demo_sllm_mini.yaml"
STAGES = ["text_lora", "eval_text_lora", "asr_projector", "eval_asr_projector", "multitask", "merge", "eval"]
SHORT = [  # the CI variant: the same recipe, stage 2 (the one that learns to listen) unchanged; fewer text steps and
    # eval records where the test does not read them. Stage 2 stays at 80: measured at 48 steps, its CER was 0.61 but
    # stage 3 then lost the ASR (merged CER 0.72, beyond the 0.1 margin); stage 3 at 16 steps, merged CER 0.94
    "stages[0].train.max_steps=20", "stages[0].train.save_steps=20",
    "stages[1].datasets[0].max_records=8", "stages[1].datasets[1].max_records=4",
    "stages[6].datasets[2].max_records=10",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("demo_mini")
    sets = [x for s in SHORT for x in ("--set", s)]
    proc = run_sllm(["submit", str(DEMO), *sets], cwd=work, timeout=3600)
    assert proc.returncode == 0, f"mini demo failed:\nSTDOUT\n{proc.stdout[-4000:]}\nSTDERR\n{proc.stderr[-4000:]}"
    (state_file,) = list((work / "runs" / "demo-sllm-mini").glob("*/state.json"))
    state = json.loads(state_file.read_text())
    assert list(state["stages"]) == STAGES
    assert all(s["status"] == "COMPLETED" for s in state["stages"].values())
    metrics = {name: s["result"]["metrics"] for name, s in state["stages"].items()}
    return metrics | {"_stages": state_file.parent / "stages"}


def _asr_val_loss(model_dir: Path, chain: list[Path]) -> tuple[float, float]:
    """The ASR loss on the held-out clips of `model_dir` with `chain` applied: with the clips' real features, and
    with all-zero features (a model that does not listen scores the same on both)."""
    import torch

    from sllm_lib.data.encode import SpeechCollator, encode_records
    from sllm_lib.data.records import read_records
    from sllm_lib.models.adapters import apply_chain
    from sllm_lib.models.builders import chat_for
    from sllm_lib.models.refs import load_model

    model, tokenizer, extractor = load_model(model_dir)
    model = apply_chain(model, chain).eval()
    chat = chat_for(tokenizer, model.config)
    records = read_records(REPO / "data" / "mini_en" / "asr_val.jsonl", "asr").records[:24]
    examples = encode_records(records, "asr", tokenizer=tokenizer, chat=chat, feature_extractor=extractor,
                              max_seq_len=256)
    collate = SpeechCollator(pad_id=chat.pad)
    real, silent = [], []
    with torch.no_grad():
        for i in range(0, len(examples), 8):
            batch = collate(examples[i:i + 8])
            real.append(float(model(**batch).loss))
            batch["input_features"] = torch.zeros_like(batch["input_features"])
            silent.append(float(model(**batch).loss))
    return sum(real) / len(real), sum(silent) / len(silent)


def test_stage1_lowers_the_held_out_text_qa_loss(demo: dict) -> None:
    m = demo["text_lora"]
    assert m["val_loss"] < m["val_loss_start"] - 0.5, m


def test_stage2_transcribes_held_out_clips_the_stage1_model_cannot(demo: dict) -> None:
    before, after = demo["eval_text_lora"]["asr_val/cer"], demo["eval_asr_projector"]["asr_val/cer"]
    assert before > 0.8, f"the stage-1 model has never heard audio, yet its CER is {before}"
    assert after < 0.7 and after < before - 0.4, (before, after)


def test_the_stage2_and_merged_models_listen(demo: dict) -> None:
    """The decisive check: the held-out transcripts are far likelier with the clips' features than with zeros.
    Feeding zeros or misaligned spans in training leaves a model whose loss is the same either way."""
    from sllm_lib.models.mini import materialize_mini

    stages = demo["_stages"]
    real, silent = _asr_val_loss(materialize_mini("voxtral"), [stages / "text_lora" / "output",
                                                                stages / "asr_projector" / "output"])
    assert real < silent - 2.0, f"stage 2: ASR val loss {real:.3f} with the audio, {silent:.3f} with zeros"
    real, silent = _asr_val_loss(stages / "merge" / "output", [])
    assert real < silent - 2.0, f"merged: ASR val loss {real:.3f} with the audio, {silent:.3f} with zeros"


def test_stage3_keeps_asr_and_improves_speech_qa_in_the_merged_model(demo: dict) -> None:
    s2, final = demo["eval_asr_projector"], demo["eval"]
    assert final["asr_val/cer"] < s2["asr_val/cer"] + 0.1, (s2, final)  # the stated margin: 0.1 CER
    assert final["asr_val/cer"] < demo["eval_text_lora"]["asr_val/cer"] - 0.4, final
    assert final["speech_qa_val/rougeL"] > s2["speech_qa_val/rougeL"] + 0.07, (s2, final)
    assert final["text_qa_val/rougeL"] > 0.5, final
