"""Gates and the release verdict: statuses from sample-level scores, the paired tests, the tiered policy.

The verdict table at the end is the contract of docs/nightly.md ("Gate policy"): each constructed case has one
exact expected verdict under the policy a spec writes (`policy: {min_items: 20}`) and under the original rules
(a spec without `policy:`).
"""

from __future__ import annotations

import math
import random

import pytest

from eval.gates import GateRule, decide, gate, gate_rules, policy_problems
from eval.nightly import worst_samples
from eval.results import ModelEval, SampleScore
from eval.suites import Suite
from sllm_lib.metrics.mcnemar import mcnemar, mcnemar_exact_p
from sllm_lib.spec import BootstrapSpec, GatePolicySpec
from tests.conftest import SAMPLE

BS = BootstrapSpec(resamples=2000, confidence=0.95, seed=0)
STRICT = GatePolicySpec(min_items=20)
LEGACY = GatePolicySpec.legacy()


def _model(role: str, version: str, values: list[float], metric: str = "cer", task: str = "asr") -> ModelEval:
    samples = [SampleScore(id=f"s{i}", reference=f"ref {i}", prediction=f"{role} {i}", scores={metric: v})
               for i, v in enumerate(values)]
    return ModelEval(role=role, name="m", version=version, metrics={f"{task}/{metric}": sum(values) / len(values)},
                     samples={task: samples})


def _rule(metric: str = "cer", threshold: float = 0.0, *, task: str = "asr", tier: str = "critical",
          relative: bool = False) -> GateRule:
    return GateRule(task=task, metric=metric, threshold=threshold, relative=relative, tier=tier,
                    written=f"{threshold * 100:g}%" if relative else f"{threshold:g}")


def _gate(rule: GateRule, cand: ModelEval, base: ModelEval | None, policy: GatePolicySpec = STRICT):
    return gate(rule, cand, base, baseline="champion", bootstrap=BS, policy=policy)


def _noisy(seed: int = 4, n: int = 30) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    base = [rng.random() for _ in range(n)]
    return [b + rng.gauss(0.02, 0.3) for b in base], base  # slightly worse on average, very noisy


def _accuracy(wins: int, losses: int, both_right: int, both_wrong: int) -> tuple[ModelEval, ModelEval]:
    """Candidate and champion 0/1 accuracy with the given discordant and concordant pair counts."""
    cand = [1.0] * wins + [0.0] * losses + [1.0] * both_right + [0.0] * both_wrong
    base = [0.0] * wins + [1.0] * losses + [1.0] * both_right + [0.0] * both_wrong
    return (_model("candidate", "2", cand, metric="accuracy", task="cls"),
            _model("champion", "1", base, metric="accuracy", task="cls"))


# ----------------------------------------------------------------------------------------------- one gate

def test_clear_worsening_is_a_regression_with_an_interval_below_zero() -> None:
    g = _gate(_rule(threshold=0.01), _model("candidate", "2", [0.30] * 40), _model("champion", "1", [0.10] * 40))
    assert g.status == "regression" and abs(g.improvement + 0.2) < 1e-9
    assert g.ci_high < 0 and g.n_samples == 40 and not g.higher_is_better and g.test == "bootstrap"


def test_noisy_small_worsening_is_within_noise() -> None:
    cand, base = _noisy()
    g = _gate(_rule(), _model("candidate", "2", cand), _model("champion", "1", base))
    assert g.improvement < 0
    assert g.status == "within_noise" and g.ci_low < 0 < g.ci_high


def test_threshold_absorbs_a_small_real_loss_and_gains_are_improvements() -> None:
    champ = _model("champion", "1", [0.10] * 20)
    assert _gate(_rule(threshold=0.05), _model("candidate", "2", [0.12] * 20), champ).status == "pass"
    better = _gate(_rule(), _model("candidate", "2", [0.05] * 20), champ)
    assert better.status == "improved" and better.ci_low > 0


