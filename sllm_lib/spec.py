"""Job specs and cluster profiles: pydantic v2 models, strict loading, overrides and a canonical hash.

A spec is validated once, here, into frozen typed objects; everything after `load_job_spec` takes those.
Importing this module must stay cheap (no torch): `sllm validate` uses it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
import typing
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sllm_lib.deepspeed_config import stage_config_problems
from sllm_lib.errors import JobSpecError

log = logging.getLogger(__name__)

RecordKind = Literal["text_qa", "asr", "speech_qa", "classification", "vision"]
TrainableGroup = Literal["lora", "projector", "audio_encoder", "llm"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------- pieces


class DatasetRef(_Strict):
    kind: RecordKind = Field(description="Record type of the JSONL file: text_qa, asr, speech_qa or classification.")
    path: str = Field(description="JSONL file; relative paths are resolved against the spec file's folder.")
    weight: float = Field(default=1.0, gt=0, description="Sampling weight in a multitask mixture.")
    on_bad_record: Literal["fail", "skip"] = Field(
        default="fail", description="fail: stop on the first bad file; skip: drop bad records, count and log them."
    )
    max_records: int | None = Field(default=None, gt=0, description="Use only the first N records.")
    task: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                             description="classification: the task's name (metric prefix); default the file's stem.")
    labels: list[str] | None = Field(default=None, description="classification: the label set; a record with "
                                                                "another label is a bad line.")
    prompt: str | None = Field(default=None, description="classification: the instruction, with {text} (the record's "
                                                          "text) and optionally {labels} (the label set, comma-separated).")

    @model_validator(mode="after")
    def _classification_fields(self) -> DatasetRef:
        if self.kind != "classification":
            extra = [n for n in ("task", "labels", "prompt") if getattr(self, n) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)}: only for kind classification (this dataset is {self.kind})")
            return self
        if not self.labels or len(self.labels) < 2:
            raise ValueError("classification needs labels: the label set (at least 2)")
        if len(set(self.labels)) != len(self.labels) or any(not str(x).strip() for x in self.labels):
            raise ValueError(f"labels must be distinct non-empty strings (got {self.labels})")
        if not self.prompt or "{text}" not in self.prompt:
            raise ValueError("classification needs prompt: an instruction containing {text}")
        try:
            self.prompt.format(text="x", labels="a, b")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"prompt: only {{text}} and {{labels}} may appear in braces (double other braces: "
                             f"{{{{ }}}}); got {exc!r}") from None
        return self

    @property
    def task_name(self) -> str:
        """The name results are reported under: the task, else the file's stem."""
        return self.task or Path(self.path).stem

    def instruction(self, record: dict[str, Any]) -> str:
        """A classification record's prompt (its text and the label set filled into the template)."""
        assert self.prompt is not None and self.labels is not None
        return self.prompt.format(text=record["text"], labels=", ".join(self.labels))


class DataSpec(_Strict):
    train: list[DatasetRef] = Field(min_length=1, description="Training datasets (mixed by weight).")
    val: list[DatasetRef] = Field(default_factory=list, description="Validation datasets (loss only).")


class LoraSpec(_Strict):
    r: int = Field(default=16, gt=0, le=1024, description="LoRA rank.")
    alpha: int = Field(default=32, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="LoRA dropout.")
    targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Linear layer names inside the language model that get LoRA adapters.",
    )


