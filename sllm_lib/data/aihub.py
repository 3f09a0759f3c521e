"""AI-Hub medical QA trees ("TL" folders) → `text_qa` JSONL.

The AI-Hub healthcare QA release keeps questions and answers in parallel trees::

    TL_.../1.질문/<disease>/<aspect>/*.json     {"question": "...", "disease_name": {...}, "intention": ...}
    TL_.../2.답변/<disease>/<aspect>/*.json     {"answer": {"intro": ..., "body": ..., "conclusion": ...}, ...}

A question and an answer belong together when their paths relative to `1.질문` / `2.답변` are the same
(same disease, aspect and file stem), or, when a folder holds a single answer, every question of that
folder is answered by it (the release pairs many phrasings with one answer). Each pair becomes
`{"instruction": question, "output": answer, "source": {...}}`. Files that cannot be read, lack the
text, or have no counterpart are reported with their paths and counted; they are skipped unless
`strict`, where the first one is an error. The output is written atomically.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sllm_lib.errors import DataError
from sllm_lib.files import write_text_atomic

ANSWER_PARTS = ("intro", "body", "conclusion")


@dataclass
class ConvertReport:
    root: str
    output: str
    pairs: int = 0
    questions: int = 0
    answers: int = 0
    trees: int = 0
    unmatched_questions: list[str] = field(default_factory=list)
    unmatched_answers: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    @property
    def problems(self) -> int:
        return len(self.unmatched_questions) + len(self.unmatched_answers) + len(self.unreadable)

    def as_dict(self) -> dict[str, Any]:
        return {"root": self.root, "output": self.output, "trees": self.trees, "questions": self.questions,
                "answers": self.answers, "pairs": self.pairs, "unmatched_questions": self.unmatched_questions,
                "unmatched_answers": self.unmatched_answers,
                "unreadable": [{"path": p, "why": w} for p, w in self.unreadable]}


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)  # Korean folder names unzipped on macOS come out NFD


def _is_question_dir(name: str) -> bool:
    n = _nfc(name)
    return n.endswith("질문") or n.lower() in ("1.question", "question", "questions")


def _answer_dir_for(qdir: Path) -> Path | None:
    for sib in qdir.parent.iterdir():
        n = _nfc(sib.name)
        if sib.is_dir() and (n.endswith("답변") or n.lower() in ("2.answer", "answer", "answers")):
            return sib
    return None


def find_trees(root: Path) -> list[tuple[Path, Path]]:
    """(question dir, answer dir) pairs at or below `root` (a TL folder, or a folder of TL folders)."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        for d in sorted(dirnames):
            if _is_question_dir(d):
                qdir = Path(dirpath) / d
                adir = _answer_dir_for(qdir)
                if adir is not None:
                    found.append((qdir, adir))
        dirnames[:] = [d for d in dirnames if not _is_question_dir(d) and not _nfc(d).endswith("답변")]
    return sorted(found)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):
        parts = [value.get(k) for k in ANSWER_PARTS if isinstance(value.get(k), str)] or \
            [v for v in value.values() if isinstance(v, str)]
        return "\n".join(p.strip() for p in parts if p.strip())
    if isinstance(value, list):
        return "\n".join(_text(v) for v in value if _text(v))
    return ""


def _read(path: Path, key: str, report: ConvertReport, root: Path) -> tuple[str, dict] | None:
    rel = str(path.relative_to(root))
    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.unreadable.append((rel, f"not readable JSON: {str(exc).splitlines()[0]}"))
        return None
    if not isinstance(data, dict):
        report.unreadable.append((rel, f"expected a JSON object, got {type(data).__name__}"))
        return None
    text = _text(data.get(key))
    if not text:
        report.unreadable.append((rel, f"no {key!r} text"))
        return None
    return text, data


def _meta(data: dict) -> dict[str, Any]:
    disease = data.get("disease_name")
    if isinstance(disease, dict):
        disease = disease.get("kor") or disease.get("eng")
    return {k: v for k, v in {"disease": disease, "category": data.get("disease_category"),
                              "intention": data.get("intention"), "department": data.get("department")}.items()
            if isinstance(v, str) and v}


def convert_aihub(root: Path, output: Path, *, strict: bool = False) -> ConvertReport:
    """Convert every question/answer tree under `root` into `output` (JSONL, atomic). See the module doc."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected an AI-Hub TL folder holding 1.질문 and 2.답변)")
    trees = find_trees(root)
    if not trees:
        raise DataError(f"{root}: no question/answer trees found (expected folders '1.질문' and '2.답변' side by side)")
    report = ConvertReport(root=str(root), output=str(output), trees=len(trees))
    rows: list[dict[str, Any]] = []
    for qdir, adir in trees:
        questions = {p.relative_to(qdir): p for p in sorted(qdir.rglob("*.json"))}
        answers = {p.relative_to(adir): p for p in sorted(adir.rglob("*.json"))}
        report.questions += len(questions)
        report.answers += len(answers)
        by_folder: dict[Path, list[Path]] = defaultdict(list)
        for rel in answers:
            by_folder[rel.parent].append(rel)
        used: set[Path] = set()
        for rel, qpath in questions.items():
            arel = rel if rel in answers else (by_folder[rel.parent][0] if len(by_folder[rel.parent]) == 1 else None)
            if arel is None:
                report.unmatched_questions.append(str(qpath.relative_to(root)))
                continue
            used.add(arel)
            q = _read(qpath, "question", report, root)
            a = _read(answers[arel], "answer", report, root)
            if q is None or a is None:
                continue
            rows.append({"instruction": q[0], "output": a[0],
                         "source": {"question_file": str(qpath.relative_to(root)),
                                    "answer_file": str(answers[arel].relative_to(root)), **_meta(a[1]),
                                    **{k: v for k, v in _meta(q[1]).items() if k == "intention"}}})
        report.unmatched_answers += [str(answers[r].relative_to(root)) for r in answers if r not in used]
    report.pairs = len(rows)
    if strict and report.problems:
        first = (report.unreadable and f"{report.unreadable[0][0]}: {report.unreadable[0][1]}") or \
            (report.unmatched_questions and f"{report.unmatched_questions[0]}: question without an answer") or \
            f"{report.unmatched_answers[0]}: answer without a question"
        raise DataError(f"{root}: {report.problems} problem(s) (--strict); first: {first}")
    if not rows:
        raise DataError(f"{root}: no question/answer pair could be made ({report.problems} problem(s))")
    write_text_atomic(output, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return report
