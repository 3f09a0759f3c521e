"""What a nightly evaluation produces: the models it scored, the gates, trends and worst samples.

Plain dataclasses with JSON round-trip, shared by the nightly runner (`eval/nightly.py`), the
report renderer (`eval/report.py`) and the tests. No heavy imports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

GateStatus = Literal["regression", "within_noise", "pass", "improved", "insufficient", "no_baseline"]
"""regression: worse beyond the threshold and the paired test says worse (bootstrap interval below zero, or
McNemar's p below 1 - confidence); within_noise: worse beyond the threshold but the test cannot tell;
pass: not worse beyond the threshold; improved: better and the test says so; insufficient: fewer paired
samples than the policy's min_items; no_baseline: nothing to compare against (first night, or a metric the
baseline lacks). See eval/gates.py."""

Verdict = Literal["go", "no_go", "inconclusive"]
VERDICT_LABELS: dict[str, str] = {"go": "GO", "no_go": "NO-GO", "inconclusive": "INCONCLUSIVE"}


def normalizer_lines(normalizers: dict[str, str]) -> list[str]:
    """The text normalisers behind the numbers, one line each: "korean-v1: asr/cer, asr/wer"."""
    by_label: dict[str, list[str]] = {}
    for key, label in normalizers.items():
        by_label.setdefault(label, []).append(key)
    return [f"{label}: {', '.join(keys)}" for label, keys in by_label.items()]


@dataclass
class SampleScore:
    """One evaluated sample of one task: its id, texts and the per-sample value of each metric."""

    id: str
    reference: str
    prediction: str
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class ModelEval:
    """One model version scored on the suite.

    `role` is why it was picked: "candidate", "champion" or "latest". `metrics` maps
    "task/metric" to the corpus score; `samples` maps a task to its scored samples.
    """

    role: str
    name: str
    version: str
    aliases: list[str] = field(default_factory=list)
    eval_run_id: str | None = None
    source_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[SampleScore]] = field(default_factory=dict)
    samples_per_s: float | None = None
    reused: bool = False  # results read back from an earlier run, not re-generated
    gpu_hours: float | None = None  # along the lineage of the run that produced it (every attempt, sweep points)
    cost: str | None = None  # that lineage's cost ("12.50 USD"), when its profiles had a price

    @property
    def label(self) -> str:
        tag = "".join(f" @{a}" for a in self.aliases)
        return f"{self.name} v{self.version}{tag}"


@dataclass
class GateResult:
    """One metric of one task, candidate against one baseline.

    `improvement` is oriented so that positive is better (for CER/WER it is baseline - candidate);
    `ci_low`/`ci_high` bound the improvement (paired bootstrap over samples). `threshold` is the allowed
    worsening in metric units against this baseline (`threshold_spec` as written: "0.01" or "5%"). `test` is the
    paired test that decided: "bootstrap", or "mcnemar" with its `p_value` and discordant `wins`/`losses`.
    """

    task: str
    metric: str
    baseline: Literal["champion", "previous_nightly"]
    baseline_label: str
    candidate_value: float
    baseline_value: float | None
    improvement: float | None
    ci_low: float | None
    ci_high: float | None
    threshold: float
    higher_is_better: bool
    status: GateStatus
    n_samples: int = 0
    tier: str = "critical"
    threshold_spec: str = ""
    min_items: int = 1
    test: str = "bootstrap"
    p_value: float | None = None
    wins: int | None = None
    losses: int | None = None


@dataclass
class TrendPoint:
    """A metric's value on one past (or today's) nightly, for the candidate of that night."""

    date: str
    version: str
    value: float


@dataclass
class WorstSample:
    """A sample where the candidate lost most against the champion on one metric."""

    task: str
    metric: str
    id: str
    reference: str
    candidate_prediction: str
    baseline_prediction: str
    candidate_score: float
    baseline_score: float
    loss: float  # oriented: how much worse the candidate is on this sample (> 0)


@dataclass
class NightlyResult:
    """Everything one nightly evaluation found; the report is rendered from this alone."""

    date: str
    suite: str
    registered_model: str
    models: list[ModelEval] = field(default_factory=list)
    gates: list[GateResult] = field(default_factory=list)
    trends: dict[str, list[TrendPoint]] = field(default_factory=dict)  # "task/metric" -> points, oldest first
    worst_samples: list[WorstSample] = field(default_factory=list)
    regression: bool = False  # the verdict is NO-GO (kept for readers of result.json)
    promoted: bool = False
    notes: list[str] = field(default_factory=list)
    confidence: float = 0.95
    nightly_run_id: str | None = None
    verdict: Verdict = "inconclusive"  # eval/gates.py decide(): GO, NO-GO or INCONCLUSIVE
    reasons: list[str] = field(default_factory=list)  # why, worst first
    policy: list[str] = field(default_factory=list)  # the gate policy, as the report shows it
    normalizers: dict[str, str] = field(default_factory=dict)  # "task/metric" -> text normaliser (CER, WER)

    def model(self, role: str) -> ModelEval | None:
        """The first model picked for `role`, if any."""
        return next((m for m in self.models if m.role == role), None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NightlyResult:
        models = [ModelEval(**{**m, "samples": {t: [SampleScore(**s) for s in ss] for t, ss in m["samples"].items()}})
                  for m in d.get("models", [])]
        return cls(
            date=d["date"], suite=d["suite"], registered_model=d["registered_model"], models=models,
            gates=[GateResult(**g) for g in d.get("gates", [])],
            trends={k: [TrendPoint(**p) for p in v] for k, v in d.get("trends", {}).items()},
            worst_samples=[WorstSample(**w) for w in d.get("worst_samples", [])],
            regression=d.get("regression", False), promoted=d.get("promoted", False), notes=list(d.get("notes", [])),
            confidence=d.get("confidence", 0.95), nightly_run_id=d.get("nightly_run_id"),
            verdict=d.get("verdict") or ("no_go" if d.get("regression") else "inconclusive"),
            reasons=list(d.get("reasons", [])), policy=list(d.get("policy", [])),
            normalizers=dict(d.get("normalizers", {})),
        )
