"""Tests for sllm_lib.data.records (JSONL reading, validation, normalisation, digest)."""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from sllm_lib.data.records import (
    REQUIRED_FIELDS,
    BadRecord,
    ReadResult,
    normalize_text,
    read_records,
    validate_dataset,
)
from sllm_lib.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[3]
SAMPLE_DIR = REPO_ROOT / "data" / "sample"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Write rows (dicts are JSON-encoded, strings written verbatim) one per line."""
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_wav(path: Path, seconds: float = 0.2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = (0.1 * np.sin(np.linspace(0, 440 * 2 * np.pi * seconds, int(16000 * seconds)))).astype(np.float32)
    soundfile.write(str(path), samples, 16000, subtype="PCM_16")
    return path


def qa(i: int = 0, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"instruction": "다음 질문에 답하세요.", "input": f"질문 {i}", "output": f"답변 {i}"}
    row.update(overrides)
    return row


# ------------------------------------------------------------------ shipped sample data


@pytest.mark.parametrize(
    ("name", "kind", "count"),
    [
        ("text_qa_train.jsonl", "text_qa", 64),
        ("text_qa_val.jsonl", "text_qa", 16),
        ("asr_train.jsonl", "asr", 32),
        ("asr_val.jsonl", "asr", 8),
        ("speech_qa_train.jsonl", "speech_qa", 16),
        ("speech_qa_val.jsonl", "speech_qa", 8),
    ],
)
def test_shipped_sample_files_read_cleanly(name: str, kind: str, count: int) -> None:
    result = read_records(SAMPLE_DIR / name, kind)  # type: ignore[arg-type]
    assert len(result.records) == count
    assert result.skipped == []
    assert result.duplicates_removed == 0
    assert result.kind == kind
    for record in result.records:
        for field in REQUIRED_FIELDS[kind]:  # type: ignore[index]
            assert isinstance(record[field], str) and record[field]
        if "audio_path" in record:
            audio = Path(record["audio_path"])
            assert audio.is_absolute() and audio.is_file()
            info = soundfile.info(str(audio))
            assert info.samplerate == 16000 and info.channels == 1
            assert 1.0 <= info.duration <= 4.5


def test_shipped_sample_splits_are_disjoint() -> None:
    train = read_records(SAMPLE_DIR / "text_qa_train.jsonl", "text_qa").records
    val = read_records(SAMPLE_DIR / "text_qa_val.jsonl", "text_qa").records
    key = lambda r: (r["instruction"], r["input"])  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in val}


# ------------------------------------------------------------------ bad records


def test_broken_json_line_fails_naming_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(0), qa(1), '{"instruction": "x", ', qa(3)])
    with pytest.raises(DataError) as exc:
        read_records(path, "text_qa")
    message = str(exc.value)
    assert f"{path}: 1 bad record" in message
    assert f"{path}:3: invalid JSON" in message


def test_skip_mode_keeps_the_rest_and_counts_one_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(0), qa(1), "not json", qa(3)])
    with caplog.at_level(logging.WARNING, logger="sllm_lib.data.records"):
        result = read_records(path, "text_qa", on_bad_record="skip")
    assert [r["output"] for r in result.records] == ["답변 0", "답변 1", "답변 3"]
    assert len(result.skipped) == 1
    bad = result.skipped[0]
    assert isinstance(bad, BadRecord)
    assert (bad.path, bad.line) == (str(path), 3)
    assert "invalid JSON" in bad.reason
    assert "skipped 1 bad records" in caplog.text


def test_blank_lines_are_ignored_and_line_numbers_stay_true(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(qa(0)) + "\n\n   \n" + json.dumps({"output": "x"}) + "\n", encoding="utf-8")
    result = read_records(path, "text_qa", on_bad_record="skip")
    assert len(result.records) == 1
    assert result.skipped[0].line == 4


def test_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(0), "[1, 2]"])
    with pytest.raises(DataError, match=r"qa\.jsonl:2: expected a JSON object \(got list\)"):
        read_records(path, "text_qa")


def test_missing_field(tmp_path: Path) -> None:
    row = qa(1)
    del row["output"]
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(0), row])
    with pytest.raises(DataError, match=r"qa\.jsonl:2: field 'output': required field is missing"):
        read_records(path, "text_qa")


def test_wrong_type(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(0), qa(1, output=42)])
    with pytest.raises(DataError, match=r"qa\.jsonl:2: field 'output': expected a string \(got int\)"):
        read_records(path, "text_qa")


def test_empty_transcript(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav")
    rows = [
        {"audio_path": "a.wav", "transcript": "머리가 아파요."},
        {"audio_path": "a.wav", "transcript": "  \t "},
    ]
    path = write_jsonl(tmp_path / "asr.jsonl", rows)
    with pytest.raises(DataError, match=r"asr\.jsonl:2: field 'transcript': expected non-empty text"):
        read_records(path, "asr")


def test_empty_input_is_allowed_and_missing_optional_fields_get_defaults(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav")
    qa_path = write_jsonl(tmp_path / "qa.jsonl", [{"instruction": "질문", "output": "답"}, qa(1, input="")])
    asr_path = write_jsonl(tmp_path / "asr.jsonl", [{"audio_path": "a.wav", "transcript": "네"}])
    assert [r["input"] for r in read_records(qa_path, "text_qa").records] == ["", ""]
    assert read_records(asr_path, "asr").records[0]["language"] == "ko"


def test_missing_audio_file(tmp_path: Path) -> None:
    write_wav(tmp_path / "audio" / "ok.wav")
    rows = [
        {"instruction": "답하세요.", "audio_path": "audio/ok.wav", "output": "답"},
        {"instruction": "답하세요.", "audio_path": "audio/missing.wav", "output": "답"},
    ]
    path = write_jsonl(tmp_path / "sqa.jsonl", rows)
    with pytest.raises(DataError) as exc:
        read_records(path, "speech_qa")
    assert f"{path}:2: field 'audio_path'" in str(exc.value)
    assert "missing.wav" in str(exc.value) and "file not found" in str(exc.value)
    # Without the audio check the same file reads, with absolute paths.
    result = read_records(path, "speech_qa", check_audio=False)
    assert result.records[1]["audio_path"] == str(tmp_path / "audio" / "missing.wav")


def test_unreadable_audio_file(tmp_path: Path) -> None:
    (tmp_path / "fake.wav").write_bytes(b"this is not audio at all")
    write_wav(tmp_path / "ok.wav")
    rows = [{"audio_path": "ok.wav", "transcript": "네"}, {"audio_path": "fake.wav", "transcript": "네"}]
    path = write_jsonl(tmp_path / "asr.jsonl", rows)
    with pytest.raises(DataError, match=r"asr\.jsonl:2: field 'audio_path': expected a readable audio file"):
        read_records(path, "asr")


def test_relative_audio_path_is_resolved_against_the_jsonl_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    write_wav(data_dir / "clips" / "x.wav")
    path = write_jsonl(data_dir / "asr.jsonl", [{"audio_path": "clips/x.wav", "transcript": "네"}])
    monkeypatch.chdir(tmp_path)  # cwd is not the JSONL directory
    result = read_records(path, "asr")
    assert result.records[0]["audio_path"] == str((data_dir / "clips" / "x.wav").resolve())


def test_missing_data_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=f"{missing}: file not found"):
        read_records(missing, "text_qa")


def test_file_with_no_valid_records_fails_even_in_skip_mode(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", ["garbage", "{}"])
    with pytest.raises(DataError, match="no valid records") as err:
        read_records(path, "text_qa", on_bad_record="skip")
    assert f"{path}:1:" in str(err.value) and f"{path}:2:" in str(err.value)  # the reasons are in the error


def test_a_wrong_label_set_names_each_label_in_the_error(tmp_path: Path, caplog) -> None:
    path = write_jsonl(tmp_path / "cls.jsonl", ['{"text": "a", "label": "x"}', '{"text": "b", "label": "y"}'])
    with pytest.raises(DataError, match="no valid records") as err:
        read_records(path, "classification", labels=["p", "q"], on_bad_record="skip")
    assert "expected one of ['p', 'q'] (got 'x')" in str(err.value) and "(got 'y')" in str(err.value)
    assert "skipped" not in caplog.text  # no warning before the error saying the same thing
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no valid records"):
        read_records(empty, "text_qa")


def test_fail_mode_lists_at_most_20_problems(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(0)] + ["bad"] * 25)
    with pytest.raises(DataError) as exc:
        read_records(path, "text_qa")
    message = str(exc.value)
    assert message.splitlines()[0] == f"{path}: 25 bad records"
    assert message.count("invalid JSON") == 20
    assert message.splitlines()[-1].strip() == "... and 5 more"


def test_validate_dataset_collects_every_problem(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(0), "bad", qa(2, output=""), {"instruction": "x"}])
    result = validate_dataset(path, "text_qa")
    assert len(result.records) == 1
    assert [b.line for b in result.skipped] == [2, 3, 4]


def test_unknown_extra_keys_are_kept(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(0, source="synthetic", meta={"id": 7})])
    record = read_records(path, "text_qa").records[0]
    assert record["source"] == "synthetic" and record["meta"] == {"id": 7}


def test_unknown_kind(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(0)])
    with pytest.raises(DataError, match="unknown record kind"):
        read_records(path, "video_qa")  # type: ignore[arg-type]


# ------------------------------------------------------------------ normalisation and dedup


def test_dedup_counts_exact_duplicates_after_normalisation(tmp_path: Path) -> None:
    rows = [qa(0), qa(1), qa(0), qa(0, output="  답변   0 "), qa(2)]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    result = read_records(path, "text_qa")
    assert result.duplicates_removed == 2
    assert [r["output"] for r in result.records] == ["답변 0", "답변 1", "답변 2"]
    kept_all = read_records(path, "text_qa", dedup=False)
    assert kept_all.duplicates_removed == 0 and len(kept_all.records) == 5


def test_normalize_text() -> None:
    nfd = unicodedata.normalize("NFD", "고혈압 환자")
    assert nfd != "고혈압 환자"
    assert normalize_text(nfd) == "고혈압 환자"
    assert normalize_text("  두통이\t\n심해요   ") == "두통이 심해요"


def test_nfd_input_equals_nfc_output(tmp_path: Path) -> None:
    nfc = "열이 38.5도까지 올랐어요."
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(0, output=unicodedata.normalize("NFD", nfc))])
    assert read_records(path, "text_qa").records[0]["output"] == nfc


# ------------------------------------------------------------------ digest


def test_digest_is_stable_and_changes_with_content(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(0), qa(1)])
    first = read_records(path, "text_qa").digest()
    assert len(first) == 64 and int(first, 16) >= 0
    assert read_records(path, "text_qa").digest() == first
    # Same content with different key order / whitespace / NFD gives the same digest.
    same = tmp_path / "same.jsonl"
    same.write_text(
        '{"output": "답변 0", "input": "질문  0", "instruction": "다음 질문에 답하세요."}\n'
        + json.dumps(qa(1), ensure_ascii=True) + "\n",
        encoding="utf-8",
    )
    assert read_records(same, "text_qa").digest() == first
    changed = write_jsonl(tmp_path / "changed.jsonl", [qa(0), qa(1, output="다른 답변")])
    assert read_records(changed, "text_qa").digest() != first


def test_digest_does_not_depend_on_checkout_location(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_wav(tmp_path / name / "x.wav")
        write_jsonl(tmp_path / name / "asr.jsonl", [{"audio_path": "x.wav", "transcript": "네"}])
    result_a = read_records(tmp_path / "a" / "asr.jsonl", "asr")
    result_b = read_records(tmp_path / "b" / "asr.jsonl", "asr")
    assert result_a.records != result_b.records  # absolute paths differ
    assert result_a.digest() == result_b.digest()


def test_read_result_shape(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(0)])
    result = read_records(str(path), "text_qa")
    assert isinstance(result, ReadResult)
    assert result.path == path.resolve()
    assert len(result) == 1


def test_a_runaway_text_field_is_a_bad_line_at_its_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(0), qa(1, output="가" * 40_000), qa(2)])
    with pytest.raises(DataError) as err:
        read_records(path, "text_qa")
    assert f"{path}:2: field 'output': 40,000 characters, more than max_text_chars (32,768)" in str(err.value)
    res = read_records(path, "text_qa", on_bad_record="skip")
    assert len(res.records) == 2 and [b.line for b in res.skipped] == [2]
    assert len(read_records(path, "text_qa", max_text_chars=50_000).records) == 3  # the dataset may allow more


def test_the_spec_carries_max_text_chars_to_the_reader(tmp_path: Path) -> None:
    from sllm_lib.spec import DatasetRef

    assert DatasetRef(kind="text_qa", path="x.jsonl").max_text_chars == 32_768
    with pytest.raises(Exception, match="less than or equal to 10000000"):
        DatasetRef(kind="text_qa", path="x.jsonl", max_text_chars=10**9)
