"""Length statistics of record files (token counts per prompt, target and total).

The token counter is injected (``count_tokens``), so this module stays free of any
tokenizer or torch import; the CLI passes a tokenizer's ``len(encode(text))``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from sllm_lib.data.records import ReadResult, RecordKind
from sllm_lib.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_PERCENTILES: tuple[float, ...] = (50, 90, 95, 99)


def length_percentiles(
    lengths: Sequence[int],
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> dict[str, float]:
    """Summarise a list of lengths.

    Percentiles use numpy's default linear interpolation between closest ranks.

    Args:
        lengths: The lengths (non-empty).
        percentiles: Percentiles in ``[0, 100]`` to report, keyed ``"p<value>"``
            (``50`` -> ``"p50"``, ``99.9`` -> ``"p99.9"``).

    Returns:
        ``{"count", "min", "mean", "p50", ..., "max"}`` as floats.

    Raises:
        ValueError: ``lengths`` is empty or a percentile is outside ``[0, 100]``.
    """
    values = np.asarray(lengths, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("cannot compute length statistics of an empty sequence")
    bad = [p for p in percentiles if not 0 <= p <= 100]
    if bad:
        raise ValueError(f"percentiles must be within [0, 100] (got {bad})")
    stats: dict[str, float] = {
        "count": float(values.size),
        "min": float(values.min()),
        "mean": float(values.mean()),
    }
    for p in percentiles:
        stats[f"p{p:g}"] = float(np.percentile(values, p))
    stats["max"] = float(values.max())
    return stats


def record_text(record: dict, kind: RecordKind) -> tuple[str, str]:
    """Return the text parts of a record for token counting.

    Audio is not text: an ``asr`` record has an empty prompt, and a ``speech_qa``
    prompt holds only its instruction and input (the audio tokens are not counted).

    Args:
        record: A record as returned by :func:`sllm_lib.data.records.read_records`.
        kind: The record kind.

    Returns:
        ``(prompt text, target text)``; prompt is ``instruction`` and, when non-empty,
        ``input`` joined by a newline.

    Raises:
        DataError: ``kind`` is unknown.
    """
    if kind == "classification":  # the text (the prompt template adds a fixed part) and the label
        return record["text"], record["label"]
    if kind == "asr":
        return "", str(record.get("transcript", ""))
    if kind in ("text_qa", "speech_qa"):
        parts = [str(record.get("instruction", "")), str(record.get("input", "") or "")]
        prompt = "\n".join(part for part in parts if part)
        return prompt, str(record.get("output", ""))
    raise DataError(f"unknown record kind {kind!r}")


def dataset_length_stats(
    result: ReadResult,
    count_tokens: Callable[[str], int],
) -> dict[str, dict[str, float]]:
    """Token-length statistics of a read record file.

    Args:
        result: The records, as returned by ``read_records``.
        count_tokens: Returns the number of tokens of a text.

    Returns:
        ``{"prompt": stats, "target": stats, "total": stats}`` where each ``stats`` is a
        :func:`length_percentiles` dict and ``total`` is prompt + target per record.

    Raises:
        DataError: ``result`` holds no records.
    """
    if not result.records:
        raise DataError(f"{result.path}: no records to compute length statistics of")
    prompt_lengths: list[int] = []
    target_lengths: list[int] = []
    for record in result.records:
        prompt, target = record_text(record, result.kind)
        prompt_lengths.append(count_tokens(prompt) if prompt else 0)
        target_lengths.append(count_tokens(target))
    totals = [p + t for p, t in zip(prompt_lengths, target_lengths)]
    log.debug("%s: length stats over %d records", result.path, len(totals))
    return {
        "prompt": length_percentiles(prompt_lengths),
        "target": length_percentiles(target_lengths),
        "total": length_percentiles(totals),
    }
