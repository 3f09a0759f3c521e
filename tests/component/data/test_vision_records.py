"""Vision records (AAC cards): images checked line by line (missing or unreadable -> file:line), persona as an
object, the prompt rendering, and the encoding through a real (tiny Llava) processor: loss on the answer only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sllm_lib.data.encode import IGNORE_INDEX, SpeechCollator, encode_record
from sllm_lib.data.records import read_records
from sllm_lib.errors import DataError
from sllm_lib.spec import VisionSftStage, render_vision_prompt
from tests.conftest import SAMPLE

CARD = SAMPLE / "aac" / "cards" / "water.png"


def _write(tmp: Path, rows: list) -> Path:
    path = tmp / "cards.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_missing_and_unreadable_images_are_bad_lines_naming_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rows = [{"images": [str(CARD)], "output": "물 주세요"},
            {"images": ["nope.png"], "output": "x"},
            {"images": ["broken.png"], "output": "y"},
            {"images": [], "output": "z"},
            {"images": [str(CARD)], "persona": ["7세"], "output": "w"}]
    path = _write(tmp_path, rows)
    with pytest.raises(DataError) as err:
        read_records(path, "vision")
    text = str(err.value)
    assert f"{path}:2: field 'images': expected a readable image (got 'nope.png': file not found)" in text
    assert f"{path}:3: field 'images': expected a readable image (got 'broken.png': not readable as an image" in text
    assert f"{path}:4: field 'images': expected a non-empty list of image paths" in text
    assert f"{path}:5: field 'persona': expected an object" in text
    res = read_records(path, "vision", on_bad_record="skip")
    assert len(res.records) == 1 and res.records[0]["images"] == [str(CARD)] and res.records[0]["persona"] == {}


def test_shipped_sample_reads_and_renders() -> None:
    res = read_records(SAMPLE / "aac" / "aac_train.jsonl", "vision")
    assert len(res.records) == 40 and all(Path(p).is_file() for r in res.records for p in r["images"])
    rec = {"persona": {"나이": "7세", "성별": "남"}, "context": "교실에서", "instruction": ""}
    text = render_vision_prompt(rec)
    assert text.startswith("[사용자] 나이: 7세, 성별: 남\n[상황] 교실에서\n") and "그림 카드" in text
    stage = VisionSftStage(name="v", kind="vision_sft", train={"max_steps": 1}, lora={"r": 2},
                           data={"train": [{"kind": "vision", "path": "x.jsonl"}]}, prompt="{context}|{persona}")
    assert stage.render(rec) == "교실에서|나이: 7세, 성별: 남"
    with pytest.raises(ValueError, match="only {persona}, {context} and {instruction}"):
        VisionSftStage(name="v", kind="vision_sft", train={"max_steps": 1}, lora={"r": 2},
                       data={"train": [{"kind": "vision", "path": "x.jsonl"}]}, prompt="{who}")


def test_encoding_expands_image_tokens_and_masks_the_prompt() -> None:
    from sllm_lib.models.builders import (
        chat_for,
        load_model_config,
        load_tokenizer_and_features,
        materialize_tiny,
    )
    from sllm_lib.spec import ModelSpec

    folder = str(materialize_tiny("llava"))
    tokenizer, processor = load_tokenizer_and_features(folder)
    config = load_model_config(folder, ModelSpec(base=folder))
    chat = chat_for(tokenizer, config, processor=processor, render=render_vision_prompt)
    rec = read_records(SAMPLE / "aac" / "aac_train.jsonl", "vision").records
    two = next(r for r in rec if len(r["images"]) == 2)
    ex = encode_record(two, "vision", tokenizer=tokenizer, chat=chat, feature_extractor=processor, max_seq_len=512)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert ex.input_ids.count(image_id) == 32  # 2 cards x 16 patch tokens
    n_prompt = ex.labels.index(next(x for x in ex.labels if x != IGNORE_INDEX))
    assert all(x == IGNORE_INDEX for x in ex.labels[:n_prompt]) and image_id not in ex.labels
    assert tokenizer.decode(ex.labels[n_prompt:-1]) == two["output"] and ex.labels[-1] == tokenizer.eos_token_id
    assert ex.features["pixel_values"].shape == (2, 3, 32, 32)
    one = next(r for r in rec if len(r["images"]) == 1)
    ex1 = encode_record(one, "vision", tokenizer=tokenizer, chat=chat, feature_extractor=processor, max_seq_len=512)
    batch = SpeechCollator(pad_id=chat.pad)([ex, ex1])
    assert tuple(batch["pixel_values"].shape) == (3, 3, 32, 32) and "input_features" not in batch