def test_higher_is_better_metrics_are_oriented() -> None:
    g = _gate(_rule("rougeL", task="qa"), _model("candidate", "2", [0.5] * 20, metric="rougeL", task="qa"),
              _model("champion", "1", [0.8] * 20, metric="rougeL", task="qa"))
    assert g.higher_is_better and g.status == "regression" and g.improvement < 0


def test_relative_threshold_is_a_share_of_the_baseline() -> None:
    """cer: "5%" against a champion at 0.20 allows 0.01: 0.209 passes, 0.22 regresses."""
    champ = _model("champion", "1", [0.20] * 30)
    rule = _rule(threshold=0.05, relative=True)
    ok = _gate(rule, _model("candidate", "2", [0.209] * 30), champ)
    bad = _gate(rule, _model("candidate", "2", [0.22] * 30), champ)
    assert math.isclose(ok.threshold, 0.01) and ok.threshold_spec == "5%" and ok.status == "pass"
    assert bad.status == "regression"


def test_no_baseline_and_too_few_paired_samples() -> None:
    cand = _model("candidate", "2", [0.3] * 5)
    assert _gate(_rule(), cand, None).status == "no_baseline"
    other = _model("champion", "1", [0.1] * 5)
    for s in other.samples["asr"]:
        s.reference = "a different held-out set"
    g = _gate(_rule(), cand, other, LEGACY)
    assert g.status == "insufficient" and g.n_samples == 0  # nothing pairs: not a comparison
    few = _gate(_rule(), _model("candidate", "2", [0.9] * 10), _model("champion", "1", [0.1] * 10))
    assert few.status == "insufficient" and few.n_samples == 10 and few.min_items == 20
    assert _gate(_rule(), _model("candidate", "2", [0.9] * 10), _model("champion", "1", [0.1] * 10),
                 LEGACY).status == "regression"  # the original rules need one pair


# ----------------------------------------------------------------------------------------------- McNemar

@pytest.mark.parametrize("wins,losses", [(0, 0), (0, 1), (2, 12), (3, 8), (10, 10), (0, 30), (41, 60),
                                         (500, 560), (1, 1500)])
def test_mcnemar_exact_p_matches_the_binomial_test(wins: int, losses: int) -> None:
    from scipy.stats import binomtest

    n = wins + losses
    expected = 1.0 if n == 0 else binomtest(min(wins, losses), n, 0.5, alternative="two-sided").pvalue
    assert math.isclose(mcnemar_exact_p(wins, losses), expected, rel_tol=1e-9, abs_tol=1e-300)


def test_mcnemar_counts_discordant_pairs_by_direction() -> None:
    r = mcnemar([1, 0, 1, 1, 0], [0, 1, 1, 0, 0], higher_is_better=True)
    assert (r.wins, r.losses, r.n) == (2, 1, 5)
    r = mcnemar([1, 0, 1, 1, 0], [0, 1, 1, 0, 0], higher_is_better=False)  # an error rate: 0 is the good value
    assert (r.wins, r.losses) == (1, 2)
    with pytest.raises(ValueError, match="0 or 1"):
        mcnemar([0.5], [1.0], higher_is_better=True)


def test_accuracy_is_gated_with_mcnemar() -> None:
    cand, champ = _accuracy(wins=2, losses=12, both_right=68, both_wrong=18)
    g = _gate(_rule("accuracy", 0.02, task="cls"), cand, champ)
    assert g.test == "mcnemar" and (g.wins, g.losses) == (2, 12)
    assert math.isclose(g.p_value, 212 / 16384)  # 2 * (C(14,0) + C(14,1) + C(14,2)) / 2**14
    assert g.status == "regression" and math.isclose(g.improvement, -0.10)
    boot = gate(_rule("accuracy", 0.02, task="cls"), cand, champ, baseline="champion", bootstrap=BS,
                policy=GatePolicySpec(min_items=20, paired_test="bootstrap"))
    assert boot.test == "bootstrap" and boot.p_value is None and boot.status == "regression"


