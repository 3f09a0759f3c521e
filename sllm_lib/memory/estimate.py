"""The per-GPU estimate of one stage: weights, LoRA, gradients, optimizer, ZeRO partitioning and offload,
activations, buckets, audio, margin (the formulas: docs/memory_planner.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from sllm_lib.memory.accounting import (
    DtypeRules, ModelAccount, ParamInfo, _trainable, account_model, lora_numel, lora_shapes
)
from sllm_lib.memory.constants import (
    GB, GROUP_LABELS, LOSS_BYTES_PER_LOGIT, MARGIN_FIXED_BYTES, MARGIN_FRACTION, MEL_FRAMES_PER_SECOND, Device
)
from sllm_lib.errors import SllmError
from sllm_lib.spec import JobSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryRow:
    name: str
    bytes: int
    note: str = ""


@dataclass(frozen=True)
class StageMemory:
    """The predicted memory of one training stage on one GPU (and, when offloading, the CPU side)."""

    stage: str
    index: int
    kind: str
    rows: tuple[MemoryRow, ...]
    cpu_rows: tuple[MemoryRow, ...]
    world_size: int
    device: Device
    available_bytes: int | None
    params_total: int
    params_trainable: int
    setting: str
    notes: tuple[str, ...] = ()
    uncounted: str | None = None  # what the total leaves out (a registry teacher): the verdict covers the rest

    @property
    def total(self) -> int:
        return sum(r.bytes for r in self.rows)

    @property
    def cpu_total(self) -> int:
        return sum(r.bytes for r in self.cpu_rows)

    @property
    def fits(self) -> bool | None:
        return None if self.available_bytes is None else self.total <= self.available_bytes

    def row(self, name: str) -> MemoryRow:
        """The row named `name` (KeyError if absent)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)


def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _uses_gpu(profile: Any) -> bool:
    """Whether the profile's training processes run on GPUs (else the runner trains in fp32 on the CPU)."""
    return bool(getattr(profile, "gpus", 0) or getattr(profile, "gpus_per_node", 0) or getattr(profile, "use_gpu", 0))


def plan_memory(job: JobSpec, profile: Any, *, device: Device | None = None) -> list[StageMemory]:
    """Predicted per-GPU memory of every training stage of `job` on `profile`.

    Args:
        job: the validated job spec.
        profile: its cluster profile (world_size, gpu_memory_gb).
        device: "gpu" (precision as set) or "cpu" (the runner's fp32); default from the profile.

    Returns:
        One StageMemory per training stage, in file order; for a swept stage, its largest grid point.

    Example:
        >>> for m in plan_memory(spec, profile): print(m.stage, m.total / 1e9, m.fits)
    """
    if job.model is None:
        return []
    dev: Device = device or ("gpu" if _uses_gpu(profile) else "cpu")
    account = account_model(job.model)
    out = []
    for i, stage in enumerate(job.stages):
        if not stage.trains:
            continue
        out.append(_worst_sweep_point(job, i, stage, account, profile, dev))
    return out


def _worst_sweep_point(job: JobSpec, index: int, stage: Any, account: ModelAccount, profile: Any,
                       device: Device) -> StageMemory:
    from sllm_lib.spec import stage_with

    if job.sweep is None or job.sweep.stage != stage.name:
        return stage_memory(stage, index, account, profile, device=device)
    plans = [(stage_memory(stage_with(stage, point), index, account, profile, device=device), point)
             for point in job.sweep.points()]
    worst, point = max(plans, key=lambda mp: mp[0].total)
    note = "largest of the sweep's points: " + ", ".join(f"{k}={v}" for k, v in point.items())
    return replace(worst, notes=(*worst.notes, note))


