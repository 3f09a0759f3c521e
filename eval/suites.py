"""Evaluation suites: fixed held-out sets, a task type and metrics per task, generation settings.

A suite is a YAML file (eval/suites/*.yaml)::

    name: medical_speech
    language: ko                       # ko (default) | en: CER/WER use this language's normaliser
    generation: {max_new_tokens: 48, batch_size: 8}
    sample_limit: 500
    tasks:
      - name: asr
        type: asr                      # asr | speech_qa | text_qa | classification
        data: ../../data/sample/asr_val.jsonl
        metrics: [cer, wer]
        thresholds: {cer: 0.01, wer: "5%"}   # allowed worsening before a nightly gate fails (units or % of baseline)
        tiers: {wer: supporting}       # critical (default) | supporting | advisory: see docs/nightly.md

The language picks the text normaliser of CER and WER (sllm_lib.metrics.language: Korean
"korean-v1", CER without spaces; English "whisper-english-v1", Whisper's published rules, CER with
spaces); every CER/WER number is labelled with it (`Suite.normalizers()`, MLflow tags, the nightly
report). Other metrics do not depend on it.

Data paths resolve against the suite file's folder. Loading checks names against the metric
registry, so a typo fails at `sllm validate`/`plan` time, never after an hour of generation.
No heavy imports.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from sllm_lib.errors import JobSpecError
from sllm_lib.metrics.language import DEFAULT_LANGUAGE, LANGUAGES, Language
from sllm_lib.metrics.registry import DEFAULT_METRICS
from sllm_lib.spec import GateTier, GenerationSpec, Strict, Threshold, raise_problems, read_yaml, validation_problems

TaskType = Literal["asr", "speech_qa", "text_qa", "classification"]

RECORD_KIND: dict[str, str] = {"asr": "asr", "speech_qa": "speech_qa", "text_qa": "text_qa",
                               "classification": "text_qa"}
"""Record kind each task type reads (classification: text_qa records whose output is the label)."""

class GenerationOverride(Strict):
    max_new_tokens: int | None = Field(default=None, gt=0, le=4096)
    batch_size: int | None = Field(default=None, gt=0)
    do_sample: bool | None = None
    temperature: float | None = Field(default=None, gt=0)


class SuiteTask(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Task name (metric keys are task/metric).")
    type: TaskType
    data: str = Field(description="JSONL held-out set; relative to the suite file.")
    metrics: list[str] | None = Field(default=None, min_length=1, description="Default per type: see DEFAULT_METRICS.")
    metric_options: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                      description="Per-metric settings, e.g. rougeL: {tokenizer: morph}.")
    labels: list[str] | None = Field(default=None, min_length=2, description="Allowed labels (classification).")
    sample_limit: int | None = Field(default=None, gt=0)
    generation: GenerationOverride = Field(default_factory=GenerationOverride)
    thresholds: dict[str, Threshold] = Field(
        default_factory=dict, description="metric -> allowed worsening: metric units (>= 0) or '5%' of the baseline.")
    tiers: dict[str, GateTier] = Field(default_factory=dict,
                                       description="metric -> gate tier (critical, supporting, advisory).")

    @model_validator(mode="after")
    def _check(self) -> SuiteTask:
        if self.type == "classification" and not self.labels:
            raise ValueError("a classification task needs labels: [..] (the allowed answers)")
        if self.type != "classification" and self.labels:
            raise ValueError(f"labels apply to classification tasks only (this task is {self.type})")
        return self

    @property
    def record_kind(self) -> str:
        return RECORD_KIND[self.type]

    def metric_names(self) -> list[str]:
        return list(self.metrics or DEFAULT_METRICS[self.type])

    def generation_for(self, base: GenerationSpec) -> GenerationSpec:
        over = {k: v for k, v in self.generation.model_dump().items() if v is not None}
        return base.model_copy(update=over)


class Suite(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    language: Language = Field(default=DEFAULT_LANGUAGE, description=(
        f"Language of the references ({', '.join(LANGUAGES)}): CER/WER use its text normaliser."))
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    sample_limit: int | None = Field(default=None, gt=0, description="Per-task default sample limit.")
    tasks: list[SuiteTask] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Suite:
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate task name(s) {dup}")
        return self

    def limit_for(self, task: SuiteTask, override: int | None = None) -> int | None:
        return override or task.sample_limit or self.sample_limit

    def normalizers(self) -> dict[str, str]:
        """"task/metric" -> the label of the text normaliser behind that number, for the metrics that have one
        (CER, WER): "korean-v1", "whisper-english-v1", with any settings the task's metric_options change."""
        from sllm_lib.metrics.registry import metric_normalizer

        out: dict[str, str] = {}
        for t in self.tasks:
            for m in t.metric_names():
                label = metric_normalizer(m, language=self.language, options=t.metric_options.get(m))
                if label is not None:
                    out[f"{t.name}/{m}"] = label
        return out

    def digest(self) -> str:
        """Content hash of the suite's settings and of every dataset file's bytes (eval reuse key)."""
        settings = self.model_dump(mode="json")
        if settings["language"] == DEFAULT_LANGUAGE:  # a suite written before languages existed keeps its digest
            del settings["language"]
        for t in settings["tasks"]:  # a suite written before tiers existed keeps its digest (and its reusable evals)
            if not t["tiers"]:
                del t["tiers"]
        h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for t in self.tasks:
            with open(t.data, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()


def _metric_problems(suite: Suite) -> list[str]:
    from sllm_lib.metrics.registry import METRIC_SPECS, metric_normalizer

    problems = []
    for i, t in enumerate(suite.tasks):
        for m in t.metric_names():
            if m not in METRIC_SPECS:
                problems.append(f"tasks[{i}].metrics: unknown metric {m!r} (valid: {', '.join(sorted(METRIC_SPECS))})")
            elif METRIC_SPECS[m].needs == "labels" and t.type != "classification":
                problems.append(f"tasks[{i}].metrics: {m!r} needs labels; only classification tasks have them")
        for k in [*t.thresholds, *t.metric_options, *t.tiers]:
            if k not in t.metric_names():
                problems.append(f"tasks[{i}]: settings for {k!r}, which is not among this task's metrics")
        for k in t.tiers:
            if k in t.metric_names() and k not in t.thresholds:
                problems.append(f"tasks[{i}].tiers: {k!r} has a tier but no threshold; only thresholded metrics "
                                f"are gated (add thresholds: {{{k}: 0.0}} to gate it)")
        for m, opts in t.metric_options.items():
            if m in METRIC_SPECS and m in t.metric_names():
                try:
                    metric_normalizer(m, language=suite.language, options=opts)
                except ValueError as exc:
                    problems.append(f"tasks[{i}].metric_options.{m}: {exc}")
        if not Path(t.data).is_file():
            problems.append(f"tasks[{i}].data: no such file {t.data}")
    return problems


def load_suite(path: str | Path) -> Suite:
    """Load and validate a suite YAML; data paths become absolute.

    Raises:
        JobSpecError: listing every problem with the file and the field.
    """
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise JobSpecError(f"{path}: expected a mapping with name and tasks (got {type(raw).__name__})")
    for t in raw.get("tasks") or []:
        if isinstance(t, dict) and isinstance(t.get("data"), str) and t["data"]:
            p = Path(t["data"]).expanduser()
            t["data"] = str(p if p.is_absolute() else (path.parent.resolve() / p).resolve())
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        raise_problems(str(path), validation_problems(exc, Suite))
    problems = _metric_problems(suite)
    if problems:
        raise_problems(str(path), problems)
    return suite


def find_suite(name_or_path: str) -> Path:
    """A suite path as given, or a shipped suite by name (eval/suites/<name>.yaml)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise JobSpecError(f"suite {name_or_path}: no such file")
        return p
    shipped = Path(__file__).resolve().parent / "suites" / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(x.stem for x in shipped.parent.glob("*.yaml"))
    raise JobSpecError(f"suite {name_or_path!r}: not a file and not a shipped suite (shipped: {', '.join(names)})")
