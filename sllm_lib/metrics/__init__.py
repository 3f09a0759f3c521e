"""Evaluation metrics."""

from __future__ import annotations

from sllm_lib.metrics.bertscore import bertscore
from sllm_lib.metrics.bootstrap import BootstrapResult, paired_bootstrap
from sllm_lib.metrics.classification import classification_metrics, parse_label
from sllm_lib.metrics.english import EnglishTextNormalizer
from sllm_lib.metrics.language import LANGUAGES, normalizer_for
from sllm_lib.metrics.registry import METRIC_SPECS, MetricSpec, compute_metrics, is_higher_better, metric_normalizer
from sllm_lib.metrics.text import (
    METRICS,
    KoreanNormalizer,
    MetricResult,
    Normalizer,
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

__all__ = [
    "METRICS",
    "METRIC_SPECS",
    "BootstrapResult",
    "EnglishTextNormalizer",
    "KoreanNormalizer",
    "LANGUAGES",
    "MetricResult",
    "MetricSpec",
    "Normalizer",
    "bertscore",
    "bleu",
    "cer",
    "classification_metrics",
    "compute_metrics",
    "compute_text_metrics",
    "distinct_n",
    "exact_match",
    "is_higher_better",
    "keyword_match",
    "metric_normalizer",
    "normalizer_for",
    "paired_bootstrap",
    "parse_label",
    "rouge_l",
    "rouge_n",
    "wer",
]
