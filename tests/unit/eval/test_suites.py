"""Suite loading: shipped suites load; bad suites name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eval.suites import find_suite, load_suite
from sllm_lib.errors import JobSpecError
from tests.conftest import SAMPLE


def _write(tmp: Path, suite: dict) -> Path:
    p = tmp / "suite.yaml"
    p.write_text(yaml.safe_dump(suite, allow_unicode=True), encoding="utf-8")
    return p


def test_shipped_suites_load_with_absolute_data_paths() -> None:
    speech = load_suite(find_suite("medical_speech"))
    assert [t.name for t in speech.tasks] == ["asr", "speech_qa", "text_qa"]
    assert all(Path(t.data).is_absolute() and Path(t.data).is_file() for t in speech.tasks)
    assert speech.tasks[0].record_kind == "asr" and speech.tasks[0].thresholds["cer"] == 0.01
    cls = load_suite(find_suite("mental_health_cls"))
    task = cls.tasks[0]
    assert task.type == "classification" and task.record_kind == "text_qa" and task.labels == ["우울", "불안", "정상"]
    assert task.generation_for(cls.generation).max_new_tokens == 8


def test_digest_changes_with_the_data(tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text((SAMPLE / "text_qa_val.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    path = _write(tmp_path, {"name": "s", "tasks": [{"name": "qa", "type": "text_qa", "data": "qa.jsonl"}]})
    first = load_suite(path).digest()
    assert load_suite(path).digest() == first
    with open(data, "a", encoding="utf-8") as f:
        f.write('{"instruction": "질문", "output": "답"}\n')
    assert load_suite(path).digest() != first


@pytest.mark.parametrize("task, needle", [
    ({"name": "a", "type": "asr", "data": "x.jsonl"}, "tasks[0].data: no such file"),
    ({"name": "c", "type": "classification", "data": str(SAMPLE / "mental_health_cls_val.jsonl")}, "needs labels"),
    ({"name": "q", "type": "text_qa", "data": str(SAMPLE / "text_qa_val.jsonl"), "metrics": ["rogueL"]},
     "unknown metric 'rogueL'"),
    ({"name": "q", "type": "text_qa", "data": str(SAMPLE / "text_qa_val.jsonl"), "metrics": ["accuracy"]},
     "needs labels"),
    ({"name": "q", "type": "text_qa", "data": str(SAMPLE / "text_qa_val.jsonl"), "thresholds": {"cer": 0.1}},
     "not among this task's metrics"),
    ({"name": "q", "type": "text_qa", "data": str(SAMPLE / "text_qa_val.jsonl"), "metrics": ["cer"],
      "thresholds": {"cer": -0.1}}, "threshold is an allowed worsening: >= 0"),
    ({"name": "q", "type": "text_qa", "data": str(SAMPLE / "text_qa_val.jsonl"), "metrics": ["cer"],
      "thresholds": {"cer": "five"}}, "tasks[0].thresholds.cer"),
    ({"name": "q", "type": "text_qa", "data": str(SAMPLE / "text_qa_val.jsonl"), "metrics": ["cer"],
      "thresholds": {"cer": 0.1}, "tiers": {"cer": "blocking"}}, "tasks[0].tiers.cer"),
    ({"name": "q", "type": "txt_qa", "data": str(SAMPLE / "text_qa_val.jsonl")}, "tasks[0].type"),
])
def test_bad_suite_names_file_and_field(tmp_path: Path, task: dict, needle: str) -> None:
    path = _write(tmp_path, {"name": "bad", "tasks": [task]})
    with pytest.raises(JobSpecError) as err:
        load_suite(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_find_suite_lists_shipped_names() -> None:
    with pytest.raises(JobSpecError, match="medical_speech"):
        find_suite("no_such_suite")


def _asr_suite(tmp_path: Path, **top: object) -> Path:
    task = {"name": "asr", "type": "asr", "data": str(SAMPLE / "asr_val.jsonl"), "metrics": ["cer", "wer"]}
    return _write(tmp_path, {"name": "en_asr", **top, "tasks": [task]})


def test_language_picks_the_normaliser_and_names_it(tmp_path: Path) -> None:
    en = load_suite(_asr_suite(tmp_path, language="en"))
    assert en.language == "en"
    assert en.normalizers() == {"asr/cer": "whisper-english-v1", "asr/wer": "whisper-english-v1"}
    assert load_suite(find_suite("medical_speech")).normalizers() == {"asr/cer": "korean-v1", "asr/wer": "korean-v1"}


def test_unknown_language_names_file_field_and_allowed_values(tmp_path: Path) -> None:
    path = _asr_suite(tmp_path, language="xx")
    with pytest.raises(JobSpecError) as err:
        load_suite(path)
    assert f"{path}: 1 problem\n  language: Input should be 'ko' or 'en' (got 'xx')" in str(err.value)


def test_a_korean_only_option_under_english_fails_at_load(tmp_path: Path) -> None:
    task = {"name": "asr", "type": "asr", "data": str(SAMPLE / "asr_val.jsonl"), "metrics": ["cer"],
            "metric_options": {"cer": {"keep_decimal_points": False}}}
    path = _write(tmp_path, {"name": "en_asr", "language": "en", "tasks": [task]})
    with pytest.raises(JobSpecError, match=r"tasks\[0\].metric_options.cer: option 'keep_decimal_points' .* language "
                                           r"'en' \(normaliser whisper-english-v1\); valid: remove_whitespace"):
        load_suite(path)


def test_digest_keeps_korean_suites_and_separates_languages(tmp_path: Path) -> None:
    plain = load_suite(_asr_suite(tmp_path)).digest()
    assert load_suite(_asr_suite(tmp_path, language="ko")).digest() == plain  # earlier evals stay reusable
    assert load_suite(_asr_suite(tmp_path, language="en")).digest() != plain


def test_eval_runs_tag_each_number_with_its_normaliser(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from eval.eval_runs import eval_tags

    suite = load_suite(_asr_suite(tmp_path, language="en"))
    resolved = SimpleNamespace(path=tmp_path, name=None)
    tags = eval_tags(resolved, suite, "d" * 64, date=None, sample_limit=None)
    assert tags["sllm.eval.normalizer.asr/cer"] == tags["sllm.eval.normalizer.asr/wer"] == "whisper-english-v1"
