"""Paired bootstrap: orientation, intervals, determinism and errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sllm_lib.metrics.bootstrap import BootstrapResult, paired_bootstrap


def _noisy(n: int, mean: float, seed: int) -> list[float]:
    return list(np.random.default_rng(seed).normal(mean, 0.1, size=n))


def test_identical_systems_improvement_zero_ci_contains_zero():
    values = _noisy(200, 0.5, seed=1)
    res = paired_bootstrap(values, values, higher_is_better=True)
    assert isinstance(res, BootstrapResult)
    assert res.improvement == 0.0
    assert res.ci_low <= 0.0 <= res.ci_high
    assert res.n == 200
    assert not res.significant


def test_clearly_better_candidate_ci_above_zero():
    baseline = _noisy(300, 0.5, seed=1)
    candidate = [b + 0.1 + e for b, e in zip(baseline, _noisy(300, 0.0, seed=2))]
    res = paired_bootstrap(candidate, baseline, higher_is_better=True)
    assert res.improvement == pytest.approx(float(np.mean(candidate) - np.mean(baseline)))
    assert 0.0 < res.ci_low <= res.improvement <= res.ci_high
    assert res.significant


def test_lower_is_better_orientation():
    # candidate CER is lower (better): improvement = baseline - candidate > 0
    baseline = [0.30, 0.20, 0.25, 0.40, 0.35] * 20
    candidate = [v - 0.05 for v in baseline]
    res = paired_bootstrap(candidate, baseline, higher_is_better=False)
    assert res.improvement == pytest.approx(0.05)
    assert res.ci_low > 0.0
    # the same numbers read as higher-is-better are a regression
    worse = paired_bootstrap(candidate, baseline, higher_is_better=True)
    assert worse.improvement == pytest.approx(-0.05)
    assert worse.ci_high < 0.0


def test_interval_hand_check_on_constant_differences():
    # every paired difference is exactly 1.0, so every resample mean is 1.0
    res = paired_bootstrap([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], higher_is_better=True, n_resamples=50)
    assert (res.improvement, res.ci_low, res.ci_high) == pytest.approx((1.0, 1.0, 1.0))


def test_deterministic_with_seed_and_wider_with_more_confidence():
    cand, base = _noisy(100, 0.52, seed=3), _noisy(100, 0.5, seed=4)
    a = paired_bootstrap(cand, base, higher_is_better=True, seed=7)
    b = paired_bootstrap(cand, base, higher_is_better=True, seed=7)
    c = paired_bootstrap(cand, base, higher_is_better=True, seed=8)
    assert a == b
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    wide = paired_bootstrap(cand, base, higher_is_better=True, seed=7, confidence=0.99)
    assert wide.ci_low <= a.ci_low and a.ci_high <= wide.ci_high


def test_large_inputs_are_resampled_in_blocks():
    # 20k samples x 1000 resamples would be 160 MB of indices at once; blocks keep it bounded
    cand, base = _noisy(20_000, 0.51, seed=5), _noisy(20_000, 0.5, seed=6)
    res = paired_bootstrap(cand, base, higher_is_better=True)
    assert res.ci_low < res.improvement < res.ci_high


def test_corpus_statistic_callback():
    # corpus CER = total edits / total reference characters, not a mean of per-sample rates
    ref_chars = np.array([10, 2, 8, 5] * 10)
    cand_edits = np.array([1, 0, 0, 1] * 10)
    base_edits = np.array([1, 1, 2, 1] * 10)

    def corpus_cer(idx: np.ndarray) -> tuple[float, float]:
        den = ref_chars[idx].sum()
        return cand_edits[idx].sum() / den, base_edits[idx].sum() / den

    per_sample = [0.0] * len(ref_chars)  # only the length matters with a callback
    res = paired_bootstrap(per_sample, per_sample, higher_is_better=False, statistic=corpus_cer, n_resamples=200)
    assert res.improvement == pytest.approx((5 - 2) / 25)
    assert res.ci_low > 0.0
    again = paired_bootstrap(per_sample, per_sample, higher_is_better=False, statistic=corpus_cer, n_resamples=200)
    assert again == res


def test_errors():
    with pytest.raises(ValueError, match=r"3 candidate vs 2 baseline"):
        paired_bootstrap([1, 2, 3], [1, 2], higher_is_better=True)
    with pytest.raises(ValueError, match="at least one sample"):
        paired_bootstrap([], [], higher_is_better=True)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [1.0], higher_is_better=True, confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap([1.0], [1.0], higher_is_better=True, n_resamples=0)
    with pytest.raises(ValueError, match="statistic"):
        paired_bootstrap([1.0], [1.0], higher_is_better=True, statistic="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([float("nan")], [1.0], higher_is_better=True)


def test_import_is_cheap():
    code = "import sys, sllm_lib.metrics.bootstrap; assert 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
