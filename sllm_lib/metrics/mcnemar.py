"""McNemar's exact test for two systems scored 0/1 on the same samples (accuracy, exact match).

Only the discordant pairs carry evidence: ``wins`` (the candidate right where the baseline is wrong) and
``losses`` (the reverse). Under "neither is better" each discordant pair is a fair coin, so the two-sided p-value
is twice the binomial tail of the smaller count, capped at 1. Exact at any size (no chi-square approximation,
which is poor for fewer than ~25 discordant pairs); computed in log space, so thousands of pairs do not
underflow. No heavy imports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class McNemarResult:
    """wins/losses: discordant pairs in the candidate's favour / against it (oriented by the metric's direction);
    n: paired samples; p_value: two-sided exact p-value of wins == losses."""

    wins: int
    losses: int
    n: int
    p_value: float


def mcnemar_exact_p(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value: 2 * P(X <= min(wins, losses)) for X ~ Binomial(wins + losses, 1/2)."""
    if wins < 0 or losses < 0:
        raise ValueError(f"counts must be >= 0, got wins={wins}, losses={losses}")
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    log_half_n = n * math.log(0.5)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
    return min(1.0, 2.0 * tail)


def is_binary(values: Sequence[float]) -> bool:
    """Every value is 0 or 1 (a per-sample correctness)."""
    return all(v in (0.0, 1.0) for v in values)


def mcnemar(candidate: Sequence[float], baseline: Sequence[float], *, higher_is_better: bool) -> McNemarResult:
    """McNemar's exact test on paired 0/1 scores (candidate[i] and baseline[i] are the same sample).

    Raises:
        ValueError: the lists differ in length or hold a value other than 0 or 1.
    """
    if len(candidate) != len(baseline):
        raise ValueError(f"paired scores differ in length: {len(candidate)} vs {len(baseline)}")
    if not (is_binary(candidate) and is_binary(baseline)):
        raise ValueError("McNemar's test needs per-sample scores of 0 or 1")
    good = 1.0 if higher_is_better else 0.0
    wins = sum(1 for c, b in zip(candidate, baseline) if c == good and b != good)
    losses = sum(1 for c, b in zip(candidate, baseline) if b == good and c != good)
    return McNemarResult(wins=wins, losses=losses, n=len(candidate), p_value=mcnemar_exact_p(wins, losses))
