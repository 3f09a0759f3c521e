"""English text normalisation for WER/CER (Whisper's published rules, written here) and the language switch."""

from __future__ import annotations

import jiwer
import pytest

from sllm_lib.metrics import (
    LANGUAGES,
    EnglishTextNormalizer,
    KoreanNormalizer,
    cer,
    compute_metrics,
    metric_normalizer,
    normalizer_for,
    wer,
)

norm = EnglishTextNormalizer()


@pytest.mark.parametrize("text, expected", [
    # brackets and parentheses: the phrase inside goes
    ("the patient [coughs] is stable", "the patient is stable"),
    ("take it (as directed) twice", "take it twice"),
    # filler words
    ("um the pain is uh hmm sharp mhm", "the pain is sharp"),
    ("Mm, MMM.", ""),
    # apostrophes: kept inside a word, whitespace before a contraction suffix removed, quotes deleted
    ("don't.", "don't"),
    ("I don 't know, it 's fine", "i don't know it's fine"),
    ("the patient’s chart", "the patient's chart"),
    ("'quoted' and the nurses' station", "quoted and the nurses station"),
    # punctuation deleted, not turned into a space
    ("Hello,world!", "helloworld"),
    ("Yes. No? Maybe; fine: done.", "yes no maybe fine done"),
    # hyphens, dashes and slashes separate words
    ("a well-known drug", "a well known drug"),
    ("pain—severe—at night and/or rest", "pain severe at night and or rest"),
    # symbols become a space, diacritics go
    ("café naïve rôle", "cafe naive role"),
    ("a+b #1", "a b one"),
    # numbers: spelled-out cardinals to digits, commas between digits, decimal points kept
    ("twenty-one patients", "21 patients"),
    ("one hundred and five milligrams", "105 milligrams"),
    ("two thousand twenty four", "2024"),
    ("three million four hundred thousand and two", "3400002"),
    ("zero", "0"),
    ("1,000 mg", "1000 mg"),
    ("38.5 degrees.", "38.5 degrees"),
    ("five percent and 10 per cent and 3 %", "5% and 10% and 3%"),
    ("take 1 tablet or one tablet", "take one tablet or one tablet"),
    ("no one", "no one"),
    # scope: ordinals, spoken decimals and year pairs stay as words / separate numbers
    ("the first dose", "the first dose"),
    ("nineteen ninety", "19 90"),
    # British -> American spelling
    ("The colour of the haemoglobin; anaesthetic, paediatric centre",
     "the color of the hemoglobin anesthetic pediatric center"),
    ("organised, organisation, tumours", "organized organization tumors"),
    # titles and informal contractions
    ("Dr. Smith is gonna call", "doctor smith is going to call"),
    # whitespace collapsed
    ("  many\t spaces \n here ", "many spaces here"),
])  # fmt: skip
def test_each_rule(text: str, expected: str) -> None:
    assert norm(text) == expected


def test_remove_whitespace_option() -> None:
    assert EnglishTextNormalizer(remove_whitespace=True)("A well-known drug.") == "awellknowndrug"


def test_cer_convention_is_a_property_of_the_language() -> None:
    assert normalizer_for("en", "char") == EnglishTextNormalizer()  # CER counts spaces
    assert normalizer_for("ko", "char") == KoreanNormalizer(remove_whitespace=True)  # Korean spacing varies
    assert normalizer_for("ko", "word") == KoreanNormalizer()
    en = compute_metrics(["cer"], ["blood pressure"], ["bloodpressure"], language="en")["cer"]
    ko = compute_metrics(["cer"], ["blood pressure"], ["bloodpressure"], language="ko")["cer"]
    assert en.score == pytest.approx(1 / 14) and ko.score == 0.0
    assert LANGUAGES == ("ko", "en")


# Five English transcripts, Whisper-style errors, chosen so that the English rules and the plain normalisation
# (lower-case, punctuation deleted, spaces collapsed) read them alike: no numbers, hyphens, apostrophes, brackets,
# fillers or British spellings.
REFS = [
    "The patient reports chest pain radiating to the left arm.",
    "Blood pressure was measured twice this morning.",
    "She has no known drug allergies.",
    "Please take the medication with food after breakfast.",
    "His fever started Monday and has not improved.",
]
HYPS = [
    "the patient reports chest pain, radiating to the left arm",
    "Blood pressure was measure twice this morning.",
    "She has no known drug allergy.",
    "Please take the medicine with food after breakfast!",
    "His fever started on Monday and has not improved.",
]
PLAIN = [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()]