def stage_memory(stage: Any, index: int, account: ModelAccount, profile: Any, *,
                 device: Device = "gpu") -> StageMemory:
    """The memory rows of one training stage (see the module docstring for every term)."""
    rules = DtypeRules.of(stage, device)
    world = max(1, profile.world_size)
    ds = stage.deepspeed
    zero = ds.stage if ds is not None else None
    rows, cpu = _weight_rows(account, rules, zero, ds, world)
    notes: list[str] = []
    n_lora = lora_numel(account, stage.lora) if stage.lora is not None else 0
    train_params = [p for p in account.params if _trainable(account, p, list(stage.trainable))]
    notes.extend(_quantized_trainable_notes(train_params, rules))
    lora_bytes = n_lora * rules.lora
    if n_lora:
        row = MemoryRow("LoRA adapters", _split(lora_bytes, world, zero == 3),
                        f"{n_lora:,} params (r={stage.lora.r}, {len(lora_shapes(account, stage.lora.targets))} "
                        f"Linears), {'fp32' if rules.lora == 4 else '16-bit'}" + _zero_note(zero == 3, world))
        (cpu if ds is not None and ds.offload_params == "cpu" else rows).append(row)
    grad_bytes = lora_bytes + sum(rules.param(p)[0] for p in train_params)  # a gradient has its param's dtype
    n_train = n_lora + sum(rules.trainable_elements(p) for p in train_params)
    rows += _training_state_rows(rules, ds, world, n_train, grad_bytes, cpu)
    rows += _activation_rows(stage, account, rules, notes)
    rows += _bucket_rows(stage, account.text["h"], rules)
    uncounted = None
    if stage.kind == "distill":
        teacher_rows, teacher_note = _teacher_rows(stage, rules)
        rows += teacher_rows
        if teacher_note:
            notes.append(teacher_note)
            uncounted = f"teacher {stage.teacher}"
    rows.append(_margin(rows, device))
    return StageMemory(stage=stage.name, index=index, kind=stage.kind, rows=tuple(rows), cpu_rows=tuple(cpu),
                       world_size=world, device=device,
                       available_bytes=int(profile.gpu_memory_gb * GB) if profile.gpu_memory_gb else None,
                       params_total=account.numel, params_trainable=n_train, setting=_setting(stage, world, device),
                       notes=tuple(notes), uncounted=uncounted)


TEACHER_BYTES_PER_LOGIT = 8  # the teacher's logits in fp32 and the log-probabilities the KL term takes of them


def _teacher_rows(stage: Any, rules: DtypeRules) -> tuple[list[MemoryRow], str | None]:
    """A distill stage's teacher: frozen weights in the training dtype (every rank holds a whole copy: it is not
    wrapped by ZeRO) and its logits per micro-batch. A registry reference resolves only at run time (it needs
    the tracking store): then the stage's verdict says the teacher is not counted, rather than guessing it."""
    from sllm_lib.models.refs import is_registry_ref
    from sllm_lib.spec import ModelSpec

    ref = stage.teacher
    if is_registry_ref(ref):
        return [], (f"distill: teacher {ref!r} is a registry model, resolved at run time: NOT counted (add its "
                    f"weights in the training dtype and micro-batch x seq x vocab x {TEACHER_BYTES_PER_LOGIT} B of "
                    f"logits); the verdict is for the student alone")
    try:
        teacher = account_model(ModelSpec(base=ref, trust_remote_code=stage.teacher_trust_remote_code))
    except SllmError as exc:
        return [], f"distill: teacher {ref!r} NOT counted, its config is not available here ({exc}); the verdict " \
                   f"is for the student alone"
    t = stage.train
    weights = teacher.numel * rules.float_param
    tokens = t.per_device_bsz * t.max_seq_len
    logits = tokens * teacher.text["vocab"] * TEACHER_BYTES_PER_LOGIT
    return [MemoryRow("teacher: weights (frozen)", weights,
                      f"{teacher.numel / 1e6:,.1f}M params of {ref}, {'fp32' if rules.float_param == 4 else '16-bit'}"
                      f", a whole copy per rank"),
            MemoryRow("teacher: logits", logits, f"{tokens:,} tokens x {teacher.text['vocab']:,} vocab x "
                                                 f"{TEACHER_BYTES_PER_LOGIT} B (fp32 logits + log-probs)")], None


