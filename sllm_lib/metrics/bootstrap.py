"""Paired bootstrap confidence intervals for the difference between two systems.

Both systems are scored on the same samples; resampling sample indices with
replacement (the same indices for both) gives the sampling distribution of
the difference, and a percentile interval on it. The difference is oriented
so that a positive value always means the candidate is better: for
lower-is-better metrics (CER, WER) it is ``baseline - candidate``.

numpy is imported inside functions, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np

StatisticFn = Callable[["np.ndarray"], tuple[float, float]]
"""Corpus-level statistic: ``fn(indices) -> (candidate_value, baseline_value)``.

``indices`` is a 1-D integer array of sample indices (with repeats) into the
evaluation set; the function computes both systems' statistic on that
resample, e.g. corpus CER as ``edits[indices].sum() / ref_chars[indices].sum()``.
"""

# Resamples are drawn in blocks of at most this many indices, to bound memory
# (1000 resamples x 100k samples would be 800 MB of int64 at once).
_BLOCK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap estimate of how much better the candidate is.

    Attributes:
        improvement: Point estimate on all samples, positive = candidate better.
        ci_low: Lower end of the percentile confidence interval of ``improvement``.
        ci_high: Upper end of that interval.
        n: Number of paired samples.
    """

    improvement: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def significant(self) -> bool:
        """True when the interval excludes zero (better or worse beyond noise)."""
        return self.ci_low > 0.0 or self.ci_high < 0.0


def paired_bootstrap(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    higher_is_better: bool,
    statistic: Literal["mean"] | StatisticFn = "mean",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Paired bootstrap CI of ``statistic(candidate) - statistic(baseline)``, oriented.

    With ``statistic="mean"``, ``candidate`` and ``baseline`` are per-sample
    metric values (e.g. ``MetricResult.per_sample`` of the same metric on the
    same samples, in the same order). The improvement is
    ``mean(candidate) - mean(baseline)``, negated when lower is better. Each
    resample draws ``n`` indices with replacement, shared by both systems;
    this is vectorised with numpy and deterministic for a given ``seed``.

    With a callable ``statistic`` (see :data:`StatisticFn`), it is called with
    the index array of each resample (and with ``arange(n)`` for the point
    estimate) and returns ``(candidate_value, baseline_value)``; use it for
    corpus-level metrics that are not per-sample means (corpus CER, BLEU,
    macro-F1). ``candidate`` and ``baseline`` then only give ``n`` (their
    lengths must still match), and may be the per-sample values or anything
    of the right length.

    The interval is the percentile interval of the resampled improvements,
    ``[q((1 - confidence) / 2), q((1 + confidence) / 2)]``.

    Args:
        candidate: Per-sample values of the candidate system.
        baseline: Per-sample values of the baseline, same samples, same order.
        higher_is_better: Orientation of the metric (see
            :func:`sllm_lib.metrics.registry.is_higher_better`).
        statistic: ``"mean"`` or a corpus-level callable.
        n_resamples: Number of bootstrap resamples (>= 1).
        confidence: Interval coverage, strictly between 0 and 1.
        seed: Seed for ``numpy.random.default_rng``.

    Returns:
        :class:`BootstrapResult`.

    Raises:
        ValueError: On length mismatch, no samples, non-finite values (with
            ``"mean"``), an unknown statistic, ``n_resamples < 1`` or
            ``confidence`` outside (0, 1).
    """
    import numpy as np

    if len(candidate) != len(baseline):
        raise ValueError(
            f"candidate and baseline differ in length: "
            f"{len(candidate)} candidate vs {len(baseline)} baseline values"
        )
    n = len(candidate)
    if n == 0:
        raise ValueError("paired_bootstrap needs at least one sample, got 0")
    if not isinstance(n_resamples, int) or isinstance(n_resamples, bool) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    sign = 1.0 if higher_is_better else -1.0
    rng = np.random.default_rng(seed)

    if isinstance(statistic, str):
        if statistic != "mean":
            raise ValueError(f"unknown statistic {statistic!r}; valid: 'mean' or a callable")
        diff = sign * (np.asarray(candidate, dtype=np.float64) - np.asarray(baseline, dtype=np.float64))
        if not np.all(np.isfinite(diff)):
            raise ValueError("candidate and baseline must be finite numbers (found NaN or inf)")
        point = float(diff.mean())
        block = max(1, _BLOCK_ELEMENTS // n)
        parts = []
        for start in range(0, n_resamples, block):
            idx = rng.integers(0, n, size=(min(block, n_resamples - start), n))
            parts.append(diff[idx].mean(axis=1))
        boot = np.concatenate(parts)
    elif callable(statistic):
        cand, base = statistic(np.arange(n))
        point = sign * (float(cand) - float(base))
        boot = np.empty(n_resamples, dtype=np.float64)
        for i in range(n_resamples):
            cand, base = statistic(rng.integers(0, n, size=n))
            boot[i] = sign * (float(cand) - float(base))
    else:
        raise ValueError(f"unknown statistic {statistic!r}; valid: 'mean' or a callable")

    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return BootstrapResult(improvement=point, ci_low=float(low), ci_high=float(high), n=n)
