"""Classification metrics for generated text: label parsing, accuracy, macro-F1.

A generative model asked for one of a fixed set of labels (e.g. ``우울``,
``불안``, ``정상``) rarely answers with the bare label: it writes ``"우울입니다."``,
``"답: **불안**"`` or ``"이 환자는 정상 범위입니다"``. :func:`parse_label` finds
which allowed label a text states, or ``None`` when it states none or more
than one; :func:`classification_metrics` scores parsed outputs against gold
labels, counting an unparseable output as wrong.

Matching rules (see :func:`parse_label`): text and labels are normalised with
:class:`~sllm_lib.metrics.text.KoreanNormalizer` (NFC, lower-case, punctuation
to spaces, whitespace collapsed). A label is found where it *starts a word*;
Korean particles and endings attach at the end (``"우울입니다"``, ``"우울증"``
state ``우울``), but a prefix changes the meaning, so ``"비정상"`` does not
state ``정상``. A label that ends in a Latin letter or digit must also end a
word (``"no"`` is not found in ``"normal"``).

Only the standard library is used, so importing this module is cheap.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from sllm_lib.metrics.text import KoreanNormalizer, MetricResult, _check_lengths

_NORMALIZE = KoreanNormalizer()
_ASCII_ALNUM = re.compile(r"[a-z0-9]")


def _spaceless(text: str) -> str:
    return text.replace(" ", "")


class _LabelMatcher:
    """Compiled matching state for one label set (labels + aliases)."""

    def __init__(self, labels: Sequence[str], aliases: Mapping[str, Sequence[str]] | None) -> None:
        if isinstance(labels, str):
            raise ValueError(f"labels must be a list of label strings, got the string {labels!r}")
        if not labels:
            raise ValueError("labels must not be empty")
        self.labels = list(labels)
        # candidate spelling (normalised, spaceless) -> label it stands for
        self.exact: dict[str, str] = {}
        self.patterns: list[tuple[re.Pattern[str], str]] = []
        for label in self.labels:
            self._add(label, label)
        for label, alts in (aliases or {}).items():
            if label not in self.labels:
                raise ValueError(f"aliases given for {label!r}, which is not one of the labels {self.labels}")
            if isinstance(alts, str):
                raise ValueError(f"aliases[{label!r}] must be a list of strings, got the string {alts!r}")
            for alt in alts:
                self._add(alt, label)

    def _add(self, spelling: str, label: str) -> None:
        key = _spaceless(_NORMALIZE(spelling))
        if not key:
            raise ValueError(f"label or alias {spelling!r} (for {label!r}) is empty after normalisation")
        other = self.exact.get(key)
        if other is not None and other != label:
            raise ValueError(f"{spelling!r} normalises to {key!r}, which already stands for label {other!r}")
        if other is not None:
            return
        self.exact[key] = label
        # spacing inside a label is optional: "이상 없음" also matches "이상없음"
        body = r"\s?".join(re.escape(ch) for ch in key)
        tail = r"(?![a-z0-9])" if _ASCII_ALNUM.fullmatch(key[-1]) else ""
        self.patterns.append((re.compile(rf"(?:^|(?<=\s)){body}{tail}"), label))

    def parse(self, text: str) -> str | None:
        norm = _NORMALIZE(text)
        label = self.exact.get(_spaceless(norm))
        if label is not None:
            return label
        spans: list[tuple[int, int, str]] = [
            (m.start(), m.end(), label) for pattern, label in self.patterns for m in pattern.finditer(norm)
        ]
        # A match inside a longer match of another spelling is part of that one:
        # with labels "불안" and "불안장애", the text "불안장애" states only "불안장애".
        kept = {
            label
            for start, end, label in spans
            if not any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in spans)
        }
        return kept.pop() if len(kept) == 1 else None


def parse_label(
    text: str,
    labels: Sequence[str],
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> str | None:
    """Return the one allowed label that a generated text states, else ``None``.

    Steps:

    1. Normalise text and labels (NFC, lower-case, punctuation to spaces,
       whitespace collapsed). If the whole text equals a label or alias
       (ignoring spaces), return that label.
    2. Otherwise find every label/alias occurrence that starts a word (at the
       start of the text or after a space; Korean suffixes may follow, so
       ``"우울입니다"`` and ``"우울증"`` state ``우울``, while ``"비정상"`` does
       not state ``정상``). A spelling ending in a Latin letter or digit must
       also end a word. Spaces inside a label are optional in the text. An
       occurrence inside a longer occurrence of another spelling is ignored.
    3. If exactly one label was found, return it; if none, or two or more
       different labels (``"우울과 불안"``), return ``None`` (unparseable).

    Args:
        text: Generated text.
        labels: The allowed labels, e.g. ``["우울", "불안", "정상"]``.
        aliases: Optional extra spellings per label, e.g.
            ``{"정상": ["이상 없음", "normal"]}``.

    Returns:
        The matched label (as spelled in ``labels``), or ``None``.

    Raises:
        ValueError: If ``labels`` is empty, a label or alias is empty after
            normalisation, two labels normalise to the same text, or
            ``aliases`` names a label that is not in ``labels``.
    """
    return _LabelMatcher(labels, aliases).parse(text)


def _gold_labels(references: Sequence[str], matcher: _LabelMatcher) -> list[str]:
    gold: list[str] = []
    for i, ref in enumerate(references):
        label = matcher.exact.get(_spaceless(_NORMALIZE(ref)))
        if label is None:
            raise ValueError(f"reference {i} {ref!r} is not one of the labels {matcher.labels}")
        gold.append(label)
    return gold


def classification_metrics(
    references: Sequence[str],
    hypotheses: Sequence[str],
    labels: Sequence[str],
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, MetricResult]:
    """Accuracy, macro-F1 and unparseable rate of generated labels.

    Each hypothesis is parsed with :func:`parse_label`. Each reference must be
    a label (or alias) itself, up to normalisation.

    * ``"accuracy"``: per sample 1.0 if the parsed label equals the gold label,
      else 0.0; an unparseable output counts as wrong.
    * ``"macro_f1"``: the mean over ``labels`` of each class's F1
      (``2TP / (2TP + FP + FN)``). An unparseable output is a false negative
      for its gold class and a false positive for none. A class that occurs
      neither in the gold labels nor in the predictions has undefined F1 and
      is left out of the mean (``sklearn.metrics.f1_score(..., labels=...)``
      would count it as 0.0). ``per_sample`` is the per-sample correctness
      (as for accuracy), so paired bootstrap over samples works; macro-F1 is
      not a mean of per-sample values.
    * ``"unparseable_rate"``: per sample 1.0 if the output stated no label or
      several, else 0.0 (lower is better).

    Empty inputs give ``score == 0.0`` and ``per_sample == []`` for all three.

    Args:
        references: Gold labels.
        hypotheses: Generated texts, same length as ``references``.
        labels: The allowed labels.
        aliases: Optional extra spellings per label (see :func:`parse_label`).

    Returns:
        ``{"accuracy", "macro_f1", "unparseable_rate"}`` -> ``MetricResult``.

    Raises:
        ValueError: On length mismatch, a reference that is not a label, or
            a bad label set (see :func:`parse_label`).
    """
    _check_lengths(references, hypotheses)
    matcher = _LabelMatcher(labels, aliases)
    gold = _gold_labels(references, matcher)
    predicted = [matcher.parse(h) for h in hypotheses]

    correct = [1.0 if p == g else 0.0 for p, g in zip(predicted, gold)]
    unparseable = [1.0 if p is None else 0.0 for p in predicted]
    n = len(gold)

    f1s: list[float] = []
    for label in matcher.labels:
        tp = sum(1 for p, g in zip(predicted, gold) if p == label and g == label)
        fp = sum(1 for p, g in zip(predicted, gold) if p == label and g != label)
        fn = sum(1 for p, g in zip(predicted, gold) if p != label and g == label)
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {
        "accuracy": MetricResult("accuracy", sum(correct) / n if n else 0.0, correct),
        "macro_f1": MetricResult("macro_f1", sum(f1s) / len(f1s) if f1s else 0.0, list(correct)),
        "unparseable_rate": MetricResult("unparseable_rate", sum(unparseable) / n if n else 0.0, unparseable),
    }