def _split(n: int, world: int, partitioned: bool) -> int:
    return -(-n // world) if partitioned else n


def _zero_note(partitioned: bool, world: int) -> str:
    return f"; ZeRO: / {world} GPUs" if partitioned and world > 1 else ""


def _quantized_trainable_notes(train_params: list[ParamInfo], rules: DtypeRules) -> list[str]:
    bad = sorted({p.group for p in train_params if p.linear is not None and rules.quant.bits != "none"})
    return [f"{GROUP_LABELS[g]} is trained in full but its Linears are {rules.quant.bits}-bit quantized (they are "
            f"not in the quantization skip list): bitsandbytes weights cannot be trained" for g in bad]


def _weight_rows(account: ModelAccount, rules: DtypeRules, zero: int | None, ds: Any,
                 world: int) -> tuple[list[MemoryRow], list[MemoryRow]]:
    z3 = zero == 3
    offload = ds is not None and ds.offload_params == "cpu"
    gpu, cpu = [], []
    for group in GROUP_LABELS:
        members = [p for p in account.params if p.group == group]
        if not members:
            if group == "lm_head" and account.lm_head_tied:
                gpu.append(MemoryRow("weights: lm_head", 0, "tied to the embeddings"))
            continue
        part = sum(rules.param(p)[0] for p in members)
        const = sum(rules.param(p)[1] for p in members)
        row = MemoryRow(f"weights: {GROUP_LABELS[group]}", _split(part, world, z3) + const,
                        _weights_note(members, rules) + _zero_note(z3, world))
        (cpu if offload else gpu).append(row)
    if z3:
        gpu.append(_zero3_working_set(account, rules, offload))
    return gpu, cpu


def _weights_note(members: list[ParamInfo], rules: DtypeRules) -> str:
    n = sum(p.numel for p in members)
    q = [p for p in members if p.linear is not None]
    plain = "fp32" if rules.float_param == 4 else "16-bit"
    if q and rules.quant.bits == 4:
        qt = rules.quant
        dq = " double-quant" if qt.double_quant else ""
        return f"{n / 1e6:,.1f}M params: {len(q)} Linears 4-bit {qt.quant_type}{dq} ({qt.storage} storage), rest {plain}"
    if q and rules.quant.bits == 8:
        return f"{n / 1e6:,.1f}M params: {len(q)} Linears int8, rest {plain}"
    return f"{n / 1e6:,.1f}M params, {plain}"


def _zero3_working_set(account: ModelAccount, rules: DtypeRules, offload: bool) -> MemoryRow:
    layers: dict[int, int] = {}
    biggest = 0
    for p in account.params:
        size = sum(rules.param(p))
        biggest = max(biggest, size)
        if p.layer is not None:
            layers[p.layer] = layers.get(p.layer, 0) + size
    work = max(biggest, 2 * max(layers.values(), default=0))
    where = "fetched from the CPU" if offload else "all-gathered"
    return MemoryRow("ZeRO-3 gathered weights", work, f"{where}: max(largest module, 2 decoder layers)")


def _training_state_rows(rules: DtypeRules, ds: Any, world: int, n_train: int, grad_bytes: int,
                         cpu: list[MemoryRow]) -> list[MemoryRow]:
    rows = []
    if ds is None:
        rows.append(MemoryRow("gradients", grad_bytes, f"{n_train:,} trainable params at their dtype"))
        if world > 1:
            rows.append(MemoryRow("DDP gradient buckets", grad_bytes, "DDP's all-reduce buckets copy every gradient"))
        rows.append(MemoryRow("optimizer: AdamW states", 2 * grad_bytes, "exp_avg + exp_avg_sq at the params' dtype"))
        return rows
    zero = ds.stage
    half = rules.act == 2
    g_part = _split(n_train * (2 if half else 4), world, zero >= 2)
    rows.append(MemoryRow("gradients", g_part, f"{n_train:,} trainable params, {'16-bit' if half else 'fp32'}"
                          + _zero_note(zero >= 2, world)))
    if zero == 0 and half:
        rows.append(MemoryRow("gradients: fp32 accumulation", n_train * 4, "DeepSpeed's bf16/fp16 optimizer"))
    states = [MemoryRow("optimizer: AdamW states", _split(8 * n_train, world, zero >= 1),
                        "2 fp32 states per trainable param" + _zero_note(zero >= 1, world)),
              MemoryRow("optimizer: fp32 master weights", _split(4 * n_train, world, zero >= 1),
                        "DeepSpeed's fp32 copy of its partition" + _zero_note(zero >= 1, world))]
    if ds.offload_optimizer == "cpu":
        cpu += [*states, MemoryRow("optimizer: fp32 gradient partition", _split(4 * n_train, world, True),
                                   "for the CPU Adam step")]
    else:
        rows += states
    return rows


def _activation_rows(stage: Any, account: ModelAccount, rules: DtypeRules, notes: list[str]) -> list[MemoryRow]:
    t = stage.train
    tokens = t.per_device_bsz * t.max_seq_len
    d = account.text
    e, er = rules.act, rules.residual
    per_layer = 2 * er * d["h"] + 2 * e * d["h"] + e * (d["h_q"] + 2 * d["h_kv"]) + e * d["h_q"] + 4 * e * d["inter"]
    lora_tok = _lora_act_per_token(stage, account, e)
    L = d["layers"]
    ckpt = t.gradient_checkpointing
    how = (f"checkpointed: {L} layer inputs + 1 layer recomputed" if ckpt
           else f"{L} layers x {per_layer:,} B/token")
    if ckpt:
        layers = tokens * (L * er * d["h"] + per_layer + 2 * er * d["h"])
        lora = tokens * -(-lora_tok // L)  # only the recomputed layer's
    else:
        layers, lora = tokens * L * per_layer, tokens * lora_tok
    rows = [MemoryRow("activations: LLM layers", layers,
                      f"{t.per_device_bsz} x {t.max_seq_len} tokens, {how}")]
    if lora:
        rows.append(MemoryRow("activations: LoRA", lora, f"dropout {stage.lora.dropout}: mask + dropped input per "
                                                         f"target" if stage.lora.dropout else "lora_A outputs"))
    # the worst case: training computes logits only where a label follows (runner._labelled_loss), and a batch
    # may be labelled at every position (causal_sft); prompts and audio make the real share smaller
    logits = tokens * (d["vocab"] * LOSS_BYTES_PER_LOGIT + (er + e) * d["h"])
    rows.append(MemoryRow("activations: logits + loss", logits, f"{tokens:,} tokens x {d['vocab']:,} vocab x 12 B "
                                                                f"(fp32 loss)"))
    rows += _audio_rows(stage, account, rules, sum(r.bytes for r in rows), notes)
    rows += _vision_rows(stage, account, rules, sum(r.bytes for r in rows), notes)
    return rows


def _vision_rows(stage: Any, account: ModelAccount, rules: DtypeRules, llm_acts: int,
                 notes: list[str]) -> list[MemoryRow]:
    """The vision tower's forward (frozen: a transient, with every layer's hidden states kept for the feature
    layer) and, when trained, the projector's saved activations; image tokens sit inside max_seq_len, so the LLM
    rows above already count them."""
    v = account.vision
    if v is None or not any(r.kind == "vision" for r in stage.data.train):
        return []
    t = stage.train
    images = max(1, t.max_seq_len // v["tokens_per_image"])
    crops = images * v["crops_per_image"] * t.per_device_bsz
    e, d, f, p = rules.act, v["d"], v["ffn"], v["patches"]
    # output_hidden_states keeps layers + 1 hidden states; one layer's working set: qkv, attention out, residual
    # stream and norm (6 d) and the MLP's intermediate (f)
    peak = crops * p * e * ((v["layers"] + 1) * d + 6 * d + f)
    rows = [MemoryRow("activations: vision encoder", max(0, peak - llm_acts),
                      f"frozen forward, {crops} crops x {p} patches: transient {_gb(peak)}")]
    if "projector" in stage.trainable:
        tokens = images * v["tokens_per_image"] * t.per_device_bsz
        rows.append(MemoryRow("activations: projector", tokens * e * (v["proj_in"] + 2 * account.text["h"]),
                              f"{tokens:,} image tokens"))
    notes.append(f"vision: up to {images} image(s) per example ({v['tokens_per_image']} tokens each, inside "
                 f"max_seq_len {t.max_seq_len}; {v['crops_per_image']} crop(s) of {p} patches through the tower)")
    return rows


def _bucket_rows(stage: Any, hidden: int, rules: DtypeRules) -> list[MemoryRow]:
    """ZeRO's reduce (and ZeRO-3 prefetch) buckets, sized like the HF integration fills 'auto' (hidden^2)."""
    ds = stage.deepspeed
    if ds is None or ds.stage == 0:
        return []
    e = rules.act
    reduce = hidden * hidden if ds.reduce_bucket_size == "auto" else ds.reduce_bucket_size
    prefetch = 0
    if ds.stage == 3:
        prefetch = int(0.9 * hidden * hidden) if ds.stage3_prefetch_bucket_size == "auto" \
            else ds.stage3_prefetch_bucket_size
    what = f"reduce bucket {reduce:,}" + (f" + prefetch {prefetch:,}" if prefetch else "")
    return [MemoryRow("ZeRO buckets", e * (reduce + prefetch), f"{what} elements")]


def _lora_act_per_token(stage: Any, account: ModelAccount, e: int) -> int:
    """LoRA activation bytes per token, summed over every decoder layer."""
    lora = stage.lora
    if lora is None or "lora" not in stage.trainable:
        return 0
    per_in = (1 + e) if lora.dropout > 0 else 0
    return sum(per_in * lin.in_features + e * lora.r for lin in lora_shapes(account, lora.targets))


def _audio_rows(stage: Any, account: ModelAccount, rules: DtypeRules, llm_acts: int,
                notes: list[str]) -> list[MemoryRow]:
    a = account.audio
    if a is None or not any(r.kind in ("asr", "speech_qa") for r in stage.data.train):
        return []
    t = stage.train
    chunks = max(1, t.max_seq_len // a["tokens_per_chunk"]) * t.per_device_bsz
    e, er = rules.act, rules.residual
    frames, mel_frames, d, f = a["frames"], a["mel_frames"], a["d"], a["ffn"]
    rows = []
    if "audio_encoder" in stage.trainable:
        layer = 2 * er * d + 6 * e * d + 2 * e * f
        per_frame = a["layers"] * er * d + layer if t.gradient_checkpointing else a["layers"] * layer
        convs = mel_frames * (a["mels"] + 2 * d) * e + frames * d * e
        rows.append(MemoryRow("activations: audio encoder", chunks * (frames * per_frame + convs),
                              f"trained: {chunks} chunks x {frames} frames"))
    else:
        peak = chunks * (mel_frames * (4 * a["mels"] + 2 * e * d) + frames * e * (6 * d + f))
        rows.append(MemoryRow("activations: audio encoder", max(0, peak - llm_acts),
                              f"frozen forward, {chunks} chunks x {frames} frames: transient {_gb(peak)}"))
    if "projector" in stage.trainable:
        audio_tokens = chunks * a["tokens_per_chunk"]
        rows.append(MemoryRow("activations: projector", audio_tokens * e * (a["proj_in"] + 2 * account.text["h"]),
                              f"{audio_tokens:,} audio tokens"))
    notes.append(f"audio: up to {chunks // t.per_device_bsz} x {mel_frames / MEL_FRAMES_PER_SECOND:g} s chunks per example "
                 f"({a['tokens_per_chunk']} tokens each, inside max_seq_len {t.max_seq_len})")
    return rows


def _margin(rows: list[MemoryRow], device: Device) -> MemoryRow:
    sub = sum(r.bytes for r in rows)
    if device == "cpu":
        return MemoryRow("allocator margin", int(MARGIN_FRACTION * sub), f"{MARGIN_FRACTION:.0%} of the rest")
    return MemoryRow("CUDA context + allocator margin", MARGIN_FIXED_BYTES + int(MARGIN_FRACTION * sub),
                     f"1 GB + {MARGIN_FRACTION:.0%} of the rest")


def _setting(stage: Any, world: int, device: Device) -> str:
    t, q, ds = stage.train, stage.quant, stage.deepspeed
    quant = "unquantized" if q.bits == "none" else f"{q.bits}-bit" + (f" {q.quant_type}" if q.bits == 4 else "")
    if ds is None:
        par = "DDP" if world > 1 else "single process"
    else:
        off = [k for k, v in (("optimizer", ds.offload_optimizer), ("params", ds.offload_params)) if v == "cpu"]
        par = f"ZeRO-{ds.stage}" + (f" offload {'+'.join(off)}" if off else "")
    prec = t.precision if device == "gpu" else "fp32 (CPU)"
    ckpt = "checkpointing" if t.gradient_checkpointing else "no checkpointing"
    glob = t.per_device_bsz * t.grad_accum * world
    return (f"{quant}, {prec}, {par} x {world}, micro-batch {t.per_device_bsz} x accum {t.grad_accum} "
            f"(global {glob}), seq {t.max_seq_len}, {ckpt}")
