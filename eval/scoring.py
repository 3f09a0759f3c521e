"""Score one model on a suite: batched generation, metrics and sample-level scores, with progress.

Shared by `sllm eval` (the `suite_eval` stage) and the nightly job; the model comes from
`sllm_lib.models.refs` (folder, registry reference, merge run id).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from eval.results import SampleScore
from eval.suites import Suite, SuiteTask

log = logging.getLogger(__name__)


class _Progress:
    """A rich progress bar on a terminal; one status line per interval otherwise (logs, SLURM)."""

    def __init__(self, total: int, label: str, interval_s: float = 10.0) -> None:
        self.total, self.label, self.interval_s = total, label, interval_s
        self.done = 0
        self.t0 = self.last = time.perf_counter()
        self.bar: Any = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total)

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, advance=n)
            return
        now = time.perf_counter()
        if now - self.last >= self.interval_s or self.done >= self.total:
            self.last = now
            log.info("%s: %d/%d samples, %.2f samples/s", self.label, self.done, self.total,
                     self.done / max(now - self.t0, 1e-9))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def score_task(task: SuiteTask, suite: Suite, *, model: Any, tokenizer: Any, features: Any, chat: Any,
               sample_limit: int | None = None) -> tuple[dict[str, float], list[SampleScore], float]:
    """Generate for every sample of one task and score it; (metrics, samples, seconds of generation)."""
    from sllm_lib.data.encode import encode_records
    from sllm_lib.data.records import read_records
    from sllm_lib.metrics.registry import compute_metrics

    data = read_records(task.data, task.record_kind, on_bad_record="fail")
    limit = suite.limit_for(task, sample_limit)
    records = data.records[:limit] if limit else data.records
    gen = task.generation_for(suite.generation)
    if chat is None:  # a Whisper model: its own decoder transcribes
        return _score_whisper_task(task, suite, records, model=model, tokenizer=tokenizer, features=features, gen=gen)
    examples = encode_records(records, task.record_kind, tokenizer=tokenizer, chat=chat, feature_extractor=features,
                              max_seq_len=10**9, with_target=False)
    from sllm_lib.scoring import generate_texts

    progress = _Progress(len(examples), f"{suite.name}/{task.name}")
    t0 = time.perf_counter()
    try:
        hyps = generate_texts(model, examples, tokenizer=tokenizer, chat=chat, gen=gen, on_batch=progress.advance)
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    refs = [e.target for e in examples]
    results = compute_metrics(task.metric_names(), refs, hyps, labels=task.labels, options=task.metric_options,
                              language=suite.language)
    return (*_scored(records, refs, hyps, results), seconds)


def _scored(records: list[dict], refs: list[str], hyps: list[str],
            results: dict[str, Any]) -> tuple[dict[str, float], list[SampleScore]]:
    """The task's metrics and each sample's reference, prediction and per-sample scores."""
    samples = [SampleScore(id=str(r.get("id") or f"{i:05d}"), reference=ref, prediction=hyp,
                           scores={n: float(res.per_sample[i]) for n, res in results.items()
                                   if len(res.per_sample) == len(refs)})
               for i, (r, ref, hyp) in enumerate(zip(records, refs, hyps))]
    return {n: float(res.score) for n, res in results.items()}, samples


def _score_whisper_task(task: SuiteTask, suite: Suite, records: list[dict], *, model: Any, tokenizer: Any,
                        features: Any, gen: Any) -> tuple[dict[str, float], list[SampleScore], float]:
    from sllm_lib.data.encode import target_text
    from sllm_lib.metrics.registry import compute_metrics
    from sllm_lib.scoring import transcribe_whisper

    progress = _Progress(len(records), f"{suite.name}/{task.name}")
    t0 = time.perf_counter()
    try:
        hyps = transcribe_whisper(model, tokenizer, features, records, language=suite.language, gen=gen,
                                  on_batch=progress.advance)
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    refs = [target_text(r, "asr") for r in records]
    results = compute_metrics(task.metric_names(), refs, hyps, labels=task.labels, options=task.metric_options,
                              language=suite.language)
    return (*_scored(records, refs, hyps, results), seconds)


def whisper_task_problems(suite: Suite, model_label: str) -> list[str]:
    """Why a Whisper model cannot score this suite: it transcribes, so every task must be an ASR task."""
    others = [f"{t.name} ({t.type})" for t in suite.tasks if t.type != "asr"]
    if not others:
        return []
    return [f"model {model_label} is a Whisper speech recognizer: it scores asr tasks only, and suite "
            f"{suite.name} also has {', '.join(others)}; use a suite of asr tasks (e.g. one task of this suite in "
            f"its own YAML) for a Whisper baseline"]


def score_suite(model: Any, tokenizer: Any, features: Any, suite: Suite, *,
                sample_limit: int | None = None) -> tuple[dict[str, float], dict[str, list[SampleScore]], float]:
    """Every task of the suite: ("task/metric" -> score, task -> samples, samples per second of generation)."""
    from sllm_lib.errors import JobSpecError
    from sllm_lib.models.builders import chat_for, is_whisper_model

    if is_whisper_model(model.config):
        problems = whisper_task_problems(suite, getattr(model, "name_or_path", "") or "the model")
        if problems:
            raise JobSpecError(problems[0])
        chat = None
    else:
        chat = chat_for(tokenizer, model.config, system_prompt=getattr(model, "sllm_system_prompt", None))
    metrics: dict[str, float] = {}
    samples: dict[str, list[SampleScore]] = {}
    n, seconds = 0, 0.0
    for task in suite.tasks:
        scores, task_samples, secs = score_task(task, suite, model=model, tokenizer=tokenizer, features=features,
                                                chat=chat, sample_limit=sample_limit)
        metrics.update({f"{task.name}/{k}": v for k, v in scores.items()})
        samples[task.name] = task_samples
        n += len(task_samples)
        seconds += secs
        log.info("%s/%s: %s", suite.name, task.name, " | ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return metrics, samples, n / seconds if seconds > 0 else 0.0
