"""AI-Hub question/answer trees -> text_qa JSONL: pairing, reports of bad files, strict mode, the CLI."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from sllm_lib.data.aihub import convert_aihub, find_trees
from sllm_lib.data.records import read_records
from sllm_lib.errors import DataError
from tests.conftest import run_sllm


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def make_tree(root: Path) -> Path:
    """A small TL tree shaped like the AI-Hub healthcare QA release (synthetic text)."""
    tl = root / "TL_내과"
    q, a = tl / "1.질문", tl / "2.답변"
    disease = {"kor": "당뇨병", "eng": "diabetes"}
    # one answer per folder, several phrasings of the question
    for i, text in enumerate(["당뇨병 초기 증상이 뭔가요?", "당뇨 초기에는 어떤 증상이 있나요?"]):
        _write(q / "당뇨병" / "증상" / f"HC-Q-{i:04d}.json",
               {"disease_category": "내분비", "disease_name": disease, "intention": "증상", "question": text})
    _write(a / "당뇨병" / "증상" / "HC-A-0001.json",
           {"disease_category": "내분비", "disease_name": disease, "department": ["내과"], "intention": "증상",
            "answer": {"intro": "당뇨병 초기에는 증상이 없을 수 있습니다.", "body": "다뇨, 다음, 다식이 나타납니다.",
                       "conclusion": "혈당 검사를 받으세요."}})
    # same stems on both sides, two answers in the folder: paired by name
    for stem, qt, at in [("HC-0001", "고혈압 약은 평생 먹어야 하나요?", "대부분 꾸준한 복용이 필요합니다."),
                         ("HC-0002", "고혈압 약을 끊어도 되나요?", "임의로 끊으면 안 됩니다.")]:
        _write(q / "고혈압" / "치료" / f"{stem}.json", {"disease_name": {"kor": "고혈압"}, "question": qt})
        _write(a / "고혈압" / "치료" / f"{stem}.json", {"disease_name": {"kor": "고혈압"}, "answer": at})
    return root


def test_pairs_by_path_and_single_answer_folders(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "aihub")
    out = tmp_path / "qa.jsonl"
    rep = convert_aihub(root, out)
    assert (rep.trees, rep.questions, rep.answers, rep.pairs, rep.problems) == (1, 4, 3, 4, 0)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    diabetes = [r for r in rows if r["source"].get("disease") == "당뇨병"]
    assert len(diabetes) == 2 and {r["output"] for r in diabetes} == {
        "당뇨병 초기에는 증상이 없을 수 있습니다.\n다뇨, 다음, 다식이 나타납니다.\n혈당 검사를 받으세요."}
    assert diabetes[0]["source"]["intention"] == "증상" and diabetes[0]["source"]["category"] == "내분비"
    by_q = {r["instruction"]: r["output"] for r in rows}
    assert by_q["고혈압 약을 끊어도 되나요?"] == "임의로 끊으면 안 됩니다."
    assert by_q["고혈압 약은 평생 먹어야 하나요?"] == "대부분 꾸준한 복용이 필요합니다."
    # the output is a valid text_qa dataset for the training stages
    assert len(read_records(out, "text_qa").records) == 4


def test_answer_without_question_and_unreadable_json_are_reported_not_fatal(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "aihub")
    tl = root / "TL_내과"
    _write(tl / "2.답변" / "천식" / "예방" / "HC-A-0009.json", {"answer": "금연하세요."})  # no question side
    (tl / "1.질문" / "고혈압" / "치료" / "HC-0002.json").write_text('{"question": "고혈압', encoding="utf-8")
    _write(tl / "1.질문" / "빈혈" / "원인" / "HC-0003.json", {"question": "빈혈 원인은?"})  # no answer side
    out = tmp_path / "qa.jsonl"
    rep = convert_aihub(root, out)
    assert rep.pairs == 3
    assert rep.unmatched_answers == ["TL_내과/2.답변/천식/예방/HC-A-0009.json"]
    assert rep.unmatched_questions == ["TL_내과/1.질문/빈혈/원인/HC-0003.json"]
    assert [p for p, _ in rep.unreadable] == ["TL_내과/1.질문/고혈압/치료/HC-0002.json"]
    assert "not readable JSON" in rep.unreadable[0][1]

    with pytest.raises(DataError) as err:
        convert_aihub(root, tmp_path / "strict.jsonl", strict=True)
    assert "3 problem(s)" in str(err.value) and "HC-0002.json" in str(err.value)
    assert not (tmp_path / "strict.jsonl").exists()  # nothing half-written


def test_nfd_folder_names_and_a_folder_of_tl_folders(tmp_path: Path) -> None:
    root = tmp_path / "all"
    make_tree(root / "a")
    make_tree(root / "b")
    nfd = root / "c" / unicodedata.normalize("NFD", "TL_외과")  # unzipped on macOS
    _write(nfd / unicodedata.normalize("NFD", "1.질문") / "x" / "y" / "q.json", {"question": "수술 후 샤워는?"})
    _write(nfd / unicodedata.normalize("NFD", "2.답변") / "x" / "y" / "q.json", {"answer": "이틀 뒤에 하세요."})
    assert len(find_trees(root)) == 3
    assert convert_aihub(root, tmp_path / "qa.jsonl").pairs == 9


def test_not_a_tree_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no question/answer trees found"):
        convert_aihub(tmp_path, tmp_path / "x.jsonl")
    with pytest.raises(DataError, match="not a folder"):
        convert_aihub(tmp_path / "missing", tmp_path / "x.jsonl")


def test_cli_prints_counts_and_writes_the_report(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "aihub")
    _write(root / "TL_내과" / "2.답변" / "천식" / "예방" / "HC-A-0009.json", {"answer": "금연하세요."})
    proc = run_sllm(["data", "convert-aihub", str(root), "-o", str(tmp_path / "qa.jsonl"), "--report",
                     str(tmp_path / "report.json")], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "no question for TL_내과/2.답변/천식/예방/HC-A-0009.json" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert report["pairs"] == 4 and report["unmatched_answers"] == ["TL_내과/2.답변/천식/예방/HC-A-0009.json"]
    strict = run_sllm(["data", "convert-aihub", str(root), "-o", str(tmp_path / "s.jsonl"), "--strict"], timeout=60)
    assert strict.returncode != 0 and "answer without a question" in strict.stdout + strict.stderr
