"""bench/qlora_memory.py without training: sllm and the baseline see the same tokens, the spec and the planner work.

The timed run itself (`python bench/qlora_memory.py --device cpu --model tiny --steps 2`) is a few minutes of
subprocesses, so it is not a test; these checks are the parts whose breakage would make its figures wrong.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO


@pytest.fixture(scope="module")
def qm():
    spec = importlib.util.spec_from_file_location("bench_qlora_memory", REPO / "bench" / "qlora_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_seq_tokens_and_both_sides_tokenise_it_alike(qm, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from sllm_lib.data.encode import encode_record
    from sllm_lib.data.records import read_records
    from sllm_lib.models.builders import chat_tokens, load_tokenizer_and_features, materialize_tiny
    from sllm_lib.models.builders import tiny_voxtral_config

    folder = materialize_tiny("voxtral")
    data = qm.write_data(tmp_path, 96, 5)
    tokenizer, features = load_tokenizer_and_features(str(folder))
    config = tiny_voxtral_config(vocab_size=len(tokenizer), audio_token_id=tokenizer.convert_tokens_to_ids("[AUDIO]"))
    chat = chat_tokens(tokenizer, config)
    records = read_records(data, "text_qa").records
    raw = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    assert len(records) == len(raw) == 5
    user_tok = AutoTokenizer.from_pretrained(str(folder))
    for rec, line in zip(records, raw):
        ex = encode_record(rec, "text_qa", tokenizer=tokenizer, chat=chat, feature_extractor=features, max_seq_len=96)
        assert len(ex.input_ids) == 96
        ids, labels = qm.baseline_encode(user_tok, line, 96)
        assert ids == ex.input_ids and labels == ex.labels


@pytest.mark.parametrize("zero", [None, 2, 3])
def test_the_spec_validates_and_the_planner_figure_leaves_out_the_margin(qm, tmp_path: Path, zero) -> None:
    from sllm_lib.models.builders import materialize_tiny
    from sllm_lib.spec import load_job_spec

    data = qm.write_data(tmp_path, 64, 4)
    spec = qm.stage_spec(materialize_tiny("voxtral"), data, tmp_path / "out", zero=zero, cuda=True, bsz=2, steps=2,
                         seq=64)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    stage = load_job_spec(path).stages[0]
    assert stage.quant.bits == 4 and stage.train.gradient_checkpointing and not stage.train.group_by_length
    assert (stage.deepspeed.stage if stage.deepspeed else None) == zero
    gpu = qm.plan(path, True, 80.0)
    assert gpu["planner_total_gb"] - gpu["planner_gb"] >= 1.0  # the CUDA context's 1 GB is the margin's, not ours
    cpu = qm.plan(path, False, 80.0)
    assert 0 < cpu["planner_gb"] < cpu["planner_total_gb"]


def test_zero_modes_parse(qm) -> None:
    assert qm._parse_zero("off, 2,3") == [None, 2, 3]
    with pytest.raises(SystemExit):
        qm._parse_zero("4")
