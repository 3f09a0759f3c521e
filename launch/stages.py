"""The stage registry: stage kind -> stage function. Every stage is `fn(stage_spec, ctx) -> StageResult`.

It lives in `launch`, the one layer that sees both the training stages (sllm_lib) and the evaluation stages
(eval)."""

from __future__ import annotations

import logging
from typing import Any, Callable

from sllm_lib.stage import StageContext, StageResult

log = logging.getLogger(__name__)


def run_text_sft(stage: Any, ctx: StageContext) -> StageResult:
    """Stage 1: LoRA on the LLM with text QA; the audio tower stays frozen."""
    from sllm_lib.training.runner import run_training_stage

    return run_training_stage(stage, ctx)


def run_asr_adapter(stage: Any, ctx: StageContext) -> StageResult:
    """Stage 2: from stage 1's adapter, train the projector (and optionally an LLM LoRA) on ASR."""
    from sllm_lib.training.runner import run_training_stage

    return run_training_stage(stage, ctx)


def run_multitask(stage: Any, ctx: StageContext) -> StageResult:
    """Stage 3: ASR + speech QA + text QA mixture by weight; projector + LLM LoRA."""
    from sllm_lib.training.runner import run_training_stage

    return run_training_stage(stage, ctx)


def run_causal_sft(stage: Any, ctx: StageContext) -> StageResult:
    """A text-only causal LM on text QA through its chat template (e.g. medical QA QLoRA)."""
    from sllm_lib.training.runner import run_training_stage

    return run_training_stage(stage, ctx)


def run_distill(stage: Any, ctx: StageContext) -> StageResult:
    """Distill a teacher causal LM into the job's model (KL on softened logits + CE)."""
    from sllm_lib.training.runner import run_training_stage

    return run_training_stage(stage, ctx)


def run_vision_sft(stage: Any, ctx: StageContext) -> StageResult:
    """LoRA (and projector) on a vision-language model: images + persona + context -> interpretation."""
    from sllm_lib.training.runner import run_training_stage

    return run_training_stage(stage, ctx)


def run_merge(stage: Any, ctx: StageContext) -> StageResult:
    """Merge the adapter chain into the base; log and register the model."""
    from sllm_lib.training.merge import run_merge as merge

    return merge(stage, ctx)


def run_prune(stage: Any, ctx: StageContext) -> StageResult:
    """Magnitude-prune the upstream model folder; publish (and register) the pruned model."""
    from sllm_lib.training.prune import run_prune as prune

    return prune(stage, ctx)


def run_quantize(stage: Any, ctx: StageContext) -> StageResult:
    """Quantize the upstream model folder (dynamic int8 / bitsandbytes) and report it against a baseline."""
    from sllm_lib.training.quantize import run_quantize as quantize

    return quantize(stage, ctx)


def run_eval(stage: Any, ctx: StageContext) -> StageResult:
    """Generate on held-out sets and score them."""
    from eval.stage import run_eval as evaluate

    return evaluate(stage, ctx)


def run_suite_eval(stage: Any, ctx: StageContext) -> StageResult:
    """Score one model (folder, registry version or merge run) on an evaluation suite."""
    from eval.suite_stage import run_suite_eval as evaluate

    return evaluate(stage, ctx)


def run_nightly_eval(stage: Any, ctx: StageContext) -> StageResult:
    """Registry candidate vs champion on a suite: gates, HTML report, optional promotion."""
    from eval.nightly import run_nightly

    return run_nightly(stage, ctx)


STAGE_FUNCTIONS: dict[str, Callable[[Any, StageContext], StageResult]] = {
    "text_sft": run_text_sft,
    "asr_adapter": run_asr_adapter,
    "multitask": run_multitask,
    "causal_sft": run_causal_sft,
    "distill": run_distill,
    "vision_sft": run_vision_sft,
    "merge": run_merge,
    "prune": run_prune,
    "quantize": run_quantize,
    "eval": run_eval,
    "suite_eval": run_suite_eval,
    "nightly_eval": run_nightly_eval,
}
