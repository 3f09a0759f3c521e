"""Gate verdicts from sample-level scores: regression, noise, pass, improved, no baseline."""

from __future__ import annotations

import random

from eval.nightly import gate, gated_metrics, worst_samples
from eval.results import ModelEval, SampleScore
from eval.suites import Suite
from sllm_lib.spec import BootstrapSpec
from tests.conftest import SAMPLE

BS = BootstrapSpec(resamples=2000, confidence=0.95, seed=0)


def _model(role: str, version: str, values: list[float], metric: str = "cer", task: str = "asr") -> ModelEval:
    samples = [SampleScore(id=f"s{i}", reference=f"ref {i}", prediction=f"{role} {i}", scores={metric: v})
               for i, v in enumerate(values)]
    return ModelEval(role=role, name="m", version=version, metrics={f"{task}/{metric}": sum(values) / len(values)},
                     samples={task: samples})


def test_clear_worsening_is_a_regression_with_an_interval_below_zero() -> None:
    champ = _model("champion", "1", [0.10] * 40)
    cand = _model("candidate", "2", [0.30] * 40)
    g = gate("asr", "cer", 0.01, cand, champ, baseline="champion", bootstrap=BS)
    assert g.status == "regression" and abs(g.improvement + 0.2) < 1e-9
    assert g.ci_high < 0 and g.n_samples == 40 and not g.higher_is_better


def test_noisy_small_worsening_is_within_noise() -> None:
    rng = random.Random(4)
    base = [rng.random() for _ in range(30)]
    cand = [b + rng.gauss(0.02, 0.3) for b in base]  # slightly worse on average, very noisy
    g = gate("asr", "cer", 0.0, _model("candidate", "2", cand), _model("champion", "1", base),
             baseline="champion", bootstrap=BS)
    assert g.improvement < 0
    assert g.status == "within_noise" and g.ci_low < 0 < g.ci_high


def test_threshold_absorbs_a_small_real_loss_and_gains_are_improvements() -> None:
    champ = _model("champion", "1", [0.10] * 20)
    small = gate("asr", "cer", 0.05, _model("candidate", "2", [0.12] * 20), champ, baseline="champion", bootstrap=BS)
    assert small.status == "pass"
    better = gate("asr", "cer", 0.0, _model("candidate", "2", [0.05] * 20), champ, baseline="champion", bootstrap=BS)
    assert better.status == "improved" and better.ci_low > 0


def test_higher_is_better_metrics_are_oriented() -> None:
    champ = _model("champion", "1", [0.8] * 20, metric="rougeL", task="qa")
    cand = _model("candidate", "2", [0.5] * 20, metric="rougeL", task="qa")
    g = gate("qa", "rougeL", 0.0, cand, champ, baseline="champion", bootstrap=BS)
    assert g.higher_is_better and g.status == "regression" and g.improvement < 0


def test_no_baseline_and_mismatched_samples() -> None:
    cand = _model("candidate", "2", [0.3] * 5)
    assert gate("asr", "cer", 0.0, cand, None, baseline="champion", bootstrap=BS).status == "no_baseline"
    other = _model("champion", "1", [0.1] * 5)
    for s in other.samples["asr"]:
        s.reference = "a different held-out set"
    g = gate("asr", "cer", 0.0, cand, other, baseline="champion", bootstrap=BS)
    assert g.status == "no_baseline" and g.n_samples == 0


def test_worst_samples_are_the_biggest_losses_first() -> None:
    champ = _model("champion", "1", [0.1, 0.1, 0.1, 0.5])
    cand = _model("candidate", "2", [0.9, 0.2, 0.1, 0.4])
    g = gate("asr", "cer", 0.0, cand, champ, baseline="champion", bootstrap=BS)
    worst = worst_samples(cand, champ, [g], 5)
    assert [w.id for w in worst] == ["s0", "s1"] and worst[0].loss > worst[1].loss > 0


def test_gated_metrics_stage_overrides_beat_the_suite() -> None:
    suite = Suite.model_validate({"name": "s", "tasks": [
        {"name": "asr", "type": "asr", "data": str(SAMPLE / "asr_val.jsonl"), "metrics": ["cer", "wer"],
         "thresholds": {"cer": 0.01}},
        {"name": "qa", "type": "text_qa", "data": str(SAMPLE / "text_qa_val.jsonl"), "metrics": ["rougeL", "cer"]},
    ]})
    assert gated_metrics(suite, {}) == [("asr", "cer", 0.01)]
    got = gated_metrics(suite, {"cer": 0.02, "asr/cer": 0.03, "qa/rougeL": 0.0})
    assert got == [("asr", "cer", 0.03), ("qa", "rougeL", 0.0), ("qa", "cer", 0.02)]