class QuantSpec(_Strict):
    bits: Literal[4, 8, "none"] = Field(default="none", description="Weight quantization of the frozen base.")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(default=True, description="Quantize the 4-bit quantization constants too.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(default="bfloat16")
    storage_dtype: Literal["uint8", "bfloat16", "float16", "float32"] | None = Field(
        default=None,
        description="Dtype the packed 4-bit weights are stored in; default: the compute dtype (what ZeRO-3 needs to "
                    "partition them like any other weight); uint8 is bitsandbytes' own default.")

    @property
    def storage(self) -> str:
        """The effective 4-bit storage dtype."""
        return self.storage_dtype or self.compute_dtype


class DeepSpeedSpec(_Strict):
    """DeepSpeed ZeRO for a training stage; sllm writes the DeepSpeed config from these fields."""

    stage: Literal[0, 1, 2, 3] = Field(default=2, description="ZeRO stage: 1 shards optimizer states, 2 also "
                                                              "gradients, 3 also the weights.")
    offload_optimizer: Literal["none", "cpu"] = Field(
        default="none", description="Keep optimizer states (and the update) on the CPU (DeepSpeed's CPU Adam).")
    offload_params: Literal["none", "cpu"] = Field(default="none", description="ZeRO-3 only: keep weights on the CPU.")
    pin_memory: bool = Field(default=True, description="Pinned host memory for offloaded tensors.")
    overlap_comm: bool = Field(default=True, description="Overlap gradient reduction with the backward pass.")
    contiguous_gradients: bool = True
    reduce_bucket_size: int | Literal["auto"] = Field(default="auto", description="Elements per reduce bucket.")
    allgather_bucket_size: int = Field(default=200_000_000, gt=0, description="ZeRO-1/2: elements per all-gather.")
    stage3_prefetch_bucket_size: int | Literal["auto"] = "auto"
    stage3_param_persistence_threshold: int | Literal["auto"] = "auto"
    stage3_max_live_parameters: int = Field(default=1_000_000_000, gt=0)
    gather_16bit_weights_on_save: bool = Field(
        default=True, description="ZeRO-3: gather full weights when saving (else adapters are saved as empty tensors).")
    config_file: str | None = Field(
        default=None, description="An explicit DeepSpeed JSON config; it overrides the generated one (its 'auto' "
                                  "values are still filled from the stage's batch settings). Relative to the spec.")

    @field_validator("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if v != "auto" and v <= 0:
            raise ValueError(f"expected 'auto' or a positive number of elements, got {v}")
        return v

    @model_validator(mode="after")
    def _offload_fits_stage(self) -> DeepSpeedSpec:
        if self.offload_params != "none" and self.stage != 3:
            raise ValueError(f"offload_params needs stage 3 (ZeRO-{self.stage} keeps whole weights on every GPU)")
        if self.offload_optimizer != "none" and self.stage == 0:
            raise ValueError("offload_optimizer needs stage 1, 2 or 3 (ZeRO-0 does not partition the optimizer)")
        return self


class TrainSpec(_Strict):
    per_device_bsz: int = Field(default=1, gt=0, description="Micro-batch size per device.")
    grad_accum: int = Field(default=1, gt=0, description="Gradient accumulation steps.")
    epochs: float | None = Field(default=None, gt=0, description="Epochs (ignored when max_steps is set).")
    max_steps: int | None = Field(default=None, gt=0, description="Optimizer steps; wins over epochs.")
    lr: float = Field(default=2e-4, gt=0, lt=1, description="Peak learning rate.")
    warmup_steps: int = Field(default=0, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(default=0.0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    max_grad_norm: float = Field(default=1.0, gt=0)
    seed: int = Field(default=42, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = Field(default="bf16", description="bf16/fp16 fall back to fp32 on CPU.")
    gradient_checkpointing: bool = False
    save_steps: int = Field(default=50, gt=0, description="Write a resumable checkpoint every N optimizer steps.")
    save_total_limit: int = Field(default=2, gt=0, description="Complete checkpoints kept per stage.")
    logging_steps: int = Field(default=5, gt=0, description="One status line and one tracker write every N steps.")
    group_by_length: bool = Field(default=True, description="Length-grouped batches (less padding).")
    max_seq_len: int = Field(default=2048, gt=0, description="Longer examples are truncated (audio tokens kept).")

    @model_validator(mode="after")
    def _has_length(self) -> TrainSpec:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set epochs or max_steps")
        if self.max_steps is not None and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < max_steps ({self.max_steps})")
        return self


class GenerationSpec(_Strict):
    max_new_tokens: int = Field(default=64, gt=0, le=4096)
    batch_size: int = Field(default=4, gt=0)
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0)


# --------------------------------------------------------------------------------------------- stages


class _StageBase(_Strict):
    # What a stage kind is, as class-level facts. The planner, the executors and the workers ask these (never a
    # list of kind names); a new kind states its own. docs/design.md, "Adding a stage kind".
    trains: ClassVar[bool] = False
    """Trains parameters on every rank (N processes); its adapter / modules chain into later stages."""
    needs_base_model: ClassVar[bool] = False
    """Loads the job's `model.base` (so `model:` is required)."""
    output: ClassVar[Literal["adapter", "model_folder", "scores"]] = "scores"
    """What its output/ holds: an adapter chain link, a whole model folder, or only scores (no model)."""
    upstream_kinds: ClassVar[tuple[str, ...] | None] = None
    """The kinds its `from_stage` may be (None: any that produces a model)."""
    reads_audio: ClassVar[bool] = False
    """May read audio features: the worker activates the job's feature cache for it."""
    scores_datasets: ClassVar[bool] = False
    """Generates on its `datasets:` and scores them (their metrics are checked before submission)."""
    scores_suite: ClassVar[bool] = False
    """Scores a model on an evaluation suite (reads the suite's files and the model registry)."""
    model_family: ClassVar[Literal["speech", "causal", "vision"] | None] = None
    """The architecture a training stage needs: the speech LLM, a text-only causal LM, or a VLM."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Unique stage name.")
    from_stage: str | None = Field(
        default=None, description="Upstream stage whose output (adapter chain or merged model) this stage starts from."
    )
    depends_on: list[str] = Field(default_factory=list, description="Extra upstream stages (ordering only).")

    def upstream(self) -> list[str]:
        """All stage names this stage waits for: from_stage first, then depends_on."""
        names = [self.from_stage] if self.from_stage else []
        return names + [d for d in self.depends_on if d not in names]

    @classmethod
    def kind_name(cls) -> str:
        """The `kind:` value of this stage model."""
        return cls.model_fields["kind"].annotation.__args__[0]

    def input_datasets(self) -> list[DatasetRef]:
        """The dataset files this stage reads (train + val, or the datasets it scores); [] for none."""
        return list(getattr(self, "datasets", None) or [])


class _TrainStageBase(_StageBase):
    trains: ClassVar[bool] = True
    needs_base_model: ClassVar[bool] = True
    output: ClassVar[Literal["adapter", "model_folder", "scores"]] = "adapter"
    _data_kind: ClassVar[str | tuple[str, ...] | None] = None  # the record kind(s) a single-task stage accepts
    data: DataSpec
    train: TrainSpec
    lora: LoraSpec | None = Field(default=None, description="New LoRA adapter on the LLM; None trains no LoRA.")
    quant: QuantSpec = Field(default_factory=QuantSpec)
    deepspeed: DeepSpeedSpec | None = Field(default=None, description="Train with DeepSpeed ZeRO (None: plain DDP).")
    trainable: list[TrainableGroup] = Field(description="Parameter groups trained in this stage.")

    @model_validator(mode="after")
    def _trainable_consistent(self) -> _TrainStageBase:
        if "lora" in self.trainable and self.lora is None:
            raise ValueError("trainable contains 'lora' but the stage has no lora block")
        if self.lora is not None and "lora" not in self.trainable:
            raise ValueError("a lora block is set but 'lora' is not in trainable")
        if self.quant.bits != "none" and {"llm", "audio_encoder"} & set(self.trainable):
            raise ValueError("full 'llm'/'audio_encoder' training cannot run on a quantized base; use lora")
        ds, q = self.deepspeed, self.quant
        if ds is not None and ds.stage == 3 and q.bits == 8:
            raise ValueError("quant.bits 8 with deepspeed.stage 3 is not supported: ZeRO-3 cannot partition "
                             "bitsandbytes 8-bit weights (their scales live outside the tensor); use bits 4 or stage 2")
        if ds is not None and ds.stage == 3 and q.bits == 4 and q.storage != q.compute_dtype:
            raise ValueError(f"quant.storage_dtype {q.storage!r} must equal quant.compute_dtype {q.compute_dtype!r} "
                             f"under deepspeed.stage 3 (ZeRO-3 partitions the packed 4-bit weights as tensors of "
                             f"that dtype)")
        if ds is not None and ds.offload_params != "none" and q.bits != "none":
            raise ValueError("deepspeed.offload_params cannot move bitsandbytes-quantized weights to the CPU; "
                             "use offload_optimizer, or quant.bits none")
        return self

    def input_datasets(self) -> list[DatasetRef]:
        return [*self.data.train, *self.data.val]

    @field_validator("data")
    @classmethod
    def _one_record_kind(cls, v: DataSpec) -> DataSpec:
        want = cls._data_kind
        allowed = (want,) if isinstance(want, str) else want
        for ref in [*v.train, *v.val]:
            if allowed is not None and ref.kind not in allowed:
                kind = cls.model_fields["kind"].annotation.__args__[0]
                raise ValueError(f"{kind} takes {' or '.join(allowed)} datasets only (got {ref.kind!r} for {ref.path})")
        return v


class TextSftStage(_TrainStageBase):
    kind: Literal["text_sft"]
    model_family: ClassVar[Literal["speech", "causal", "vision"] | None] = "speech"
    trainable: list[TrainableGroup] = Field(default_factory=lambda: ["lora"])
    _data_kind: ClassVar[str] = "text_qa"


class AsrAdapterStage(_TrainStageBase):
    kind: Literal["asr_adapter"]
    model_family: ClassVar[Literal["speech", "causal", "vision"] | None] = "speech"
    reads_audio: ClassVar[bool] = True
    trainable: list[TrainableGroup] = Field(default_factory=lambda: ["projector"])
    _data_kind: ClassVar[str] = "asr"


class MultitaskStage(_TrainStageBase):
    kind: Literal["multitask"]
    model_family: ClassVar[Literal["speech", "causal", "vision"] | None] = "speech"
    reads_audio: ClassVar[bool] = True
    trainable: list[TrainableGroup] = Field(default_factory=lambda: ["projector", "lora"])
    _data_kind: ClassVar[tuple[str, ...]] = ("text_qa", "asr", "speech_qa")


class CausalSftStage(_TrainStageBase):
    """Supervised fine-tuning of a text-only causal LM (e.g. an instruct model on medical QA) through the
    tokenizer's chat template; loss on the answer only."""

    kind: Literal["causal_sft"]
    model_family: ClassVar[Literal["speech", "causal", "vision"] | None] = "causal"
    trainable: list[TrainableGroup] = Field(default_factory=lambda: ["lora"])
    system_prompt: str | None = Field(
        default=None, description="System turn put before every question (the chat template's system role); "
                                  "evaluation of this model's merge uses the same one.")
    _data_kind: ClassVar[tuple[str, ...]] = ("text_qa", "classification")

    @model_validator(mode="after")
    def _text_groups_only(self) -> CausalSftStage:
        bad = [g for g in self.trainable if g in ("projector", "audio_encoder")]
        if bad:
            raise ValueError(f"trainable {bad}: a text-only causal LM has no audio parts (use lora and/or llm)")
        return self


class DistillStage(CausalSftStage):
    """Knowledge distillation into the job's model (the student) from a teacher causal LM: KL divergence between
    temperature-softened teacher and student distributions on the answer tokens, plus the usual cross-entropy."""

    kind: Literal["distill"]  # type: ignore[assignment]
    teacher: str = Field(description="The teacher: a model folder, models:/NAME@ALIAS (or NAME@ALIAS, "
                                     "models:/NAME/VERSION), a merge run id, tiny:<preset> or a hub id.")
    teacher_trust_remote_code: bool = False
    alpha: float = Field(default=0.5, ge=0, le=1, description="Weight of the distillation (KL) term; 1 - alpha "
                                                              "weights the cross-entropy on the labels.")
    temperature: float = Field(default=2.0, gt=0, le=100, description="Softening of both distributions (KL is "
                                                                      "scaled by T^2).")
    trainable: list[TrainableGroup] = Field(default_factory=lambda: ["llm"],
                                            description="llm: the whole student (default); lora: adapters only.")


VISION_PROMPT = ("[사용자] {persona}\n[상황] {context}\n{instruction}")
VISION_INSTRUCTION = "그림 카드가 전하려는 뜻을 사용자의 입장에서 한 문장으로 해석하세요."


class VisionSftStage(_TrainStageBase):
    """LoRA on a vision-language model (AAC card interpretation): images, a persona and context rendered into the
    prompt, loss on the target interpretation only."""

    kind: Literal["vision_sft"]
    model_family: ClassVar[Literal["speech", "causal", "vision"] | None] = "vision"
    trainable: list[TrainableGroup] = Field(default_factory=lambda: ["lora"])
    prompt: str = Field(default=VISION_PROMPT, description="Prompt after the images: {persona} (key: value, ...), "
                                                          "{context} and {instruction} are filled from each record.")
    default_instruction: str = Field(default=VISION_INSTRUCTION, description="For records without instruction.")
    _data_kind: ClassVar[tuple[str, ...]] = ("vision",)

    @model_validator(mode="after")
    def _prompt_and_groups(self) -> VisionSftStage:
        try:
            self.prompt.format(persona="p", context="c", instruction="i")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"prompt: only {{persona}}, {{context}} and {{instruction}} may appear in braces "
                             f"(got {exc!r})") from None
        if "audio_encoder" in self.trainable:
            raise ValueError("trainable 'audio_encoder': a vision-language model has no audio encoder")
        return self

    def render(self, record: dict[str, Any]) -> str:
        """The text after the image placeholders for one record."""
        return render_vision_prompt(record, prompt=self.prompt, default_instruction=self.default_instruction)


def render_vision_prompt(record: dict[str, Any], *, prompt: str = VISION_PROMPT,
                         default_instruction: str = VISION_INSTRUCTION) -> str:
    """A vision record's persona (key: value, ...), context and instruction filled into the prompt template."""
    persona = ", ".join(f"{k}: {v}" for k, v in (record.get("persona") or {}).items()) or "-"
    return prompt.format(persona=persona, context=record.get("context") or "-",
                         instruction=record.get("instruction") or default_instruction)


class RegisterSpec(_Strict):
    name: str = Field(min_length=1, description="Registered model name in the MLflow model registry.")
    alias: str = Field(default="candidate", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")


class MergeStage(_StageBase):
    kind: Literal["merge"]
    needs_base_model: ClassVar[bool] = True
    output: ClassVar[Literal["adapter", "model_folder", "scores"]] = "model_folder"
    dtype: Literal["float32", "bfloat16", "float16"] = Field(default="bfloat16", description="Saved weight dtype.")
    register_as: RegisterSpec | None = Field(default=None, description="Register the merged model (None: log only).")

    @model_validator(mode="after")
    def _needs_input(self) -> MergeStage:
        if not self.from_stage:
            raise ValueError("merge needs from_stage (the last training stage)")
        return self


DEFAULT_PRUNE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class PruneStage(_StageBase):
    """Magnitude pruning of a merged model's Linear weights (unstructured or N:M), made permanent and verified."""

    kind: Literal["prune"]
    output: ClassVar[Literal["adapter", "model_folder", "scores"]] = "model_folder"
    upstream_kinds: ClassVar[tuple[str, ...] | None] = ("merge", "prune")
    pattern: str = Field(default="unstructured", pattern=r"^(unstructured|[1-9][0-9]*:[1-9][0-9]*)$",
                         description="unstructured, or N:M (keep N of every M consecutive weights, e.g. 2:4).")
    sparsity: float | None = Field(default=None, gt=0, lt=1,
                                   description="Unstructured: share of each matrix zeroed (default 0.25); N:M sets it.")
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_PRUNE_TARGETS), min_length=1,
                               description="Linear layer names (inside the LLM) that are pruned.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(default="bfloat16", description="Saved weight dtype.")
    register_as: RegisterSpec | None = Field(default=None, description="Register the pruned model (None: log only).")

    @model_validator(mode="after")
    def _pattern_and_input(self) -> PruneStage:
        if not self.from_stage:
            raise ValueError("prune needs from_stage (a merge or prune stage)")
        nm = self.n_m()
        if nm is not None:
            n, m = nm
            if n >= m:
                raise ValueError(f"pattern {self.pattern}: N must be smaller than M")
            if self.sparsity is not None and abs(self.sparsity - (m - n) / m) > 1e-9:
                raise ValueError(f"sparsity {self.sparsity} contradicts pattern {self.pattern} "
                                 f"(which zeroes {(m - n) / m:g}); leave sparsity unset")
        return self

    def n_m(self) -> tuple[int, int] | None:
        if self.pattern == "unstructured":
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)

    @property
    def target_sparsity(self) -> float:
        nm = self.n_m()
        if nm is not None:
            return (nm[1] - nm[0]) / nm[1]
        return self.sparsity if self.sparsity is not None else 0.25


class EvalDatasetRef(DatasetRef):
    metrics: list[str] | None = Field(
        default=None, description="Metric names; default: cer+wer for asr, accuracy+macro_f1+unparseable_rate for "
                                  "classification, bleu+rouge1/2/L for vision, rougeL+distinct_1+distinct_2 otherwise."
    )
    metric_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per metric options, e.g. {embedding_similarity: {model_path: /models/e5}}.")


class EvalStage(_StageBase):
    kind: Literal["eval"]
    needs_base_model: ClassVar[bool] = True
    reads_audio: ClassVar[bool] = True
    scores_datasets: ClassVar[bool] = True
    datasets: list[EvalDatasetRef] = Field(min_length=1)
    generation: GenerationSpec = Field(default_factory=GenerationSpec)

    @model_validator(mode="after")
    def _needs_input(self) -> EvalStage:
        if not self.from_stage:
            raise ValueError("eval needs from_stage (a merge or training stage)")
        return self


class CompressionTargets(_Strict):
    """The bar a compressed model is held to against its uncompressed baseline (the seed project's targets)."""

    size_reduction: float = Field(default=0.5, ge=0, lt=1, description="Smaller on disk by at least this share.")
    speedup: float = Field(default=2.0, gt=0, description="At least this many times faster per generated token.")
    memory_reduction: float = Field(default=0.7, ge=0, lt=1, description="Model memory smaller by this share.")


class QuantizeStage(_StageBase):
    """Quantize a model folder for serving (dynamic int8 for CPUs, bitsandbytes 8/4-bit for GPUs) and report it
    against an uncompressed baseline: size on disk, memory, CPU ms per token and task quality."""

    kind: Literal["quantize"]
    output: ClassVar[Literal["adapter", "model_folder", "scores"]] = "model_folder"
    upstream_kinds: ClassVar[tuple[str, ...] | None] = ("merge", "prune")
    scores_datasets: ClassVar[bool] = True
    method: Literal["dynamic_int8", "bnb8", "bnb4"] = Field(
        default="dynamic_int8", description="dynamic_int8: torch dynamic int8 Linear layers (CPU serving); "
                                            "bnb8 / bnb4: bitsandbytes LLM.int8() / NF4 (GPU serving).")
    baseline: str | None = Field(default=None, description="The uncompressed model to compare with (folder, "
                                                           "models:/NAME@ALIAS, run id, tiny:<preset> or hub id); "
                                                           "default: this stage's input.")
    datasets: list[EvalDatasetRef] = Field(default_factory=list, description="Task quality, scored for both.")
    generation: GenerationSpec = Field(default_factory=lambda: GenerationSpec())
    report_tokens: int = Field(default=32, gt=0, le=1024, description="Tokens generated per latency measurement.")
    targets: CompressionTargets = Field(default_factory=CompressionTargets)
    register_as: RegisterSpec | None = Field(default=None, description="Register the quantized model.")

    @model_validator(mode="after")
    def _needs_input(self) -> QuantizeStage:
        if not self.from_stage:
            raise ValueError("quantize needs from_stage (a merge or prune stage)")
        return self


class SuiteEvalStage(_StageBase):
    """Score one model on an evaluation suite (eval/suites/*.yaml); `sllm eval` runs exactly this stage."""

    kind: Literal["suite_eval"]
    reads_audio: ClassVar[bool] = True
    scores_suite: ClassVar[bool] = True
    model: str | None = Field(
        default=None,
        description="A merged model folder, models:/NAME@ALIAS, models:/NAME/VERSION, or an MLflow run id of a "
                    "merge stage; default: the output of from_stage (a merge stage).",
    )
    suite: str = Field(description="Suite YAML (eval/suites/...); relative paths resolve against the spec's folder.")
    sample_limit: int | None = Field(default=None, gt=0, description="Override the suite's per-task sample limit.")

    @model_validator(mode="after")
    def _needs_model(self) -> SuiteEvalStage:
        if not self.model and not self.from_stage:
            raise ValueError("suite_eval needs a model (folder, models:/NAME@ALIAS or run id) or a from_stage merge")
        return self


class BootstrapSpec(_Strict):
    resamples: int = Field(default=1000, ge=100, le=100_000, description="Paired bootstrap resamples.")
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="Two-sided confidence level.")
    seed: int = 0


class NightlyEvalStage(_StageBase):
    """Score the registry's candidate (and latest versions) against the champion; gate, report, maybe promote."""

    kind: Literal["nightly_eval"]
    reads_audio: ClassVar[bool] = True
    scores_suite: ClassVar[bool] = True
    suite: str = Field(description="Suite YAML; relative paths resolve against the spec's folder.")
    registered_model: str = Field(min_length=1, description="Registered model name in the MLflow registry.")
    candidate_alias: str = Field(default="candidate", description="Alias of the version under test.")
    champion_alias: str = Field(default="champion", description="Alias of the baseline version.")
    latest_versions: int = Field(default=0, ge=0, le=20,
                                 description="Also score the N newest versions not otherwise picked (reported only).")
    date: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$",
                             description="Nightly date YYYY-MM-DD (UTC); default today. One result per date.")
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Allowed worsening per metric before a gate fails, as 'task/metric' or 'metric' -> amount in "
                    "metric units (e.g. cer: 0.01); overrides the suite's; default 0 (any significant loss).",
    )
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec)
    compare_previous: bool = Field(default=True, description="Also gate against the previous nightly's candidate.")
    promote: bool = Field(default=False, description="Move the champion alias to the candidate when every gate passes.")
    reuse_evals: Literal["same_date", "always", "never"] = Field(
        default="same_date",
        description="Reuse an earlier evaluation of the same model version and suite: same_date (idempotent "
                    "re-runs), always (greedy decoding is deterministic; saves re-scoring the champion), never.",
    )
    trend_nights: int = Field(default=30, ge=1, le=366, description="Past nightlies plotted in the report.")
    worst_samples: int = Field(default=10, ge=0, le=200, description="Worst regressed samples listed in the report.")
    report_dir: str | None = Field(default=None,
                                   description="Also copy report.html/summary.md to <report_dir>/<date>/ "
                                               "(relative to the spec's folder).")

    @field_validator("date", mode="before")
    @classmethod
    def _date_text(cls, v: Any) -> Any:
        import datetime as dt

        return v.isoformat() if isinstance(v, dt.date) else v  # YAML reads a bare 2026-11-20 as a date

    @model_validator(mode="after")
    def _aliases_differ(self) -> NightlyEvalStage:
        if self.candidate_alias == self.champion_alias:
            raise ValueError("candidate_alias and champion_alias must differ")
        return self


