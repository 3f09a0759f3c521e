"""Classification records ({text, label}) for instruction tuning: the label set is enforced line by line, the
spec's dataset fields are checked, and records become instruction -> label pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sllm_lib.data.records import classification_as_text_qa, read_records
from sllm_lib.errors import DataError, JobSpecError
from sllm_lib.spec import DatasetRef, load_job_spec

LABELS = ["있음", "없음"]
PROMPT = "스트레스가 {labels} 중 무엇인지 답하세요.\n글: {text}"


def _write(tmp: Path, rows: list) -> Path:
    path = tmp / "stress.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def test_a_label_outside_the_set_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"text": "일이 많아요", "label": "있음"}, {"text": "편안해요", "label": "모름"}])
    with pytest.raises(DataError) as err:
        read_records(path, "classification", labels=LABELS)
    assert f"{path}:2: field 'label': expected one of ['있음', '없음'] (got '모름')" in str(err.value)
    skipped = read_records(path, "classification", labels=LABELS, on_bad_record="skip")
    assert len(skipped.records) == 1 and skipped.skipped[0].line == 2


def test_missing_or_empty_fields_and_a_missing_label_set(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"text": "  ", "label": "있음"}, {"label": "없음"}, {"text": "좋아요", "label": "없음"}])
    res = read_records(path, "classification", labels=LABELS, on_bad_record="skip")
    reasons = [str(b) for b in res.skipped]
    assert any(":1: field 'text': expected non-empty text" in r for r in reasons)
    assert any(":2: field 'text': required field is missing" in r for r in reasons)
    with pytest.raises(DataError, match="need the dataset's label set"):
        read_records(path, "classification")


def test_records_become_instruction_label_pairs(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"text": "일이 너무 많아요", "label": "있음"}])
    ref = DatasetRef(kind="classification", path=str(path), task="stress", labels=LABELS, prompt=PROMPT)
    res = classification_as_text_qa(read_records(path, "classification", labels=LABELS), ref.instruction,
                                    ref.task_name)
    assert res.kind == "text_qa"
    assert res.records == [{"instruction": "스트레스가 있음, 없음 중 무엇인지 답하세요.\n글: 일이 너무 많아요", "input": "",
                            "output": "있음", "task": "stress"}]


@pytest.mark.parametrize(("fields", "needle"), [
    ({"labels": ["있음"]}, "at least 2"),
    ({"labels": ["있음", "있음"]}, "distinct non-empty"),
    ({"prompt": "글: {txt}"}, "containing {text}"),
    ({"prompt": "{text} {other}"}, "only {text} and {labels}"),
    ({"prompt": None}, "containing {text}"),
])
def test_bad_classification_dataset_fields(tmp_path: Path, fields: dict, needle: str) -> None:
    ref = {"kind": "classification", "path": "x.jsonl", "labels": LABELS, "prompt": PROMPT, **fields}
    stage = {"name": "s", "kind": "causal_sft", "data": {"train": [ref]}, "train": {"max_steps": 2}, "lora": {"r": 2}}
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"name": "j", "model": {"base": "tiny:llama"}, "stages": [stage]},
                                   allow_unicode=True), encoding="utf-8")
    with pytest.raises(JobSpecError) as err:
        load_job_spec(spec)
    assert needle in str(err.value) and "stages[0].data.train[0]" in str(err.value)


def test_classification_fields_on_other_kinds_and_stages_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only for kind classification"):
        DatasetRef(kind="text_qa", path="x.jsonl", labels=LABELS)
    ref = {"kind": "classification", "path": "x.jsonl", "labels": LABELS, "prompt": PROMPT}
    stage = {"name": "s", "kind": "text_sft", "data": {"train": [ref]}, "train": {"max_steps": 2}, "lora": {"r": 2}}
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"name": "j", "model": {"base": "tiny:voxtral"}, "stages": [stage]},
                                   allow_unicode=True), encoding="utf-8")
    with pytest.raises(JobSpecError, match="text_sft takes text_qa datasets only"):
        load_job_spec(spec)


@pytest.mark.parametrize("name", ["mental_health_tiny", "mental_health_llama32_3b", "mental_health_qwen25_3b",
                                  "mental_health_r1_distill_qwen_1p5b"])
def test_shipped_mental_health_specs_validate_and_their_data_reads(name: str) -> None:
    repo = Path(__file__).resolve().parents[3]
    job = load_job_spec(repo / "jobs" / f"{name}.yaml")
    train = job.stage("multitask_sft").data.train
    assert [r.task for r in train] == ["emotion", "stress", "depression", "severity", "suicidal_ideation"]
    assert [len(r.labels) for r in train] == [7, 2, 2, 4, 2]
    for ref in [*train, *job.stage("eval").datasets]:
        assert len(read_records(ref.path, ref.kind, labels=ref.labels).records) >= 6
