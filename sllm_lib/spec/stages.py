"""Stage specs: datasets, training settings, and one model per stage kind with its traits.

`STAGE_MODELS` is the one list of stage kinds; `launch/stages.py` maps each kind to its function."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, field_validator, model_validator

from sllm_lib.metrics.language import DEFAULT_LANGUAGE, Language
from sllm_lib.spec.base import NAME_MAX, GateTier, RecordKind, Strict, Threshold, TrainableGroup


class DatasetRef(Strict):
    kind: RecordKind = Field(description="Record type of the JSONL file: text_qa, asr, speech_qa or classification.")
    path: str = Field(description="JSONL file; relative paths are resolved against the spec file's folder.")
    weight: float = Field(default=1.0, gt=0, le=1e6, description="Sampling weight in a multitask mixture.")
    on_bad_record: Literal["fail", "skip"] = Field(
        default="fail", description="fail: stop on the first bad file; skip: drop bad records, count and log them."
    )
    max_records: int | None = Field(default=None, gt=0, le=1_000_000_000, description="Use only the first N records.")
    max_text_chars: int = Field(default=32_768, gt=0, le=10_000_000,
                                description="Longest text field of a record, in characters; a longer one is a bad "
                                            "line (file:line), as a runaway transcript or answer usually is.")
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


class DataSpec(Strict):
    train: list[DatasetRef] = Field(min_length=1, description="Training datasets (mixed by weight).")
    val: list[DatasetRef] = Field(default_factory=list, description="Validation datasets (loss only).")


class LoraSpec(Strict):
    r: int = Field(default=16, gt=0, le=1024, description="LoRA rank.")
    alpha: int = Field(default=32, gt=0, le=100_000, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="LoRA dropout.")
    targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Linear layer names inside the language model that get LoRA adapters.",
    )


class QuantSpec(Strict):
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


class DeepSpeedSpec(Strict):
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


class TrainSpec(Strict):
    per_device_bsz: int = Field(default=1, gt=0, le=65_536, description="Micro-batch size per device.")
    grad_accum: int = Field(default=1, gt=0, le=65_536, description="Gradient accumulation steps.")
    epochs: float | None = Field(default=None, gt=0, le=10_000, description="Epochs (ignored when max_steps is set).")
    max_steps: int | None = Field(default=None, gt=0, le=1_000_000_000, description="Optimizer steps; wins over epochs.")
    lr: float = Field(default=2e-4, gt=0, lt=1, description="Peak learning rate.")
    warmup_steps: int = Field(default=0, ge=0, le=1_000_000_000, description="Linear warm-up steps.")
    weight_decay: float = Field(default=0.0, ge=0, le=10)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    max_grad_norm: float = Field(default=1.0, gt=0, le=1e6)
    seed: int = Field(default=42, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = Field(default="bf16", description="bf16/fp16 fall back to fp32 on CPU.")
    gradient_checkpointing: bool = False
    save_steps: int = Field(default=50, gt=0, le=1_000_000_000, description="Write a resumable checkpoint every N optimizer steps.")
    save_total_limit: int = Field(default=2, gt=0, le=10_000, description="Complete checkpoints kept per stage.")
    logging_steps: int = Field(default=5, gt=0, le=1_000_000_000, description="One status line and one tracker write every N steps.")
    group_by_length: bool = Field(default=True, description="Length-grouped batches (less padding).")
    eval_at_start: bool = Field(default=False, description=(
        "Score the stage's val data once before the first step: val_loss at step 0 and final/val_loss_start, next "
        "to the final val_loss, show what the stage changed (needs data.val)."))
    max_seq_len: int = Field(default=2048, gt=0, le=1_048_576, description="Longer examples are truncated (audio tokens kept).")

    @model_validator(mode="after")
    def _has_length(self) -> TrainSpec:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set epochs or max_steps")
        if self.max_steps is not None and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < max_steps ({self.max_steps})")
        return self


class GenerationSpec(Strict):
    max_new_tokens: int = Field(default=64, gt=0, le=4096)
    batch_size: int = Field(default=4, gt=0, le=65_536)
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0, le=100)


# --------------------------------------------------------------------------------------------- stages


class _StageBase(Strict):
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

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=NAME_MAX,
                      description="Unique stage name: letters, digits, _ . -, at most 100 characters.")
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


class EarlyStopSpec(Strict):
    metric: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_]+$",
                        description="The watched 'task/metric' (e.g. asr/cer); its direction comes from the registry.")
    patience: int = Field(default=3, ge=1, le=1000,
                          description="Stop after this many scored checkpoints in a row not better than the best.")
    min_delta: float = Field(default=0.0, ge=0, le=1e6, description="An improvement smaller than this is none.")


class WatchSpec(Strict):
    """Score every complete checkpoint of a training stage with a suite while it trains (eval/watch.py)."""

    suite: str = Field(description="Suite YAML or shipped suite name; relative paths resolve against the spec.")
    sample_limit: int | None = Field(default=None, gt=0, le=1_000_000, description="At most N samples per task.")
    max_concurrent: int = Field(default=1, ge=1, le=64, description="Checkpoint evaluations running at once.")
    poll_s: float = Field(default=10.0, gt=0, le=3600, description="How often the watcher looks for checkpoints.")
    early_stop: EarlyStopSpec | None = Field(
        default=None, description="Stop training cleanly at its next checkpoint when the metric stops improving.")


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
    watch: WatchSpec | None = Field(
        default=None, description="Score each complete checkpoint with a suite as its own job while the stage "
                                  "trains; results as watch/<task>/<metric> at the checkpoint's step.")

    @model_validator(mode="after")
    def _trainable_consistent(self) -> _TrainStageBase:
        if "lora" in self.trainable and self.lora is None:
            raise ValueError("trainable contains 'lora' but the stage has no lora block")
        if self.lora is not None and "lora" not in self.trainable:
            raise ValueError("a lora block is set but 'lora' is not in trainable")
        if self.train.eval_at_start and not self.data.val:
            raise ValueError("train.eval_at_start scores the val data before the first step, and data.val is empty")
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
                                     "models:/NAME/VERSION), a merge run id, tiny:<preset>, mini:<preset> or a hub id.")
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


class RegisterSpec(Strict):
    name: str = Field(min_length=1, max_length=NAME_MAX,
                      description="Registered model name in the MLflow model registry.")
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
    language: Language = Field(default=DEFAULT_LANGUAGE, description=(
        "Language of the references (ko, en): CER and WER use its text normaliser (korean-v1, whisper-english-v1)."))


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


class CompressionTargets(Strict):
    """The bar a compressed model is held to against its uncompressed baseline (the seed project's targets)."""

    size_reduction: float = Field(default=0.5, ge=0, lt=1, description="Smaller on disk by at least this share.")
    speedup: float = Field(default=2.0, gt=0, le=1e6, description="At least this many times faster per generated token.")
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
                                                           "models:/NAME@ALIAS, run id, tiny:/mini:<preset> or hub id); "
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
    sample_limit: int | None = Field(default=None, gt=0, le=100_000_000, description="Override the suite's per-task sample limit.")

    @model_validator(mode="after")
    def _needs_model(self) -> SuiteEvalStage:
        if not self.model and not self.from_stage:
            raise ValueError("suite_eval needs a model (folder, models:/NAME@ALIAS or run id) or a from_stage merge")
        return self


class BootstrapSpec(Strict):
    resamples: int = Field(default=1000, ge=100, le=100_000, description="Paired bootstrap resamples.")
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="Two-sided confidence level.")
    seed: int = 0