STAGE_MODELS: tuple[type[_StageBase], ...] = (
    TextSftStage, AsrAdapterStage, MultitaskStage, CausalSftStage, DistillStage, VisionSftStage, MergeStage,
    PruneStage, QuantizeStage, EvalStage, SuiteEvalStage, NightlyEvalStage,
)
"""Every stage kind's spec model: the one list of kinds (launch/stages.py maps each kind to its function)."""
STAGE_TYPES: dict[str, type[_StageBase]] = {cls.kind_name(): cls for cls in STAGE_MODELS}
StageSpec = Annotated[Union[STAGE_MODELS], Field(discriminator="kind")]
# derived from the stage models' traits (kept as names: the code and users' scripts read them)
TRAIN_KINDS = tuple(kind for kind, cls in STAGE_TYPES.items() if cls.trains)
MODEL_KINDS = tuple(kind for kind, cls in STAGE_TYPES.items() if cls.needs_base_model)
MODEL_FOLDER_KINDS = tuple(kind for kind, cls in STAGE_TYPES.items() if cls.output == "model_folder")


# --------------------------------------------------------------------------------------------- job


class ModelSpec(_Strict):
    base: str = Field(
        description="Base model: 'tiny:<preset>' (random weights from a config, no download), a local path, or a hub id."
    )
    revision: str | None = Field(default=None, description="Hub revision (commit, tag or branch).")
    audio_token_id: int | None = Field(default=None, description="Override; Voxtral's config leaves it None.")
    trust_remote_code: bool = False


