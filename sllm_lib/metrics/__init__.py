"""Evaluation metrics."""

from __future__ import annotations

from sllm_lib.metrics.bertscore import bertscore
from sllm_lib.metrics.bootstrap import BootstrapResult, paired_bootstrap
from sllm_lib.metrics.classification import classification_metrics, parse_label
from sllm_lib.metrics.registry import METRIC_SPECS, MetricSpec, compute_metrics, is_higher_better
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

__all__ = [
    "METRICS",
    "METRIC_SPECS",
    "BootstrapResult",
    "KoreanNormalizer",
    "MetricResult",
    "MetricSpec",
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
    "paired_bootstrap",
    "parse_label",
    "rouge_l",
    "rouge_n",
    "wer",
]
