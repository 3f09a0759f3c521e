"""Tests for sllm_lib.data.stats (length percentiles and dataset token statistics)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sllm_lib.data.records import ReadResult, read_records
from sllm_lib.data.stats import dataset_length_stats, length_percentiles, record_text

SAMPLE_DIR = Path(__file__).resolve().parents[3] / "data" / "sample"


def test_length_percentiles_hand_computed() -> None:
    stats = length_percentiles([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert list(stats) == ["count", "min", "mean", "p50", "p90", "p95", "p99", "max"]
    # linear interpolation: position = p/100 * (n - 1) = p/100 * 9
    assert stats["count"] == 10
    assert stats["min"] == 1 and stats["max"] == 10
    assert stats["mean"] == pytest.approx(5.5)
    assert stats["p50"] == pytest.approx(5.5)   # position 4.5 -> between 5 and 6
    assert stats["p90"] == pytest.approx(9.1)   # position 8.1 -> 9 + 0.1
    assert stats["p95"] == pytest.approx(9.55)  # position 8.55
    assert stats["p99"] == pytest.approx(9.91)  # position 8.91


def test_length_percentiles_single_value_and_custom_percentiles() -> None:
    assert length_percentiles([7]) == {
        "count": 1.0, "min": 7.0, "mean": 7.0, "p50": 7.0, "p90": 7.0, "p95": 7.0, "p99": 7.0, "max": 7.0,
    }
    stats = length_percentiles([0, 100], percentiles=(25, 99.9))
    assert stats["p25"] == pytest.approx(25.0)
    assert stats["p99.9"] == pytest.approx(99.9)


def test_length_percentiles_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="empty"):
        length_percentiles([])
    with pytest.raises(ValueError, match="percentiles"):
        length_percentiles([1, 2], percentiles=(50, 101))


def test_record_text_per_kind() -> None:
    assert record_text({"instruction": "답하세요.", "input": "두통?", "output": "쉬세요."}, "text_qa") == (
        "답하세요.\n두통?",
        "쉬세요.",
    )
    assert record_text({"instruction": "답하세요.", "input": "", "output": "쉬세요."}, "text_qa") == ("답하세요.", "쉬세요.")
    assert record_text({"audio_path": "/a.wav", "transcript": "머리가 아파요.", "language": "ko"}, "asr") == (
        "",
        "머리가 아파요.",
    )
    sqa = {"instruction": "질문에 답하세요.", "input": "", "audio_path": "/a.wav", "output": "네."}
    assert record_text(sqa, "speech_qa") == ("질문에 답하세요.", "네.")


def test_dataset_length_stats_with_a_character_counter(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(
        '{"instruction": "ab", "input": "cd", "output": "xyz"}\n'
        '{"instruction": "abcd", "output": "x"}\n',
        encoding="utf-8",
    )
    result = read_records(path, "text_qa")
    stats = dataset_length_stats(result, len)
    assert set(stats) == {"prompt", "target", "total"}
    # prompts: "ab\ncd" (5), "abcd" (4); targets: 3, 1; totals: 8, 5
    assert (stats["prompt"]["min"], stats["prompt"]["max"]) == (4, 5)
    assert (stats["target"]["min"], stats["target"]["max"]) == (1, 3)
    assert (stats["total"]["min"], stats["total"]["max"], stats["total"]["mean"]) == (5, 8, 6.5)
    assert stats["total"]["count"] == 2


def test_dataset_length_stats_on_shipped_asr_data() -> None:
    result = read_records(SAMPLE_DIR / "asr_train.jsonl", "asr")
    calls: list[str] = []

    def count(text: str) -> int:
        calls.append(text)
        return len(text.split())

    stats = dataset_length_stats(result, count)
    assert stats["prompt"]["max"] == 0  # audio only, the empty prompt is not tokenised
    assert "" not in calls
    assert stats["target"]["count"] == 32 and stats["target"]["min"] >= 1


def test_dataset_length_stats_rejects_empty_result(tmp_path: Path) -> None:
    from sllm_lib.errors import DataError

    empty = ReadResult(tmp_path / "x.jsonl", "text_qa", [])
    with pytest.raises(DataError, match="no records"):
        dataset_length_stats(empty, len)