class TrackingSpec(_Strict):
    uri: str | None = Field(default=None, description="MLflow tracking URI; default: sqlite file in the output dir.")
    experiment: str | None = Field(default=None, description="MLflow experiment; default: the job name.")
    strict: bool = Field(default=False, description="Fail the stage on a tracking error instead of journaling it.")
    call_timeout_s: float = Field(
        default=5.0, gt=0, le=300,
        description="Longest a training process waits on one tracking call; a slower or failed call goes to the "
                    "run's tracking journal (replayed at stage end or by `sllm tracking sync`).")
    http_timeout_s: int = Field(default=5, gt=0, le=600, description="MLflow client HTTP timeout per request.")
    http_max_retries: int = Field(default=2, ge=1, le=10, description="MLflow client HTTP retries per request.")
    redact: list[str] = Field(
        default_factory=list,
        description="Extra names (spec keys or environment variables) whose values are secret; names that look "
                    "like keys, secrets, tokens or passwords are always redacted.")


class CacheSpec(_Strict):
    """The shared, content-addressed audio-feature cache the audio stages read through."""

    mode: Literal["readwrite", "readonly", "off"] = Field(
        default="readwrite", description="readwrite: read, and write what is missing; readonly: read only "
                                         "(a shared cache built by `sllm cache build`); off: compute on the fly.")
    uri: str | None = Field(default=None, description="A directory, or s3://bucket/prefix (any S3-compatible "
                                                      "store); default <output_dir>/cache.")
    dir: str | None = Field(default=None, description="Deprecated spelling of uri for a local directory.")
    local_dir: str | None = Field(default=None, description="Local disk tier in front of an s3:// cache; "
                                                            "default $SLLM_HOME/feature-cache.")
    local_cap_gb: float | None = Field(default=20.0, gt=0, description="Size cap of the local tier (LRU eviction).")
    endpoint_url: str | None = Field(default=None, description="S3 endpoint (MinIO, Ceph, rclone...); default AWS. "
                                                               "Credentials come from the environment or profile.")
    required: bool = Field(default=False, description="Fail when the cache is unreachable instead of computing "
                                                      "features on the fly with a warning.")
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="Longest a cache call may block.")


