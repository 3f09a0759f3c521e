"""Label parsing and classification metrics: expected values below are computed by hand."""

from __future__ import annotations

import subprocess
import sys
import unicodedata

import pytest

from sllm_lib.metrics.classification import classification_metrics, parse_label

LABELS = ["우울", "불안", "정상"]


# --------------------------------------------------------------------------- parse_label


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("우울", "우울"),
        ("  우울. ", "우울"),
        ("우울입니다.", "우울"),  # particles / endings attach at the end
        ("답: **불안**", "불안"),  # punctuation and markdown are removed
        ("이 환자는 정상 범위입니다", "정상"),
        ("진단: 우울증", "우울"),
        (unicodedata.normalize("NFD", "불안"), "불안"),
        ("불 안", "불안"),  # spacing inside a label is optional
    ],
)
def test_parse_label_finds_the_stated_label(text, expected):
    assert parse_label(text, LABELS) == expected


@pytest.mark.parametrize(
    "text",
    [
        "모르겠습니다",  # no label
        "",
        "우울과 불안이 함께 보입니다",  # two different labels
        "정상 또는 우울",
        "비정상 소견",  # a prefix changes the meaning: 비정상 does not state 정상
        "정답은우울",  # not at a word start
    ],
)
def test_parse_label_unparseable(text):
    assert parse_label(text, LABELS) is None


def test_parse_label_same_label_twice_is_fine():
    assert parse_label("우울, 우울입니다", LABELS) == "우울"


def test_parse_label_longer_label_wins_over_the_one_inside_it():
    labels = ["불안", "불안장애", "정상"]
    assert parse_label("불안장애로 보입니다", labels) == "불안장애"
    assert parse_label("불안 증상", labels) == "불안"
    assert parse_label("불안장애", labels) == "불안장애"


def test_parse_label_aliases_and_latin_word_boundaries():
    labels = ["yes", "no"]
    assert parse_label("No.", labels) == "no"
    assert parse_label("normal", labels) is None  # "no" must end a word
    assert parse_label("I think yes", labels) == "yes"
    aliases = {"정상": ["이상 없음", "Normal"]}
    assert parse_label("이상없음입니다", LABELS, aliases=aliases) == "정상"
    assert parse_label("NORMAL", LABELS, aliases=aliases) == "정상"
    assert parse_label("normal, but 우울", LABELS, aliases=aliases) is None


def test_parse_label_bad_label_sets():
    with pytest.raises(ValueError, match="must not be empty"):
        parse_label("우울", [])
    with pytest.raises(ValueError, match="not one of the labels"):
        parse_label("우울", LABELS, aliases={"조증": ["mania"]})
    with pytest.raises(ValueError, match="already stands for label"):
        parse_label("우울", ["우울", "우울."])
    with pytest.raises(ValueError, match="empty after normalisation"):
        parse_label("우울", ["우울", "?"])
    with pytest.raises(ValueError, match="string"):
        parse_label("우울", "우울")


# --------------------------------------------------------------------------- metrics

REFS = ["우울", "우울", "불안", "불안", "정상", "정상"]
HYPS = [
    "우울입니다",  # 우울, correct
    "불안",  # 불안, wrong (gold 우울)
    "불안해 보입니다",  # 불안, correct
    "모르겠어요",  # unparseable (gold 불안)
    "정상",  # 정상, correct
    "우울과 불안",  # two labels: unparseable (gold 정상)
]


def test_classification_metrics_hand_computed():
    out = classification_metrics(REFS, HYPS, LABELS)
    assert list(out) == ["accuracy", "macro_f1", "unparseable_rate"]
    correct = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert out["accuracy"].name == "accuracy"
    assert out["accuracy"].per_sample == correct
    assert out["accuracy"].score == pytest.approx(3 / 6)
    # 우울: TP 1, FP 0, FN 1 -> 2/3;  불안: TP 1, FP 1, FN 1 -> 2/4;  정상: TP 1, FP 0, FN 1 -> 2/3
    assert out["macro_f1"].score == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)  # 11/18
    assert out["macro_f1"].per_sample == correct
    assert out["unparseable_rate"].per_sample == [0.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert out["unparseable_rate"].score == pytest.approx(2 / 6)


def test_macro_f1_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    predicted = [parse_label(h, LABELS) or "<none>" for h in HYPS]
    expected = sklearn_metrics.f1_score(REFS, predicted, labels=LABELS, average="macro")
    assert classification_metrics(REFS, HYPS, LABELS)["macro_f1"].score == pytest.approx(expected)


def test_macro_f1_skips_classes_absent_from_gold_and_predictions():
    out = classification_metrics(["우울", "불안"], ["우울", "우울"], LABELS)
    # 우울: TP 1, FP 1 -> 2/3; 불안: FN 1 -> 0; 정상 never occurs: left out
    assert out["macro_f1"].score == pytest.approx((2 / 3 + 0) / 2)
    assert classification_metrics(["정상"], ["정상."], LABELS)["macro_f1"].score == 1.0


def test_classification_metrics_references_may_use_aliases_and_errors():
    out = classification_metrics(["normal"], ["정상입니다"], LABELS, aliases={"정상": ["normal"]})
    assert out["accuracy"].score == 1.0
    with pytest.raises(ValueError, match=r"reference 1 '조증' is not one of the labels"):
        classification_metrics(["우울", "조증"], ["우울", "우울"], LABELS)
    with pytest.raises(ValueError, match=r"2 references vs 1 hypotheses"):
        classification_metrics(["우울", "불안"], ["우울"], LABELS)
    empty = classification_metrics([], [], LABELS)
    assert all(r.score == 0.0 and r.per_sample == [] for r in empty.values())


def test_import_is_cheap():
    code = (
        "import sys, sllm_lib.metrics.classification; "
        "heavy = [m for m in ('jiwer', 'rouge_score', 'kiwipiepy', 'numpy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