def test_mcnemar_can_call_noise_what_a_point_estimate_calls_a_loss() -> None:
    """3 wins and 8 losses in 100: 5 points worse, beyond a 2-point threshold, but p = 0.227."""
    cand, champ = _accuracy(wins=3, losses=8, both_right=70, both_wrong=19)
    g = _gate(_rule("accuracy", 0.02, task="cls"), cand, champ)
    assert g.test == "mcnemar" and math.isclose(g.p_value, 464 / 2048) and g.status == "within_noise"


# ----------------------------------------------------------------------------------------------- the verdict

def _case(name: str, policy: GatePolicySpec):
    """The gates of one constructed night."""
    champ_cer = _model("champion", "1", [0.10] * 40)
    if name == "clear regression":
        return [_gate(_rule(threshold=0.01), _model("candidate", "2", [0.30] * 40), champ_cer, policy)]
    if name == "tie":
        return [_gate(_rule(threshold=0.01), _model("candidate", "2", [0.10] * 40), champ_cer, policy)]
    if name == "within noise":
        cand, base = _noisy()
        return [_gate(_rule(), _model("candidate", "2", cand), _model("champion", "1", base), policy)]
    if name == "too few items":
        return [_gate(_rule(), _model("candidate", "2", [0.9] * 10), _model("champion", "1", [0.1] * 10), policy)]
    if name == "advisory-only regression":
        ok = _gate(_rule(threshold=0.01), _model("candidate", "2", [0.10] * 40), champ_cer, policy)
        adv = _gate(_rule("rougeL", task="qa", tier="advisory"), _model("candidate", "2", [0.5] * 40, "rougeL", "qa"),
                    _model("champion", "1", [0.8] * 40, "rougeL", "qa"), policy)
        return [ok, adv]
    if name == "supporting regression":
        ok = _gate(_rule(threshold=0.01), _model("candidate", "2", [0.10] * 40), champ_cer, policy)
        sup = _gate(_rule("rougeL", task="qa", tier="supporting"),
                    _model("candidate", "2", [0.5] * 40, "rougeL", "qa"),
                    _model("champion", "1", [0.8] * 40, "rougeL", "qa"), policy)
        return [ok, sup]
    if name == "McNemar regression on accuracy":
        return [_gate(_rule("accuracy", 0.02, task="cls"), *_accuracy(2, 12, 68, 18), policy)]
    if name == "first night":
        return [_gate(_rule(threshold=0.01), _model("candidate", "2", [0.30] * 40), None, policy)]
    if name == "nothing gated":
        return []
    raise AssertionError(name)


VERDICTS = [  # (case, verdict with `policy: {min_items: 20}`, verdict without a policy: the original rules)
    ("clear regression", "no_go", "no_go"),
    ("tie", "go", "go"),
    ("within noise", "inconclusive", "go"),
    ("too few items", "inconclusive", "no_go"),  # the original rules gate on any number of pairs
    ("advisory-only regression", "go", "go"),
    ("supporting regression", "inconclusive", "inconclusive"),
    ("McNemar regression on accuracy", "no_go", "no_go"),
    ("first night", "inconclusive", "inconclusive"),
    ("nothing gated", "inconclusive", "inconclusive"),
]


@pytest.mark.parametrize("case,strict,legacy", VERDICTS, ids=[c for c, _, _ in VERDICTS])
def test_verdict_table(case: str, strict: str, legacy: str) -> None:
    for policy, expected in ((STRICT, strict), (LEGACY, legacy)):
        verdict, reasons = decide(_case(case, policy), policy)
        assert verdict == expected, (case, policy, reasons)
        assert reasons  # every verdict says why


def test_verdict_reasons_name_the_gate_and_the_rule() -> None:
    verdict, reasons = decide(_case("too few items", STRICT), STRICT)
    assert verdict == "inconclusive" and reasons == [
        "asr/cer (critical) against the champion has 10 paired samples, the policy needs 20"]
    verdict, reasons = decide(_case("advisory-only regression", STRICT), STRICT)
    assert verdict == "go" and "1 advisory regression not gated: qa/rougeL" in reasons
    verdict, reasons = decide(_case("clear regression", STRICT), STRICT)
    assert reasons == ["asr/cer (critical) against the champion regressed: -0.2, allowed -0.01"]
    lenient = GatePolicySpec(min_items=20, uncertain="go")
    assert decide(_case("within noise", lenient), lenient)[0] == "go"