class SweepSpec(_Strict):
    stage: str = Field(description="The training stage run once per grid point (a job array on SLURM).")
    grid: dict[str, list[Any]] = Field(
        min_length=1, description="Dotted stage fields -> values, e.g. {train.lr: [1e-4, 2e-4], lora.r: [8, 16]}."
    )
    metric: str = Field(default="val_loss", description="Result metric that picks the point later stages use.")
    mode: Literal["min", "max"] = "min"
    max_parallel: int | None = Field(default=None, gt=0, description="Points running at once (SLURM array %N).")

    @field_validator("grid")
    @classmethod
    def _non_empty_values(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid[{key!r}] has no values")
        return v

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the grid, in a stable order."""
        import itertools

        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.grid[k] for k in keys))]


class JobSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Job name (runs/<name>/...).")
    description: str = ""
    cluster: str = Field(default="local", description="Cluster profile name (cluster_configs/<name>.yaml) or path.")
    model: ModelSpec | None = Field(default=None, description="Base model; required by training, merge and eval stages.")
    output_dir: str = Field(default="runs", description="Root for run directories; relative to the working dir.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    cache: CacheSpec = Field(default_factory=CacheSpec)
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment of every stage process; a value '${VAR}' is read from the launcher's environment. "
                    "Values of secret-looking names (HF_TOKEN, *_API_KEY, ...) never reach MLflow or the logs.")
    stages: list[StageSpec] = Field(min_length=1)
    sweep: SweepSpec | None = Field(default=None, description="Run one training stage over a grid of settings.")

    @model_validator(mode="after")
    def _unique_names(self) -> JobSpec:
        seen: set[str] = set()
        for s in self.stages:
            if s.name in seen:
                raise ValueError(f"duplicate stage name {s.name!r}")
            seen.add(s.name)
        return self

    def stage(self, name: str) -> Any:
        """The stage named `name` (KeyError if absent)."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


# --------------------------------------------------------------------------------------------- profiles


class LocalProfile(_Strict):
    kind: Literal["local"]
    name: str = "local"
    isolation: Literal["subprocess", "inprocess"] = Field(
        default="subprocess", description="subprocess: one process per stage (memory freed); inprocess: for tests."
    )
    gpus: int = Field(default=0, ge=0, description="GPUs visible to a stage (0 = CPU).")
    cpus: int | None = Field(default=None, gt=0, description="Threads per process (OMP_NUM_THREADS); default all "
                                                             "cores shared by the processes.")
    nproc: int = Field(default=1, gt=0, le=64, description="Processes per training stage (torch.distributed on "
                                                           "127.0.0.1; one per GPU when gpus > 0).")
    gpu_memory_gb: float | None = Field(default=None, gt=0, description="Memory of one GPU, for the memory planner.")

    @model_validator(mode="after")
    def _nproc_fits_gpus(self) -> LocalProfile:
        if self.gpus and self.nproc > self.gpus:
            raise ValueError(f"nproc ({self.nproc}) exceeds gpus ({self.gpus}): one process per GPU")
        if self.nproc > 1 and self.isolation == "inprocess":
            raise ValueError("nproc > 1 needs isolation: subprocess (one process per rank)")
        return self

    @property
    def world_size(self) -> int:
        return self.nproc


class SlurmProfile(_Strict):
    kind: Literal["slurm"]
    name: str
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = Field(default=1, gt=0)
    gpus_per_node: int = Field(default=0, ge=0)
    tasks_per_node: int | None = Field(
        default=None, gt=0, description="Processes per node; default one per GPU (1 on CPU nodes)."
    )
    cpus_per_task: int = Field(default=1, gt=0)
    mem_gb: int | None = Field(default=None, gt=0)
    timeout_min: int = Field(default=60, gt=0)
    constraint: str | None = None
    exclusive: bool = False
    setup: list[str] = Field(default_factory=list, description="Shell lines run before each job (module load, ...).")
    additional_parameters: dict[str, Any] = Field(default_factory=dict, description="Extra sbatch parameters.")
    signal_delay_s: int = Field(default=120, ge=0)
    max_num_timeout: int = Field(default=3, ge=0, description="Requeues allowed after timeout/preemption.")
    folder: str = Field(default="runs/slurm", description="submitit log/pickle folder.")
    gpu_memory_gb: float | None = Field(default=None, gt=0, description="Memory of one GPU, for the memory planner.")

    @property
    def world_size(self) -> int:
        """Processes of a training stage: nodes x tasks per node (default one per GPU, 1 on CPU nodes)."""
        return self.nodes * (self.tasks_per_node or max(1, self.gpus_per_node))


class RayProfile(_Strict):
    kind: Literal["ray"]
    name: str
    address: str = Field(
        default="local",
        description="'local' (sllm starts a private head on 127.0.0.1 and stops it after the run), 'auto' (the "
                    "cluster in RAY_ADDRESS or on this node), HOST:PORT (a head's GCS), ray://HOST:PORT (Ray "
                    "Client) or http(s)://HOST:8265 (the Ray Jobs API: the whole plan runs on the cluster).",
    )
    num_workers: int = Field(default=1, gt=0, description="Training processes per stage (one per GPU).")
    use_gpu: bool = False
    gpu_memory_gb: float | None = Field(default=None, gt=0, description="Memory of one GPU, for the memory planner.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="Per worker, e.g. {CPU: 8, GPU: 1}; default {CPU: 1} (+ GPU: 1 with use_gpu)."
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime_env (working_dir, pip or uv, env_vars, ...). Without working_dir/py_modules the "
                    "cluster is expected to share this checkout (PYTHONPATH is set to it).",
    )
    storage_path: str | None = Field(
        default=None, description="Where Ray Train keeps checkpoints: a shared folder or s3://bucket/prefix "
                                  "(endpoint and credentials as for the feature cache); default <run dir>/ray.",
    )
    max_failures: int = Field(default=0, ge=-1, description="Worker-group restarts from the latest checkpoint.")
    num_to_keep: int | None = Field(default=2, gt=0, description="Checkpoints Ray Train keeps per stage.")
    placement_timeout_s: float = Field(
        default=120.0, gt=0, description="Bound on waiting for the workers to be placed (then the stage fails)."
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60, description="Bound on reaching the cluster.")
    entrypoint_python: str = Field(
        default="python", description="Ray Jobs: the interpreter the entrypoint runs with on the cluster "
                                      "(the head's PATH applies; name a venv's python explicitly).",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v in ("local", "auto") or v.startswith(("ray://", "http://", "https://")):
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected 'local', 'auto', HOST:PORT, ray://HOST:PORT or http(s)://HOST:PORT, got {v!r}")
        return v

    @field_validator("resources_per_worker")
    @classmethod
    def _resources(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not (x >= 0 and x < float("inf"))}
        if bad:
            raise ValueError(f"expected finite amounts >= 0, got {bad}")
        return v

    @property
    def world_size(self) -> int:
        return self.num_workers

    @property
    def jobs_api(self) -> bool:
        """True when the address is a dashboard (Ray Jobs API): the plan is submitted to run on the cluster."""
        return self.address.startswith(("http://", "https://"))

    def worker_resources(self) -> dict[str, float]:
        """What one worker asks for (Ray Train's default: 1 CPU, plus 1 GPU with use_gpu)."""
        res = dict(self.resources_per_worker) or {"CPU": 1.0}
        if self.use_gpu:
            res.setdefault("GPU", 1.0)
        return {k: float(v) for k, v in res.items() if v}


ClusterProfile = Annotated[Union[LocalProfile, SlurmProfile, RayProfile], Field(discriminator="kind")]


_PROFILE_ADAPTER: Any = None


def _profile_adapter() -> Any:
    global _PROFILE_ADAPTER
    if _PROFILE_ADAPTER is None:
        from pydantic import TypeAdapter

        _PROFILE_ADAPTER = TypeAdapter(ClusterProfile)
    return _PROFILE_ADAPTER


# --------------------------------------------------------------------------------------------- errors


_PROFILE_ROOT: ContextVar[bool] = ContextVar("_PROFILE_ROOT", default=False)
_TAG_MODELS: dict[str, type[BaseModel]] = {**STAGE_TYPES, "local": LocalProfile, "slurm": SlurmProfile,
                                            "ray": RayProfile}


def _is_tag(loc: tuple[Any, ...], i: int) -> bool:
    """Discriminated unions put the tag into an error location: after `stages[i]`, or first for a profile."""
    part = loc[i]
    if not (isinstance(part, str) and part in _TAG_MODELS):
        return False
    if i == 0:
        return part in {"local", "slurm", "ray"} and _PROFILE_ROOT.get()
    return i == 2 and loc[0] == "stages" and isinstance(loc[1], int)


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class reached by walking an error location from `root` (None if it leaves models)."""
    current: Any = root
    for i, part in enumerate(loc):
        if isinstance(part, int):
            continue
        if _is_tag(loc, i):
            current = _TAG_MODELS[part]
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _unwrap_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    """The BaseModel class inside an annotation such as list[X] / X | None, if any (unions: the first)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


_SHOW_MAX = 80  # characters of a bad value quoted in a message
_LINE_MAX = 1000  # characters of one problem line


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _show(value: Any, limit: int = _SHOW_MAX) -> str:
    """repr() of a bad value for a message: printable, one line, clipped (a 100k-character string shows its length)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's int-to-text digit limit
        return f"<{type(value).__name__} too large to show>"
    if len(text) <= limit:
        return text
    size = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return text[:limit] + "…" + size


def _printable(text: str) -> str:
    """`text` with every unprintable character (newline, tab, control, lone surrogate) escaped: one clean line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _key_text(key: str) -> str:
    """A mapping key inside a dotted field path: as written, or quoted when empty, blank-edged, unprintable or long."""
    if key and key.isprintable() and key.strip() == key and len(key) <= 60:
        return key
    return _show(key, 40)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _key_text(str(part))
    return out or "<root>"


def _format_error(err: dict[str, Any], root: type[BaseModel]) -> str:
    """One line: dotted field, what went wrong, the bad value, and what is allowed."""
    raw_loc = tuple(err["loc"])
    loc = tuple(p for i, p in enumerate(raw_loc) if not _is_tag(raw_loc, i))
    where = _dotted(loc)
    typ = err["type"]
    ctx = err.get("ctx") or {}
    if typ == "extra_forbidden":
        key = str(raw_loc[-1])
        parent = _model_at(root, raw_loc[:-1])
        hint = ""
        if parent is not None:
            close = difflib.get_close_matches(key, list(parent.model_fields), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed keys: {', '.join(parent.model_fields)}"
        return f"{where}: unknown key{hint}"
    if typ == "invalid_key":  # YAML reads `1:`, `null:`, `2024-01-01:` or `true:` as a non-text key
        return f"{_dotted(loc[:-1])}: key {_show(err.get('input'))} is not text; quote it"
    if typ == "union_tag_invalid":
        disc = str(ctx.get("discriminator", "'kind'"))
        data = err.get("input")
        tag = data.get(disc.strip("'")) if isinstance(data, dict) else ctx.get("tag")
        return (f"{where}: Input tag {_show(tag)} found using {disc} does not match any of the expected tags: "
                f"{ctx.get('expected_tags', '')}")
    if typ == "union_tag_not_found":
        return f"{where}: {err['msg']}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    got = err.get("input")
    got_text = "" if typ == "missing" or isinstance(got, (dict, list)) else f" (got {_show(got)})"
    return f"{where}: {_clip(msg, 300)}{got_text}"


def _validation_problems(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    return [_format_error(e, root) for e in exc.errors()]


def _raise_problems(source: str, problems: list[str]) -> None:
    problems = [_clip(_printable(p), _LINE_MAX) for p in problems]  # one problem, one line
    n = len(problems)
    lines = "\n".join(f"  {p}" for p in problems)
    raise JobSpecError(f"{source}: {n} problem{'s' if n != 1 else ''}\n{lines}")


# --------------------------------------------------------------------------------------------- loading


_MAX_DEPTH = 100  # nesting levels (real specs use < 10); deeper input is refused before anything recurses into it
_MAX_VALUES = 1_000_000  # values once YAML aliases are expanded (a "billion laughs" file is tiny on disk)
_YAML_TYPES = {
    "tag:yaml.org,2002:int": "an integer", "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:timestamp": "a date", "tag:yaml.org,2002:bool": "a boolean",
}


class _TooLarge(ValueError):
    """Parsed YAML that is too large or too deep once its aliases are expanded."""


class _SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader that reports, at a line and column, what would otherwise escape as a RecursionError, a bare
    ValueError or a self-containing value: nesting deeper than _MAX_DEPTH, an alias inside its own anchor
    (`&a [*a]`), and a scalar it cannot build (`2026-02-30`, `!!int abc`, a 5,000-digit number)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open: dict[str, bool] = {}  # anchor -> its (latest) node is still being composed

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if self._depth >= _MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested more than {_MAX_DEPTH} levels deep", event.start_mark)
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.AliasEvent):
            if self._open.get(anchor):
                raise yaml.composer.ComposerError(
                    None, None, f"alias *{anchor} is inside its own anchor &{anchor} (a value cannot contain itself)",
                    event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if anchor is not None:
            self._open[anchor] = True
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open[anchor] = False

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError, TypeError, KeyError, AttributeError, IndexError) as exc:
            # PyYAML's own constructors fail like this on an explicit tag with a bad value (`!!bool maybe`)
            what = _YAML_TYPES.get(node.tag, node.tag)
            reason = "" if not isinstance(exc, (ValueError, OverflowError)) else (
                ": too many digits" if "digits" in str(exc) else f": {exc}")
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {_show(node.value, 40)} as {what}{reason}", node.start_mark) from exc

    def construct_yaml_int(self, node: Any) -> int:
        value = super().construct_yaml_int(node)
        if value.bit_length() > 14_000:  # ~4,300 decimal digits, as for a decimal literal (hex ones have no limit)
            raise ValueError("too many digits")
        return value


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)


def _too_large(data: Any) -> str | None:
    """Why `data` is too large or deep once YAML aliases are expanded (None if fine); iterative, cycles count once."""
    done: dict[int, tuple[int, int]] = {}  # id -> (values, depth) of a finished list/dict
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, finished = stack.pop()
        children = list(node.values()) if isinstance(node, dict) else node
        if finished:
            on_path.discard(id(node))
            size, depth = 1, 1
            for c in children:
                csize, cdepth = done.get(id(c), (0, 0)) if isinstance(c, (dict, list)) else (1, 0)
                size, depth = size + csize, max(depth, cdepth + 1)
            if size > _MAX_VALUES:
                return f"YAML aliases expand to more than {_MAX_VALUES:,} values"
            if depth > _MAX_DEPTH:
                return f"YAML aliases nest values more than {_MAX_DEPTH} levels deep"
            done[id(node)] = (size, depth)
        elif isinstance(node, (dict, list)) and id(node) not in done and id(node) not in on_path:
            on_path.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if isinstance(c, (dict, list)))
    return None


def _parse_yaml(text: str) -> Any:
    """Parse YAML text (raises yaml.YAMLError for bad YAML, _TooLarge for an alias bomb)."""
    loader = _SpecLoader(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    problem = _too_large(data)
    if problem:
        raise _TooLarge(problem)
    return data


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """' at line L, column C: what is wrong' for a YAML error in `text`."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML forbids; it knows only the offset
        pos = exc.position
        line, column = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        return (f" at line {line}, column {column}: character U+{char:04X} is not allowed in YAML "
                f"(write it as \\u{char:04x} in a double-quoted string)")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if getattr(exc, "problem", None) and context and cmark and cmark is not mark:
        problem += f" ({context} that starts at line {cmark.line + 1}, column {cmark.column + 1})"
    return f"{where}: {_clip(_printable(problem), 300)}"


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the OS, an embedded NUL
        return False


def _expanduser(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:  # ~nosuchuser
        return path


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a missing, unreadable, non-UTF-8, malformed or oversized file becomes a JobSpecError
    naming the file (and the line and column of a syntax error)."""
    if not _is_file(path):
        raise JobSpecError(f"{path}: file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JobSpecError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text() did
    except UnicodeDecodeError as exc:
        line, column = data.count(b"\n", 0, exc.start) + 1, exc.start - data.rfind(b"\n", 0, exc.start)
        raise JobSpecError(f"{path}: not UTF-8 text at line {line}, column {column} "
                           f"(byte 0x{data[exc.start]:02x}); save the file as UTF-8") from exc
    try:
        return _parse_yaml(text)
    except yaml.YAMLError as exc:
        raise JobSpecError(f"{path}: not valid YAML{_yaml_problem(exc, text)}") from exc
    except _TooLarge as exc:
        raise JobSpecError(f"{path}: too large: {exc}") from exc


_OVERRIDE = re.compile(r"^(?P<key>[A-Za-z_][\w.\[\]-]*)=(?P<value>.*)$", re.S)
_KEY_PATH = re.compile(r"[A-Za-z_][\w-]*(?:\.[\w-]+|\[\d{1,9}\])*")
_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path[0].field=value` overrides (values parsed as YAML) to a raw spec dict.

    A stage may be addressed by index (`stages[1].train.lr=1e-4`) or by name (`stages.asr.train.lr=1e-4`).

    Raises:
        JobSpecError: for a malformed override (key or YAML value) or a path that does not exist.
    """
    import copy

    data = copy.deepcopy(raw)
    for item in overrides:
        m = _OVERRIDE.match(item)
        if not m:
            raise JobSpecError(f"--set {_show(item)}: expected KEY=VALUE, e.g. stages[0].train.lr=2e-4")
        if not _KEY_PATH.fullmatch(m["key"]):
            raise JobSpecError(f"--set {_show(item)}: malformed key {_show(m['key'])}; use dotted names and [index], "
                               f"e.g. stages[0].train.lr=2e-4")
        tokens = [t[0] or int(t[1]) for t in _TOKEN.findall(m["key"])]
        if len(tokens) > _MAX_DEPTH:
            raise JobSpecError(f"--set {_show(item)}: key nests more than {_MAX_DEPTH} levels deep")
        try:
            value = _parse_yaml(m["value"]) if m["value"] else ""
        except yaml.YAMLError as exc:
            raise JobSpecError(f"--set {_show(item)}: value is not valid YAML{_yaml_problem(exc, m['value'])}") from exc
        except _TooLarge as exc:
            raise JobSpecError(f"--set {_show(item)}: value too large: {exc}") from exc
        node: Any = data
        for i, tok in enumerate(tokens):
            last = i == len(tokens) - 1
            if isinstance(node, list) and isinstance(tok, str):
                matches = [k for k, s in enumerate(node) if isinstance(s, dict) and s.get("name") == tok]
                if not matches:
                    raise JobSpecError(f"--set {_show(item)}: no list element named {tok!r}")
                tok = matches[0]
            if isinstance(node, list):
                if not isinstance(tok, int) or tok >= len(node):
                    raise JobSpecError(f"--set {_show(item)}: index {tok} out of range (list has {len(node)} items)")
            elif isinstance(tok, int):
                raise JobSpecError(f"--set {_show(item)}: {_dotted(tuple(tokens[:i]))} is not a list")
            elif not isinstance(node, dict):
                raise JobSpecError(f"--set {_show(item)}: {_dotted(tuple(tokens[:i]))} is not a mapping")
            if last:
                node[tok] = value
            else:
                if isinstance(node, dict) and tok not in node:
                    node[tok] = {}
                node = node[tok]
    return data


def _absolute(value: str, base_dir: Path) -> str:
    if "\0" in value:
        raise ValueError("contains a NUL character")
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base_dir / p).resolve())


def _resolve_data_paths(raw: dict[str, Any], base_dir: Path) -> list[str]:
    """Make dataset, suite, report and model paths absolute against the spec's folder (in place, before validation).

    Returns one problem line per path that cannot be resolved (`~nosuchuser/x`, an embedded NUL); values of the
    wrong type are left to validation.
    """
    problems: list[str] = []

    def resolve(holder: dict[str, Any], key: str, where: str) -> None:
        value = holder[key]
        try:
            holder[key] = _absolute(value, base_dir)
        except RuntimeError:  # Path.expanduser: no such user
            user = value.split("/", 1)[0]
            problems.append(f"{where}: cannot expand {_show(user, 40)}: no such user (got {_show(value)})")
        except (ValueError, OSError) as exc:
            problems.append(f"{where}: not a usable path: {exc} (got {_show(value)})")

    stages = raw.get("stages")
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        if not isinstance(stage, dict):
            continue
        refs: list[tuple[str, Any]] = []
        data = stage.get("data")
        if isinstance(data, dict):
            for part in ("train", "val"):
                if isinstance(data.get(part), list):
                    refs += [(f"stages[{i}].data.{part}[{j}]", ref) for j, ref in enumerate(data[part])]
        if isinstance(stage.get("datasets"), list):
            refs += [(f"stages[{i}].datasets[{j}]", ref) for j, ref in enumerate(stage["datasets"])]
        for key in ("suite", "report_dir"):
            if isinstance(stage.get(key), str) and stage[key]:
                resolve(stage, key, f"stages[{i}].{key}")
        ds = stage.get("deepspeed")
        if isinstance(ds, dict) and isinstance(ds.get("config_file"), str) and ds["config_file"]:
            resolve(ds, "config_file", f"stages[{i}].deepspeed.config_file")
        m = stage.get("model")
        if stage.get("kind") == "suite_eval" and isinstance(m, str) and m.startswith((".", "/", "~")):
            resolve(stage, "model", f"stages[{i}].model")
        for where, ref in refs:
            if isinstance(ref, dict) and isinstance(ref.get("path"), str) and ref["path"]:
                resolve(ref, "path", f"{where}.path")
            opts = ref.get("metric_options") if isinstance(ref, dict) else None
            for metric, o in (opts.items() if isinstance(opts, dict) else []):
                if isinstance(o, dict) and isinstance(o.get("model_path"), str) and o["model_path"]:
                    resolve(o, "model_path", f"{where}.metric_options.{metric}.model_path")
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("base"), str) and model["base"].startswith((".", "/", "~")):
        resolve(model, "base", "model.base")
    return problems


def parse_job_spec(raw: Any, *, source: str, base_dir: Path, overrides: list[str] | None = None) -> JobSpec:
    """Validate a raw (already parsed) spec; see load_job_spec."""
    if not isinstance(raw, dict):
        _raise_problems(source, [f"<root>: expected a mapping of job fields (got {type(raw).__name__})"])
    raw = apply_overrides(raw, overrides or [])
    path_problems = _resolve_data_paths(raw, base_dir)
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        _raise_problems(source, _validation_problems(exc, JobSpec) + path_problems)
    if path_problems:
        _raise_problems(source, path_problems)
    problems = graph_problems(spec)
    for i, stage in enumerate(spec.stages):
        problems += [f"stages[{i}].{p}" for p in stage_config_problems(stage)]
    if problems:
        _raise_problems(source, problems)
    return spec


def load_job_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Load, override and validate a job spec file.

    Args:
        path: YAML job spec.
        overrides: `KEY=VALUE` strings applied before validation.

    Returns:
        The frozen JobSpec with dataset paths made absolute.

    Raises:
        JobSpecError: listing every problem, each with the dotted field, the bad value and what is allowed.

    Example:
        >>> spec = load_job_spec("jobs/demo_sllm_tiny.yaml", ["stages[0].train.lr=1e-4"])
    """
    path = Path(path)
    raw = read_yaml(path)
    return parse_job_spec(raw, source=str(path), base_dir=path.parent.resolve(), overrides=overrides)


def load_cluster_profile(path: str | Path) -> LocalProfile | SlurmProfile | RayProfile:
    """Load and validate a cluster profile YAML (raises JobSpecError naming file and field)."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        _raise_problems(str(path), [f"<root>: expected a mapping of profile fields (got {type(raw).__name__})"])
    try:
        return _profile_adapter().validate_python(raw)
    except ValidationError as exc:
        token = _PROFILE_ROOT.set(True)  # a profile's errors start with its kind tag
        try:
            problems = [_format_error(dict(e), LocalProfile) for e in exc.errors()]
        finally:
            _PROFILE_ROOT.reset(token)
        _raise_problems(str(path), problems)
    raise AssertionError("unreachable")


def find_cluster_profile(name: str, *, spec_path: Path | None = None) -> LocalProfile | SlurmProfile | RayProfile:
    """Resolve a profile name or path: a file path, or cluster_configs/<name>.yaml next to the spec or CWD.

    The name `local` falls back to the embedded default when no file is found.
    """
    candidates: list[Path] = []
    p = _expanduser(Path(name))
    if p.suffix in {".yaml", ".yml"}:
        candidates.append(p)
    else:
        roots = [Path.cwd()]
        if spec_path is not None:
            roots += list(spec_path.resolve().parents)
        for root in roots:
            candidates.append(root / "cluster_configs" / f"{name}.yaml")
    for c in candidates:
        if _is_file(c):
            return load_cluster_profile(c)
    if name == "local":
        return LocalProfile(kind="local")
    searched = ", ".join(_clip(_printable(str(c)), 200) for c in candidates[:4])
    raise JobSpecError(f"cluster profile {_show(name)} not found (looked in {searched})")


# --------------------------------------------------------------------------------------------- graph


def graph_problems(spec: JobSpec) -> list[str]:
    """Unknown upstream names, cycles, and stages fed by the wrong kind of upstream."""
    problems: list[str] = []
    index = {s.name: i for i, s in enumerate(spec.stages)}
    for i, s in enumerate(spec.stages):
        for field, names in (("from_stage", [s.from_stage] if s.from_stage else []), ("depends_on", s.depends_on)):
            for n in names:
                if n not in index:
                    close = difflib.get_close_matches(n, list(index), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else f"; stages are: {', '.join(index)}"
                    problems.append(f"stages[{i}].{field}: unknown stage {_show(n)}{hint}")
                elif n == s.name:
                    problems.append(f"stages[{i}].{field}: stage {n!r} depends on itself")
        if s.from_stage in index:
            up = spec.stages[index[s.from_stage]]
            if up.output == "scores":
                problems.append(f"stages[{i}].from_stage: {s.from_stage!r} is an {up.kind} stage and produces no model")
            if s.kind == "suite_eval" and not s.model and up.output != "model_folder":
                problems.append(f"stages[{i}].from_stage: suite_eval scores a merged model; {s.from_stage!r} is "
                                f"{up.kind} (point from_stage at a merge stage, or set model)")
            if s.upstream_kinds is not None and up.kind not in s.upstream_kinds:
                problems.append(f"stages[{i}].from_stage: {s.kind} works on a model folder; {s.from_stage!r} is "
                                f"{up.kind} (point from_stage at a {' or '.join(s.upstream_kinds)} stage)")
            if s.kind == "merge" and up.output == "model_folder":
                problems.append(f"stages[{i}].from_stage: merge combines training stages; {s.from_stage!r} is "
                                f"already a model folder ({up.kind})")
            if s.trains and up.output == "model_folder":
                problems.append(
                    f"stages[{i}].from_stage: training from a merged model is not supported; "
                    f"start from the training stage that {s.from_stage!r} merges"
                )
        if s.kind == "nightly_eval" and s.from_stage:
            problems.append(f"stages[{i}].from_stage: nightly_eval picks its models from the registry; use depends_on")
    needs = [s.name for s in spec.stages if s.needs_base_model]
    if spec.model is None and needs:
        problems.append(f"model: required by stage(s) {', '.join(map(repr, needs))} (e.g. model: {{base: tiny:voxtral}})")
    problems += sweep_problems(spec)
    if not problems:
        cycle = find_cycle(spec)
        if cycle:
            problems.append(f"stages: dependency cycle: {' needs '.join(cycle)}")
    return problems


def sweep_problems(spec: JobSpec) -> list[str]:
    """The swept stage exists and trains; every grid point gives a valid stage."""
    sw = spec.sweep
    if sw is None:
        return []
    names = [s.name for s in spec.stages]
    if sw.stage not in names:
        close = difflib.get_close_matches(sw.stage, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; stages are: {', '.join(names)}"
        return [f"sweep.stage: unknown stage {_show(sw.stage)}{hint}"]
    stage = spec.stage(sw.stage)
    if not stage.trains:
        return [f"sweep.stage: {sw.stage!r} is a {stage.kind} stage; only training stages can be swept"]
    problems = []
    for key in sw.grid:
        for value in sw.grid[key]:
            try:
                stage_with(stage, {key: value})
            except JobSpecError as exc:
                problems.append(f"sweep.grid: {exc}".replace("\n", " "))
                break
    return problems


def stage_with(stage: Any, overrides: dict[str, Any]) -> Any:
    """A copy of `stage` with dotted fields replaced, validated like the file (JobSpecError if invalid)."""
    from pydantic import TypeAdapter

    raw = stage.model_dump(mode="json")
    for key, value in overrides.items():
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise JobSpecError(f"{key}: {part!r} is not a block of stage {stage.name!r}")
            node = node[part]
        if parts[-1] not in node:
            raise JobSpecError(f"{key}: stage {stage.name!r} has no field {parts[-1]!r} there")
        node[parts[-1]] = value
    try:
        return TypeAdapter(StageSpec).validate_python(raw)
    except ValidationError as exc:
        errs = [{**e, "loc": tuple(e["loc"])[1:]} for e in exc.errors()]  # drop the stage-kind tag
        raise JobSpecError("; ".join(_format_error(e, type(stage)) for e in errs)) from exc


def find_cycle(spec: JobSpec) -> list[str] | None:
    """A cycle in the stage graph as a list of names (first == last), or None."""
    edges = {s.name: s.upstream() for s in spec.stages}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for s in spec.stages:  # depth-first, iterative: a chain of thousands of stages must not hit the recursion limit
        if s.name in state:
            continue
        state[s.name] = 1
        path, pending = [s.name], [iter(edges.get(s.name, []))]
        while path:
            for m in pending[-1]:
                if state.get(m) == 1:
                    return path[path.index(m):] + [m]
                if state.get(m) is None:
                    state[m] = 1
                    path.append(m)
                    pending.append(iter(edges.get(m, [])))
                    break
            else:
                state[path.pop()] = 2
                pending.pop()
    return None


def topo_order(spec: JobSpec) -> list[str]:
    """Stage names in an order that respects every dependency (stable w.r.t. file order)."""
    done: list[str] = []
    remaining = [s.name for s in spec.stages]
    edges = {s.name: s.upstream() for s in spec.stages}
    while remaining:
        for n in remaining:
            if all(u in done for u in edges[n]):
                done.append(n)
                remaining.remove(n)
                break
        else:  # pragma: no cover - graph_problems rejects cycles at load
            raise AssertionError(f"cycle among {remaining}")
    return done


# --------------------------------------------------------------------------------------------- hash / dump


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """The resolved spec as plain JSON-able data (written from the object, never re-parsed from argv)."""
    return spec.model_dump(mode="json")


def spec_hash(spec: JobSpec) -> str:
    """Canonical sha256 of the resolved spec (sorted keys, no whitespace)."""
    blob = json.dumps(spec_to_dict(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def dump_resolved_yaml(spec: JobSpec) -> str:
    """YAML text of the resolved spec."""
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False, allow_unicode=True)


def json_schema() -> dict[str, Any]:
    """JSON schema of the job spec (for editors)."""
    return JobSpec.model_json_schema()
