"""The text normaliser of each language, for CER and WER.

An eval suite declares a ``language``; its CER and WER use that language's normaliser, and each score carries
the normaliser's label (``"korean-v1"``, ``"whisper-english-v1"``). Whether CER counts spaces is part of each
normaliser's convention (:meth:`for_unit`): Korean drops them (spacing varies), English keeps them (jiwer's CER).
"""

from __future__ import annotations

from typing import Literal, get_args

from sllm_lib.metrics.english import EnglishTextNormalizer
from sllm_lib.metrics.text import KoreanNormalizer, Normalizer, Unit

Language = Literal["ko", "en"]
LANGUAGES: tuple[str, ...] = get_args(Language)
DEFAULT_LANGUAGE: Language = "ko"

NORMALIZERS: dict[str, type[Normalizer]] = {"ko": KoreanNormalizer, "en": EnglishTextNormalizer}
"""language -> its normaliser class."""

assert set(NORMALIZERS) == set(LANGUAGES)


def check_language(language: str) -> None:
    """Raise ValueError naming the allowed languages unless `language` is one."""
    if language not in NORMALIZERS:
        raise ValueError(f"unknown language {language!r}; allowed: {', '.join(LANGUAGES)}")


def normalizer_for(language: str, unit: Unit) -> Normalizer:
    """The normaliser a `language` scores CER (``unit="char"``) or WER (``"word"``) with.

    Raises:
        ValueError: On an unknown language (lists the allowed ones).
    """
    check_language(language)
    return NORMALIZERS[language].for_unit(unit)
