"""Nightly gates and the release verdict: GO, NO-GO or INCONCLUSIVE under a tiered policy.

A gate compares one metric of one task, candidate against one baseline (the champion or the previous nightly's
candidate), on the samples both were scored on:

- the improvement is oriented so positive is better (for CER/WER: baseline - candidate), on the corpus scores;
- the evidence is a paired test over samples: McNemar's exact test for metrics whose per-sample values are 0/1
  (accuracy, exact match; ``paired_test: auto``), the paired bootstrap for the rest. The bootstrap interval is
  reported for every gate;
- its threshold is the allowed worsening: metric units (``cer: 0.01``) or relative to the baseline (``"5%"``).

Gate statuses: ``regression`` (worse beyond the threshold, and the test says worse), ``within_noise`` (worse
beyond the threshold, but the test cannot tell it from noise), ``pass``, ``improved`` (better, and the test says
so), ``insufficient`` (fewer paired samples than the policy's ``min_items``), ``no_baseline`` (the baseline has
no value for it).

The verdict (:func:`decide`), by tier:

- critical: a regression is NO-GO; a critical gate without enough evidence (within noise, insufficient, no
  baseline) is INCONCLUSIVE, unless the policy says ``uncertain: go``;
- supporting: a regression downgrades GO to INCONCLUSIVE, nothing else;
- advisory: shown, never gates;
- a night where no gate compared anything (no champion yet) is INCONCLUSIVE, whatever the policy.

No heavy imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from eval.results import GateResult, ModelEval, SampleScore, Verdict
from eval.suites import Suite
from sllm_lib.spec import GatePolicySpec, parse_threshold

TIERS = ("critical", "supporting", "advisory")
COMPARED = ("regression", "within_noise", "pass", "improved")
"""Statuses of a gate that compared the candidate with a baseline value on enough paired samples."""


@dataclass(frozen=True)
class GateRule:
    """What one gated metric must satisfy: its threshold (as written, and parsed) and its tier."""

    task: str
    metric: str
    threshold: float  # metric units, or a fraction of the baseline when relative
    relative: bool
    tier: str
    written: str  # the threshold as the suite or spec wrote it ("0.01", "5%")

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"

    def allowed_worsening(self, baseline_value: float) -> float:
        """The threshold in metric units against this baseline value."""
        return self.threshold * abs(baseline_value) if self.relative else self.threshold


def _written(value: float | str) -> str:
    return value if isinstance(value, str) else f"{float(value):g}"


def gate_rules(suite: Suite, thresholds: dict[str, float | str], policy: GatePolicySpec) -> list[GateRule]:
    """One rule per metric with a threshold (the stage's 'task/metric', then 'metric', then the suite's), with its
    tier (the policy's 'task/metric', then 'metric', then the suite's, then the policy's default)."""
    out = []
    for t in suite.tasks:
        for m in t.metric_names():
            key = f"{t.name}/{m}"
            value = thresholds.get(key, thresholds.get(m, t.thresholds.get(m)))
            if value is None:
                continue
            amount, relative = parse_threshold(value)
            tier = policy.tiers.get(key, policy.tiers.get(m, t.tiers.get(m, policy.default_tier)))
            out.append(GateRule(task=t.name, metric=m, threshold=amount, relative=relative, tier=tier,
                                written=_written(value)))
    return out


def policy_problems(suite: Suite, thresholds: dict[str, Any], policy: GatePolicySpec | None) -> list[str]:
    """Keys of the stage's thresholds and policy tiers that name no metric of the suite (a typo would silently
    leave a metric ungated or in the default tier), and tiers given to a metric without a threshold."""
    tasks = {t.name: t.metric_names() for t in suite.tasks}
    metrics = {m for ms in tasks.values() for m in ms}
    out = []
    for field, keys in (("thresholds", list(thresholds)), ("policy.tiers", list(policy.tiers) if policy else [])):
        for k in keys:
            task, _, metric = k.rpartition("/")
            ok = (metric in tasks.get(task, [])) if task else (metric in metrics)
            if not ok:
                valid = sorted({f"{t}/{m}" for t, ms in tasks.items() for m in ms} | metrics)
                out.append(f"{field}: {k!r} is no metric of suite {suite.name} (valid: {', '.join(valid)})")
    if policy is not None and not out:
        gated = {r.key for r in gate_rules(suite, thresholds, policy)}
        for k in policy.tiers:
            task, _, metric = k.rpartition("/")
            if not any(g == k or (not task and g.endswith(f"/{metric}")) for g in gated):
                out.append(f"policy.tiers: {k!r} has no threshold, so it is never gated (give it one in "
                           f"thresholds or in suite {suite.name}'s thresholds, or drop its tier)")
    return out


def _paired(cand: list[SampleScore], base: list[SampleScore], metric: str) -> tuple[list[float], list[float]]:
    """Per-sample values of both models on the samples both were scored on (same id, same reference)."""
    by_id = {s.id: s for s in base if metric in s.scores}
    pairs = [(c.scores[metric], by_id[c.id].scores[metric]) for c in cand
             if metric in c.scores and c.id in by_id and by_id[c.id].reference == c.reference]
    return [a for a, _ in pairs], [b for _, b in pairs]


def gate(rule: GateRule, cand: ModelEval, base: ModelEval | None, *, baseline: str, bootstrap: Any,
         policy: GatePolicySpec) -> GateResult:
    """One gate: the oriented improvement, the paired test, the bootstrap interval, and the status."""
    from sllm_lib.metrics.bootstrap import paired_bootstrap
    from sllm_lib.metrics.mcnemar import is_binary, mcnemar
    from sllm_lib.metrics.registry import METRIC_SPECS, is_higher_better

    hib = is_higher_better(rule.metric)
    cv = cand.metrics.get(rule.key, float("nan"))
    row = dict(task=rule.task, metric=rule.metric, baseline=baseline, candidate_value=cv, higher_is_better=hib,
               tier=rule.tier, threshold_spec=rule.written, min_items=policy.min_items)
    if base is None or rule.key not in base.metrics or not math.isfinite(cv) or not math.isfinite(base.metrics[rule.key]):
        # (a NaN score compares as nothing: it must not fall through to "pass")
        return GateResult(**row, baseline_label=base.label if base else "-", baseline_value=None, improvement=None,
                          ci_low=None, ci_high=None, threshold=rule.threshold if not rule.relative else float("nan"),
                          status="no_baseline")
    bv = base.metrics[rule.key]
    threshold = rule.allowed_worsening(bv)
    improvement = (cv - bv) if hib else (bv - cv)  # corpus scores; the evidence comes from paired samples
    a, b = _paired(cand.samples.get(rule.task, []), base.samples.get(rule.task, []), rule.metric)
    row.update(baseline_label=base.label, baseline_value=bv, improvement=improvement, threshold=threshold,
               n_samples=len(a))
    if len(a) < policy.min_items:
        return GateResult(**row, ci_low=None, ci_high=None, status="insufficient")
    bs = paired_bootstrap(a, b, higher_is_better=hib, n_resamples=bootstrap.resamples,
                          confidence=bootstrap.confidence, seed=bootstrap.seed)
    spec = METRIC_SPECS.get(rule.metric)
    if policy.paired_test == "auto" and spec is not None and spec.binary_per_sample and is_binary(a) \
            and is_binary(b):
        mc = mcnemar(a, b, higher_is_better=hib)
        alpha = 1.0 - bootstrap.confidence
        worse = mc.losses > mc.wins and mc.p_value < alpha
        better = mc.wins > mc.losses and mc.p_value < alpha
        row.update(test="mcnemar", p_value=mc.p_value, wins=mc.wins, losses=mc.losses)
    else:
        worse, better = bs.ci_high < 0, bs.ci_low > 0
    if improvement < -threshold:
        status = "regression" if worse else "within_noise"
    elif improvement > 0 and better:
        status = "improved"
    else:
        status = "pass"
    return GateResult(**row, ci_low=bs.ci_low, ci_high=bs.ci_high, status=status)


def _name(g: GateResult) -> str:
    against = "the champion" if g.baseline == "champion" else "the previous nightly"
    return f"{g.task}/{g.metric} ({g.tier}) against {against}"


def _why(g: GateResult) -> str:
    if g.status == "regression":
        return f"{_name(g)} regressed: {g.improvement:+.4g}, allowed -{g.threshold:.4g}"
    if g.status == "within_noise":
        return (f"{_name(g)} is worse than allowed ({g.improvement:+.4g}, allowed -{g.threshold:.4g}) but the "
                f"paired test cannot tell it from noise")
    if g.status == "insufficient":
        return f"{_name(g)} has {g.n_samples} paired samples, the policy needs {g.min_items}"
    return f"{_name(g)} has no baseline value"


def decide(gates: list[GateResult], policy: GatePolicySpec) -> tuple[Verdict, list[str]]:
    """The night's verdict and the reasons for it, worst first (see the module docstring for the rules)."""
    critical = [g for g in gates if g.tier == "critical"]
    supporting = [g for g in gates if g.tier == "supporting"]
    regressed = [g for g in critical if g.status == "regression"]
    if regressed:
        return "no_go", [_why(g) for g in regressed]
    gating = [g for g in gates if g.tier != "advisory"]
    if not gating:
        return "inconclusive", ["no critical or supporting gate: the suite and spec gate nothing"]
    if all(g.status == "no_baseline" for g in gating):
        return "inconclusive", ["no baseline to compare with (no champion yet, or it lacks every gated metric): "
                                "nothing was gated"]
    reasons: list[str] = []
    if policy.uncertain == "inconclusive":
        reasons += [_why(g) for g in critical if g.status in ("within_noise", "insufficient", "no_baseline")]
    reasons += [_why(g) for g in supporting if g.status == "regression"]
    if not reasons and not any(g.status in COMPARED for g in gating):
        reasons.append("no gate compared the candidate on any paired sample: nothing was gated")
    if reasons:
        return "inconclusive", reasons
    n_crit = sum(g.status in COMPARED for g in critical)
    ok = [f"{n_crit} critical gate{'s' if n_crit != 1 else ''} compared, none regressed"]
    ignored = [g for g in gates if g.tier == "advisory" and g.status == "regression"]
    if ignored:
        ok.append(f"{len(ignored)} advisory regression{'s' if len(ignored) != 1 else ''} not gated: "
                  + ", ".join(f"{g.task}/{g.metric}" for g in ignored))
    return "go", ok


def describe_policy(policy: GatePolicySpec, *, written: bool) -> list[str]:
    """The policy as lines a report shows."""
    lines = [] if written else ["no policy in the spec: the original rules (every gate critical, a loss inside the "
                                "noise does not block)"]
    named = ", ".join(f"{k}: {v}" for k, v in sorted(policy.tiers.items()))
    lines.append(f"tiers: {named + '; ' if named else ''}others {policy.default_tier} (or the suite's tier)")
    lines.append(f"at least {policy.min_items} paired sample{'s' if policy.min_items != 1 else ''} per gate")
    lines.append("a critical gate without enough evidence: " + (
        "INCONCLUSIVE" if policy.uncertain == "inconclusive" else "does not block"))
    lines.append("paired test: " + ("McNemar's exact test for 0/1 metrics, the bootstrap for the rest"
                                    if policy.paired_test == "auto" else "the paired bootstrap for every metric"))
    return lines