def test_english_scores_equal_jiwer_with_plain_english_normalisation() -> None:
    words = jiwer.Compose([*PLAIN, jiwer.ReduceToListOfListOfWords()])
    chars = jiwer.Compose([*PLAIN, jiwer.ReduceToListOfListOfChars()])
    jiwer_wer = jiwer.wer(REFS, HYPS, reference_transform=words, hypothesis_transform=words)
    jiwer_cer = jiwer.cer(REFS, HYPS, reference_transform=chars, hypothesis_transform=chars)
    ours = compute_metrics(["wer", "cer"], REFS, HYPS, language="en")
    assert ours["wer"].score == pytest.approx(jiwer_wer, abs=1e-12)
    assert ours["cer"].score == pytest.approx(jiwer_cer, abs=1e-12)
    assert ours["wer"].score == pytest.approx(4 / 39)  # measure, allergy, medicine: 3 substitutions; on: 1 insertion
    assert ours["wer"].normalizer == ours["cer"].normalizer == "whisper-english-v1"
    # the Korean default on the same pairs: the same edit-distance core, other numbers (CER without spaces)
    ko = compute_metrics(["wer", "cer"], REFS, HYPS)
    assert ko["wer"].score == pytest.approx(jiwer_wer)  # punctuation here only ends words
    assert ko["cer"].score != pytest.approx(jiwer_cer) and ko["cer"].normalizer == "korean-v1"


def test_english_rules_forgive_what_whisper_writes_differently() -> None:
    refs = ["Twenty-one patients had a temperature of thirty-eight point five.", "The colour is grey."]
    hyps = ["21 patients had a temperature of 38 point five", "the color is gray"]
    assert compute_metrics(["wer"], refs, hyps, language="en")["wer"].score == 0.0
    words = jiwer.Compose([*PLAIN, jiwer.ReduceToListOfListOfWords()])
    plain = jiwer.wer(refs, hyps, reference_transform=words, hypothesis_transform=words)
    assert plain == pytest.approx(4 / 13)  # twentyone/21, thirtyeight/38, colour/color, grey/gray


def test_korean_scores_are_unchanged() -> None:
    refs = ["혈압이 140/90 입니다.", "체온은 38.5도, 두통 있음"]
    hyps = ["혈압이140 90입니다", "체온은 38.5 도 두통있음"]
    default = compute_metrics(["cer", "wer"], refs, hyps)
    assert compute_metrics(["cer", "wer"], refs, hyps, language="ko") == default
    assert default["cer"] == cer(refs, hyps) and default["wer"] == wer(refs, hyps)
    assert default["cer"].score == 0.0 and default["cer"].normalizer == "korean-v1"


def test_labels_and_language_errors() -> None:
    assert metric_normalizer("cer") == metric_normalizer("wer") == "korean-v1"
    assert metric_normalizer("wer", language="en") == "whisper-english-v1"
    assert metric_normalizer("cer", language="en", options={"remove_whitespace": True}) \
        == "whisper-english-v1 (remove_whitespace=true)"
    assert metric_normalizer("rougeL", language="en") is None
    computed = compute_metrics(["cer"], ["a b"], ["a b"], options={"cer": {"remove_whitespace": False}})
    assert computed["cer"].normalizer == metric_normalizer("cer", options={"remove_whitespace": False}) \
        == "korean-v1 (remove_whitespace=false)"
    with pytest.raises(ValueError, match="unknown language 'xx'; allowed: ko, en"):
        compute_metrics(["cer"], ["a"], ["a"], language="xx")
    with pytest.raises(ValueError, match="option 'keep_decimal_points' of metric 'cer' does not apply to language "
                                         "'en' .*valid: remove_whitespace"):
        compute_metrics(["cer"], ["a"], ["a"], language="en", options={"cer": {"keep_decimal_points": True}})