# ----------------------------------------------------------------------------------------------- rules from specs

def _suite() -> Suite:
    return Suite.model_validate({"name": "s", "tasks": [
        {"name": "asr", "type": "asr", "data": str(SAMPLE / "asr_val.jsonl"), "metrics": ["cer", "wer"],
         "thresholds": {"cer": 0.01, "wer": "5%"}, "tiers": {"wer": "supporting"}},
        {"name": "qa", "type": "text_qa", "data": str(SAMPLE / "text_qa_val.jsonl"), "metrics": ["rougeL", "cer"]},
    ]})


def test_gate_rules_stage_overrides_beat_the_suite() -> None:
    suite = _suite()
    rules = gate_rules(suite, {}, STRICT)
    assert [(r.key, r.threshold, r.relative, r.tier, r.written) for r in rules] == [
        ("asr/cer", 0.01, False, "critical", "0.01"), ("asr/wer", 0.05, True, "supporting", "5%")]
    policy = GatePolicySpec(tiers={"cer": "advisory", "asr/wer": "critical"}, default_tier="supporting")
    got = gate_rules(suite, {"cer": 0.02, "asr/cer": 0.03, "qa/rougeL": "2%"}, policy)
    assert [(r.key, r.threshold, r.tier) for r in got] == [
        ("asr/cer", 0.03, "advisory"), ("asr/wer", 0.05, "critical"), ("qa/rougeL", 0.02, "supporting"),
        ("qa/cer", 0.02, "advisory")]


def test_policy_keys_that_name_no_metric_are_problems() -> None:
    problems = policy_problems(_suite(), {"asr/cerr": 0.01, "wer": 0.02},
                               GatePolicySpec(tiers={"qa/wer": "advisory", "rougeL": "critical"}))
    assert len(problems) == 2
    assert problems[0].startswith("thresholds: 'asr/cerr' is no metric of suite s (valid: ")
    assert problems[1].startswith("policy.tiers: 'qa/wer' is no metric of suite s")


def test_a_policy_tier_for_a_metric_without_a_threshold_is_a_problem() -> None:
    assert policy_problems(_suite(), {"asr/cer": 0.01}, GatePolicySpec(tiers={"asr/cer": "critical"})) == []
    assert policy_problems(_suite(), {"cer": 0.01}, GatePolicySpec(tiers={"cer": "supporting"})) == []
    [problem] = policy_problems(_suite(), {}, GatePolicySpec(tiers={"qa/rougeL": "critical"}))
    assert problem.startswith("policy.tiers: 'qa/rougeL' has no threshold, so it is never gated")


def test_suite_tiers_need_a_threshold(tmp_path) -> None:
    from eval.suites import load_suite
    from sllm_lib.errors import JobSpecError

    path = tmp_path / "suite.yaml"
    path.write_text(f"name: s\ntasks:\n  - name: asr\n    type: asr\n    data: {SAMPLE / 'asr_val.jsonl'}\n"
                    "    metrics: [cer, wer]\n    thresholds: {cer: '2%'}\n    tiers: {wer: advisory}\n",
                    encoding="utf-8")
    with pytest.raises(JobSpecError, match="'wer' has a tier but no threshold"):
        load_suite(path)


def test_worst_samples_are_the_biggest_losses_first() -> None:
    champ = _model("champion", "1", [0.1, 0.1, 0.1, 0.5])
    cand = _model("candidate", "2", [0.9, 0.2, 0.1, 0.4])
    g = _gate(_rule(), cand, champ, LEGACY)
    worst = worst_samples(cand, champ, [g], 5)
    assert [w.id for w in worst] == ["s0", "s1"] and worst[0].loss > worst[1].loss > 0
