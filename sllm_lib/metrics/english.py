"""English text normaliser for WER/CER, written here after the published rules of Whisper's English text
standardisation (Radford et al. 2022, "Robust Speech Recognition via Large-Scale Weak Supervision", Appendix C).

The rules, in the order applied, and where this module keeps to a stated scope:

1. Lower-case; Unicode NFKC; curly apostrophes (``’ ‘ ʼ``) become ``'``.
2. Remove any phrase between matching square brackets or parentheses (``[laughter]``, ``(inaudible)``);
   not nested.
3. Remove whitespace before an apostrophe that starts a contraction suffix (``"don 't"`` -> ``"don't"``,
   ``"it 's"`` -> ``"it's"``).
4. Remove diacritics (``café`` -> ``cafe``; ``æ œ ß ø`` -> ``ae oe ss o``).
5. Punctuation is *deleted*, not turned into a space (``"don't."`` -> ``"don't"``, ``"1,000"`` -> ``"1000"``),
   except: an apostrophe between two letters is kept (``don't``, ``patient's``: contractions and possessives
   are not expanded, unlike Whisper, which writes ``do not``); a period followed by a digit is kept
   (``38.5``, ``.5``); ``%`` is kept; hyphens, dashes and slashes separate words (``well-known`` ->
   ``well known``, ``twenty-one`` -> ``21``, ``and/or`` -> ``and or``). Symbols (Unicode ``S*``: ``$ + ° ©``)
   become a space.
6. Remove the filler words ``hmm mm mhm mmm uh um``.
7. Informal contractions and titles: ``gonna gotta wanna gimme lemme`` -> ``going to`` etc.; ``mr mrs dr
   prof`` -> ``mister missus doctor professor`` (``st`` is left alone: saint or street).
8. Spelled-out cardinal numbers become digits: zero to 999,999,999,999 written with units, teens, tens,
   ``hundred``, ``thousand``, ``million``, ``billion``, hyphens and ``and`` (``one hundred and five`` ->
   ``105``, ``two thousand twenty-four`` -> ``2024``); ``percent`` / ``per cent`` after a number -> ``%``
   (``five percent`` -> ``5%``). As in Whisper, a lone 1 is written ``one`` (``1 tablet`` and ``one tablet``
   both read ``one tablet``). Out of scope: ordinals (``first``), spoken decimals (``point five``), currency,
   years said in pairs (``nineteen ninety`` -> ``19 90``), digit strings (``one oh one``), digits before a
   scale word (``5 million``).
9. British -> American spelling for a table of common and clinical words (:data:`BRITISH_TO_AMERICAN`;
   Whisper uses a ~1,700-word list).
10. Collapse runs of whitespace into one space and strip the ends.

CER keeps the spaces (characters including spaces, jiwer's convention); ``remove_whitespace=True`` drops them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import ClassVar, Literal

_WHITESPACE_RE = re.compile(r"\s+")
_BRACKETS_RE = re.compile(r"\[[^\]]*\]|\([^)]*\)")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'"})
_SPACE_BEFORE_SUFFIX_RE = re.compile(r"\s+('(?:s|t|re|ve|ll|d|m)\b|n't\b)")
_ASCII_LETTERS = str.maketrans({"æ": "ae", "œ": "oe", "ß": "ss", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th"})
_WORD_SEPARATORS = frozenset("/\\")

FILLERS: frozenset[str] = frozenset({"hmm", "mm", "mhm", "mmm", "uh", "um"})
"""Filler words removed wherever they stand (Whisper's list)."""

INFORMAL: dict[str, str] = {
    "gonna": "going to", "gotta": "got to", "wanna": "want to", "gimme": "give me", "lemme": "let me",
    "mr": "mister", "mrs": "missus", "dr": "doctor", "prof": "professor",
}
"""Informal contractions and titles, written out."""


def _forms(british: str, american: str, endings: str) -> dict[str, str]:
    """The table rows for one stem and its endings: _forms("colour", "color", " s ed") -> colour, colours, ..."""
    return {british + e: american + e for e in endings.split(" ")}


BRITISH_TO_AMERICAN: dict[str, str] = {
    **_forms("colour", "color", " s ed ing"), **_forms("favour", "favor", " s ed ite ites able"),
    **_forms("honour", "honor", " s ed"), **_forms("labour", "labor", " s ed"),
    **_forms("behaviour", "behavior", " s al"), **_forms("neighbour", "neighbor", " s hood"),
    **_forms("humour", "humor", ""), **_forms("tumour", "tumor", " s"), **_forms("odour", "odor", " s"),
    **_forms("centre", "center", " s"), **_forms("litre", "liter", " s"), **_forms("metre", "meter", " s"),
    **_forms("millilitre", "milliliter", " s"), **_forms("millimetre", "millimeter", " s"),
    **_forms("centimetre", "centimeter", " s"), **_forms("fibre", "fiber", " s"), **_forms("theatre", "theater", " s"),
    **_forms("organis", "organiz", "e es ed ing ation ations"), **_forms("recognis", "recogniz", "e es ed ing"),
    **_forms("realis", "realiz", "e es ed ing"), **_forms("hospitalis", "hospitaliz", "e ed ation ations"),
    **_forms("immunis", "immuniz", "e ed ation ations"), **_forms("stabilis", "stabiliz", "e es ed ing ation"),
    **_forms("minimis", "minimiz", "e es ed ing"), **_forms("apologis", "apologiz", "e es ed ing"),
    **_forms("analys", "analyz", "e ed ing"), **_forms("paralys", "paralyz", "e ed"),
    **_forms("haemoglobin", "hemoglobin", ""), **_forms("haemorrhag", "hemorrhag", "e es ic"),
    **_forms("haematolog", "hematolog", "y ist"), **_forms("anaemi", "anemi", "a c"),
    **_forms("leukaemi", "leukemi", "a"), **_forms("ischaemi", "ischemi", "a c"),
    **_forms("anaesthe", "anesthe", "sia tic tics tist"), **_forms("paediatric", "pediatric", " s ian"),
    **_forms("orthopaedic", "orthopedic", " s"), **_forms("gynaecolog", "gynecolog", "y ist ical"),
    **_forms("oedema", "edema", ""), **_forms("oesophag", "esophag", "us eal"), **_forms("oestrogen", "estrogen", ""),
    **_forms("foet", "fet", "us al"), **_forms("diarrhoea", "diarrhea", ""), **_forms("dyspnoea", "dyspnea", ""),
    **_forms("apnoea", "apnea", ""), **_forms("coeliac", "celiac", ""), **_forms("caesarean", "cesarean", ""),
    **_forms("programme", "program", " s"), **_forms("catalogue", "catalog", " s"),
    **_forms("travell", "travel", "ed ing er"), **_forms("cancell", "cancel", "ed ing"),
    **_forms("labell", "label", "ed ing"), **_forms("modell", "model", "ed ing"),
    **_forms("counsell", "counsel", "ing or ors"), **_forms("defence", "defense", " s"),
    **_forms("offence", "offense", " s"), **_forms("licence", "license", " s"), **_forms("grey", "gray", ""),
    **_forms("ageing", "aging", ""), **_forms("mould", "mold", " s y"), **_forms("sceptic", "skeptic", " al"),
    **_forms("aluminium", "aluminum", ""), **_forms("sulph", "sulf", "ate ur ide"),
}
"""British -> American spellings (whole words, with the inflections listed)."""

_ONES: dict[str, int] = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine".split())}
_TEENS: dict[str, int] = {w: i + 10 for i, w in enumerate(
    "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS: dict[str, int] = {w: (i + 2) * 10 for i, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES: dict[str, int] = {"thousand": 10**3, "million": 10**6, "billion": 10**9}


def _below_hundred(words: list[str], i: int) -> tuple[int, int] | None:
    """(value, next index) of 1-99 spelled at words[i] (``seven``, ``fifteen``, ``forty two``), or None."""
    if i >= len(words):
        return None
    w = words[i]
    if w in _TENS:
        if i + 1 < len(words) and words[i + 1] in _ONES and _ONES[words[i + 1]] > 0:
            return _TENS[w] + _ONES[words[i + 1]], i + 2
        return _TENS[w], i + 1
    if w in _TEENS:
        return _TEENS[w], i + 1
    if w in _ONES and _ONES[w] > 0:
        return _ONES[w], i + 1
    return None


def _after_and(words: list[str], i: int) -> int:
    """Index past an ``and`` that joins a scale to the number's rest (``hundred and five``); else i."""
    return i + 1 if i < len(words) and words[i] == "and" and _below_hundred(words, i + 1) else i


def _below_thousand(words: list[str], i: int) -> tuple[int, int] | None:
    """(value, next index) of 1-999 (``hundred``, ``three hundred and two``, ``forty``), or None."""
    head = _below_hundred(words, i)
    if head is not None and head[0] < 10 and head[1] < len(words) and words[head[1]] == "hundred":
        value, j = head[0] * 100, head[1] + 1
    elif i < len(words) and words[i] == "hundred":
        value, j = 100, i + 1
    else:
        return head
    rest = _below_hundred(words, _after_and(words, j))
    return (value + rest[0], rest[1]) if rest else (value, j)


def _number(words: list[str], i: int) -> tuple[int, int] | None:
    """(value, next index) of the longest spelled-out cardinal at words[i], or None (see the module docstring)."""
    if i < len(words) and words[i] == "zero":
        return 0, i + 1
    total, j, last_scale = 0, i, 10**12
    while True:
        group = _below_thousand(words, j)
        if group is None and j < len(words) and words[j] in _SCALES and j == i:
            group = (1, j)  # a bare "thousand"
        if group is None:
            break
        k = group[1]
        scale = _SCALES.get(words[k]) if k < len(words) else None
        if scale is None or scale >= last_scale:
            return total + group[0], k
        total, last_scale = total + group[0] * scale, scale
        j = _after_and(words, k + 1)
        if j == k + 1 and _below_thousand(words, j) is None:
            return total, j
    return (total, j) if j > i else None


def _numbers(words: list[str]) -> list[str]:
    """Spelled-out cardinals -> digits; ``percent`` after a number -> ``%``; a lone 1 -> ``one``."""
    out: list[str] = []
    i = 0
    while i < len(words):
        found = _number(words, i)
        if found is None:
            out.append(words[i])
            i += 1
            continue
        out.append(str(found[0]))
        i = found[1]
    merged: list[str] = []
    for i, w in enumerate(out):
        is_percent = w in ("percent", "%") or (w == "per" and i + 1 < len(out) and out[i + 1] == "cent")
        if merged and is_percent and re.fullmatch(r"\d+(\.\d+)?", merged[-1]):
            merged[-1] += "%"
            continue
        if w == "cent" and i and out[i - 1] == "per" and merged and merged[-1].endswith("%"):
            continue
        merged.append(w)
    return ["one" if w == "1" else w for w in merged]


def _strip_diacritics(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.translate(_ASCII_LETTERS))
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.category(c).startswith("M")))


def _keep(text: str, i: int) -> bool:
    """Whether the punctuation mark text[i] stays (apostrophe inside a word, period before a digit, ``%``)."""
    ch = text[i]
    before = text[i - 1] if i else ""
    after = text[i + 1] if i + 1 < len(text) else ""
    if ch == "'":
        return before.isalpha() and after.isalpha()
    if ch == ".":
        return after.isdigit()
    return ch == "%"


def _strip_punctuation(text: str) -> str:
    out: list[str] = []
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if cat.startswith("P"):
            if _keep(text, i):
                out.append(ch)
            elif cat == "Pd" or ch in _WORD_SEPARATORS:
                out.append(" ")
        elif cat.startswith("S"):
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class EnglishTextNormalizer:
    """Text normaliser for English WER/CER, following Whisper's published English rules (see the module docstring
    for the rules and their scope).

    Attributes:
        remove_whitespace: Remove all whitespace at the end (off for English: CER counts spaces).

    Example:
        >>> EnglishTextNormalizer()("Um, the Colour [noise] is twenty-one percent well-known.")
        'the color is 21% well known'
    """

    name: ClassVar[str] = "whisper-english-v1"
    remove_whitespace: bool = False

    @classmethod
    def for_unit(cls, unit: Literal["char", "word"]) -> EnglishTextNormalizer:
        """The convention for CER (``"char"``) and WER (``"word"``): the same, spaces kept."""
        return cls()

    def __call__(self, text: str) -> str:
        """Normalise one string."""
        text = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)
        text = _BRACKETS_RE.sub(" ", text)
        text = _SPACE_BEFORE_SUFFIX_RE.sub(r"\1", text)
        text = _strip_punctuation(_strip_diacritics(text))
        words = [INFORMAL.get(w, w) for w in text.split() if w not in FILLERS]
        words = _numbers(" ".join(words).split())
        text = " ".join(BRITISH_TO_AMERICAN.get(w, w) for w in words)
        return _WHITESPACE_RE.sub("", text) if self.remove_whitespace else text