class GatePolicySpec(Strict):
    """How the nightly's gates make one verdict: GO, NO-GO or INCONCLUSIVE (docs/nightly.md, "Gate policy").

    A stage without `policy:` keeps the original rules: every thresholded metric is critical, a loss inside the
    noise or a metric the champion lacks does not block, and only a night with nothing compared is INCONCLUSIVE.
    """

    tiers: dict[str, GateTier] = Field(
        default_factory=dict,
        description="'task/metric' or 'metric' -> critical | supporting | advisory; beats the suite's tiers.")
    default_tier: GateTier = Field(default="critical", description="Tier of a gated metric no tier names.")
    min_items: int = Field(default=20, ge=1, le=1_000_000,
                           description="Fewer paired samples than this on a gate is too little evidence.")
    uncertain: Literal["inconclusive", "go"] = Field(
        default="inconclusive",
        description="What a critical gate without enough evidence does to the verdict: a loss beyond the threshold "
                    "whose interval includes zero, fewer than min_items pairs, or no baseline value.")
    paired_test: Literal["auto", "bootstrap"] = Field(
        default="auto", description="auto: McNemar's exact test for per-sample 0/1 metrics (accuracy, exact match), "
                                    "the paired bootstrap for the rest; bootstrap: the bootstrap for all.")
    promote_first: bool = Field(
        default=True, description="With --promote and no champion yet, the candidate becomes the first champion "
                                  "although nothing could be gated (the night is INCONCLUSIVE all the same).")

    @classmethod
    def legacy(cls) -> GatePolicySpec:
        """The rules of a nightly spec written before policies: what `policy:` absent means."""
        return cls(min_items=1, uncertain="go", paired_test="bootstrap")


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
    thresholds: dict[str, Threshold] = Field(
        default_factory=dict,
        description="Allowed worsening per metric before a gate fails, as 'task/metric' or 'metric' -> amount in "
                    "metric units (cer: 0.01) or relative to the baseline ('5%'); overrides the suite's.",
    )
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec)
    policy: GatePolicySpec | None = Field(
        default=None, description="Gate tiers and evidence rules for the GO / NO-GO / INCONCLUSIVE verdict; "
                                  "absent: every gate critical, the original rules (GatePolicySpec.legacy).")
    compare_previous: bool = Field(default=True, description="Also gate against the previous nightly's candidate.")
    promote: bool = Field(default=False, description="Move the champion alias to the candidate when the verdict is GO.")
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
