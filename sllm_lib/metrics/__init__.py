"""Evaluation metrics."""

from __future__ import annotations

from sllm_lib.metrics.text import (
    METRICS,
    KoreanNormalizer,
    MetricResult,
    cer,
    compute_text_metrics,
    distinct_n,
    exact_match,
    rouge_l,
    rouge_n,
    wer,
)

__all__ = [
    "METRICS",
    "KoreanNormalizer",
    "MetricResult",
    "cer",
    "compute_text_metrics",
    "distinct_n",
    "exact_match",
    "rouge_l",
    "rouge_n",
    "wer",
]
