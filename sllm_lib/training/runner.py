"""Training stages (text_sft, asr_adapter, multitask) through the HF Trainer + PEFT.

Checkpoints hold only the trainable tensors (plus optimizer, scheduler, RNG and trainer state) and are
marked complete after everything is written; a re-run resumes from the newest complete one.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

from sllm_lib.data.encode import Example, ExampleDataset, SpeechCollator, encode_records, mixture_indices
from sllm_lib.data.records import ReadResult, classification_as_text_qa, read_records
from sllm_lib.models.adapters import apply_chain, prepare_trainable, save_stage_weights
from sllm_lib.models.builders import (
    chat_for,
    is_speech_model,
    load_base_model,
    load_model_config,
    load_tokenizer_and_features,
    resolve_model_path,
)
from sllm_lib.spec import DatasetRef
from sllm_lib.tracking.tracker import DatasetRecord
from sllm_lib.stage import StageContext, StageResult, new_output_tmp, publish_output
from sllm_lib.files import write_json_atomic
from sllm_lib.training.faults import fault_callbacks
from sllm_lib.training.interrupt import StageInterrupted, stop_callback, stop_requested

log = logging.getLogger(__name__)

COMPLETE_MARKER = "sllm_complete.json"
TRAINABLE_FILE = "trainable.safetensors"
LOSS_SUM_FILE = "sllm_loss_sum.json"  # in a checkpoint: the training loss summed over its steps (a resume continues it)
_CKPT = re.compile(r"^checkpoint-(\d+)$")


# ------------------------------------------------------------------------------------------ checkpoints


def complete_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint-N folder that carries the completion marker, oldest first (half-written
    ones are ignored)."""
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir()
                  if (m := _CKPT.match(p.name)) and p.is_dir() and (p / COMPLETE_MARKER).is_file())


def latest_complete_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint-N folder."""
    found = complete_checkpoints(folder)
    return found[-1][1] if found else None


def rotate_scored_checkpoints(folder: Path, keep: int) -> list[Path]:
    """A watched stage's rotation: of the complete checkpoints beyond the newest `keep`, delete those the watcher
    has scored (STAGE_DIR/watch/step-N.json); an unscored one waits for its score. Returns what was deleted."""
    found = complete_checkpoints(folder)
    deleted = []
    for step, p in found[:-keep] if keep > 0 else found:
        if (folder.parent / "watch" / f"step-{step}.json").is_file():
            shutil.rmtree(p, ignore_errors=True)
            deleted.append(p)
    return deleted


def watch_stop_callback(stage_dir: Path, world_size: int) -> Any:
    """A TrainerCallback for a watched stage: once the watcher's early-stop rule has written STOP_REQUESTED, stop
    right after the next checkpoint is saved (every rank at the same step); the stage then publishes as usual."""
    from transformers import TrainerCallback

    stop_file = stage_dir / "STOP_REQUESTED"

    class StopWhenWatcherSays(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            wanted = stop_file.is_file()
            if world_size > 1:  # the file is rank 0's to see (no shared folder needed): all ranks agree
                import torch
                import torch.distributed as dist

                flag = torch.tensor([1 if wanted else 0])
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                wanted = bool(flag.item())
            if wanted and not control.should_training_stop:
                log.warning("early stop (the checkpoint watcher's rule): stopping after checkpoint %d",
                            state.global_step)
                control.should_training_stop = True
            return control

    return StopWhenWatcherSays()


def _holds_final_step(checkpoint: Path) -> bool:
    """True when a complete checkpoint already is the last optimizer step of its run."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return int(state.get("max_steps") or 0) > 0 and int(state["global_step"]) >= int(state["max_steps"])


def checkpoint_loss_sum(checkpoint: Path) -> tuple[int, float]:
    """(step, training loss summed over steps 1..step) of a complete checkpoint: its LOSS_SUM_FILE, or, for a
    checkpoint written before that file existed, the logged interval means weighted by their lengths."""
    try:
        data = json.loads((checkpoint / LOSS_SUM_FILE).read_text(encoding="utf-8"))
        return int(data["step"]), float(data["loss_sum"])
    except (OSError, ValueError, KeyError):
        pass
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    total, last = 0.0, 0
    for h in state.get("log_history", []):
        if "loss" in h and "step" in h:
            total += float(h["loss"]) * (int(h["step"]) - last)
            last = int(h["step"])
    return int(state["global_step"]), total


def _record_resume(ctx: StageContext, step: int) -> None:
    """The resume itself in the stage's run: which attempt, from which step (tags and a train/resume event)."""
    if not ctx.is_main:
        return
    attempts = ctx.stage_dir / "attempts.jsonl"
    try:
        attempt = max(1, sum(1 for line in attempts.read_text(encoding="utf-8").splitlines() if line.strip()))
    except OSError:
        attempt = 1
    ctx.tracker.set_tags({"sllm.attempt": str(attempt), "sllm.resumed_from_step": str(step)})
    ctx.tracker.log_metrics({"train/resume": float(attempt)}, step=step)


def _trainer_class() -> type:
    from safetensors.torch import load_file, save_file
    from transformers import Trainer

    from sllm_lib.data.sampler import LengthGroupedSampler

    class StageTrainer(Trainer):
        """Trainer that checkpoints only trainable tensors, marks complete checkpoints, and groups by length."""

        group_lengths: list[int] | None = None
        teacher: Any = None  # a distill stage's teacher (eval mode, no gradients)
        alpha: float = 0.5
        temperature: float = 2.0
        vocab: int = 0  # logits compared over the shared tokenizer's ids

        labelled_logits: bool = True  # off once a model is seen not to take a boolean `logits_to_keep`
        labelled_logits_seen_working: bool = False

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if self.teacher is None:
                loss_outputs = self._labelled_loss(model, inputs, num_items_in_batch) if self.labelled_logits else None
                if loss_outputs is None:
                    return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                                num_items_in_batch=num_items_in_batch)
                return loss_outputs if return_outputs else loss_outputs[0]
            loss, outputs = distillation_loss(model, self.teacher, inputs, alpha=self.alpha,
                                              temperature=self.temperature, vocab=self.vocab)
            return (loss, outputs) if return_outputs else loss

        def _labelled_loss(self, model: Any, inputs: dict, num_items_in_batch: Any) -> tuple[Any, Any] | None:
            """The Trainer's causal-LM loss with logits computed only where a label follows (None: not applicable).

            An ASR example is ~90 % audio and prompt positions whose logits the loss never reads; a 131K vocabulary
            makes those logits a large share of the step's compute and memory. transformers' `logits_to_keep`
            takes a (batch, seq) boolean mask and returns the kept positions' logits flattened; the loss below is
            the one `ForCausalLMLoss` computes on full logits (float32 cross-entropy, mean over labelled tokens,
            or their sum over `num_items_in_batch` when the Trainer passes it), so the gradients are the same.
            """
            import torch
            import torch.nn.functional as F

            labels = inputs.get("labels")
            if labels is None or labels.dim() != 2:
                return None
            unwrapped = self.accelerator.unwrap_model(model)
            if not self.labelled_logits_seen_working and not _takes_logits_to_keep(unwrapped):
                self.labelled_logits = False
                return None
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = labels[:, 1:] != -100
            targets = labels[:, 1:][keep[:, :-1]]
            unlabelled = {k: v for k, v in inputs.items() if k != "labels"}
            if self.labelled_logits_seen_working:
                outputs = model(**unlabelled, logits_to_keep=keep)
            else:
                try:  # the first batch: remote-code models may name logits_to_keep but only take an int
                    outputs = model(**unlabelled, logits_to_keep=keep)
                except (TypeError, IndexError, RuntimeError) as exc:  # a real error recurs on the full-logits path
                    log.info("%s does not take a boolean logits_to_keep (%s): full logits for the loss",
                             type(unwrapped).__name__, exc)
                    self.labelled_logits = False
                    return None
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            if logits.dim() != 2 or logits.shape[0] != targets.numel():
                # this architecture reads logits_to_keep the older way (an int or one index list for every row)
                log.info("%s does not take a boolean logits_to_keep: full logits for the loss",
                         type(unwrapped).__name__)
                self.labelled_logits = False
                return None
            self.labelled_logits_seen_working = True
            if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                loss = F.cross_entropy(logits.float(), targets, reduction="sum")
                loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
                if self.args.average_tokens_across_devices:  # as Trainer.compute_loss scales a model's own loss
                    loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1
                                   else self.args.n_gpu)
            else:
                loss = F.cross_entropy(logits.float(), targets)
            return loss, outputs

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            out = Path(output_dir or self.args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            names = [n for n, p in self.model.named_parameters() if p.requires_grad]
            if state_dict is not None and self.is_deepspeed_enabled:
                # DeepSpeed hands over the gathered weights (ZeRO-3 partitions leave the parameters empty here)
                missing = [n for n in names if n not in state_dict]
                if missing:
                    raise RuntimeError(f"DeepSpeed's state dict lacks {len(missing)} trainable tensors, e.g. "
                                       f"{missing[0]}; is stage3_gather_16bit_weights_on_model_save off?")
                state = {n: state_dict[n].detach().cpu().contiguous() for n in names}
            else:
                state = {n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
            empty = [n for n, t in state.items() if t.numel() == 0]
            if empty:
                raise RuntimeError(f"refusing to save {len(empty)} empty trainable tensors (e.g. {empty[0]}): "
                                   f"partitioned ZeRO-3 weights were not gathered")
            save_file(state, str(out / TRAINABLE_FILE))

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            model = model or self.model
            state = load_file(str(Path(resume_from_checkpoint) / TRAINABLE_FILE))
            names = {n for n, p in model.named_parameters() if p.requires_grad}
            if set(state) != names:
                raise ValueError(
                    f"{resume_from_checkpoint}: checkpoint tensors do not match this stage's trainable parameters "
                    f"({len(set(state) ^ names)} differ); was the spec changed? delete the folder to start over"
                )
            model.load_state_dict(state, strict=False)

        prior_loss_sum: float = 0.0  # the training loss summed over the steps of earlier attempts (a resume)

        def loss_sum(self) -> float:
            """The training loss summed over every step so far, this attempt's and the earlier ones'."""
            pending = getattr(self, "_tr_loss", None)  # steps not yet drained into the total at a logging step
            return self.prior_loss_sum + self._total_loss_scalar + (float(pending.item()) if pending is not None
                                                                    else 0.0)

        watch_keep: int | None = None  # a watched stage: checkpoints kept (the scored beyond it are deleted)

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            super()._save_checkpoint(model, trial)
            ckpt = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            if self.args.should_save:  # the loss sum first: the marker makes the checkpoint complete
                write_json_atomic(ckpt / LOSS_SUM_FILE, {"step": self.state.global_step, "loss_sum": self.loss_sum()})
                write_json_atomic(ckpt / COMPLETE_MARKER, {"step": self.state.global_step, "time": time.time()})
                if self.watch_keep is not None:
                    rotate_scored_checkpoints(Path(self.args.output_dir), self.watch_keep)

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            if self.group_lengths is None:
                return super()._get_train_sampler(train_dataset)
            return LengthGroupedSampler(self.group_lengths, self.args.per_device_train_batch_size, seed=self.args.seed)

    return StageTrainer


def _takes_logits_to_keep(model: Any) -> bool:
    """Whether the (PEFT-unwrapped) model's forward names `logits_to_keep` (causal LMs of transformers 4.50+)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def distillation_loss(student: Any, teacher: Any, inputs: dict, *, alpha: float, temperature: float,
                      vocab: int) -> tuple[Any, Any]:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE, over the answer tokens only (labels != -100).

    Both distributions are softened by T and compared on the first `vocab` logits (a shared tokenizer; models may
    pad their embedding matrices differently).
    """
    import torch
    import torch.nn.functional as F

    outputs = student(**inputs)
    labels = inputs["labels"][:, 1:]
    mask = labels != -100
    with torch.no_grad():
        t_logits = teacher(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")).logits
    s = outputs.logits[:, :-1, :vocab][mask].float() / temperature
    t = t_logits[:, :-1, :vocab][mask].float() / temperature
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True, reduction="batchmean")
    loss = alpha * kl * temperature**2 + (1 - alpha) * outputs.loss
    return loss, outputs


def load_teacher(stage: Any, ctx: StageContext, student_tokenizer: Any, dtype: str) -> tuple[Any, int]:
    """The distill stage's teacher (eval mode, frozen) and the vocabulary size both share; a teacher whose
    tokenizer differs from the student's is refused before any training (logits must index the same tokens)."""
    from sllm_lib.models.refs import model_ref_path
    from sllm_lib.errors import JobSpecError
    from sllm_lib.models.builders import folder_model_spec

    ref = stage.teacher
    path = str(model_ref_path(ref, ctx.tracking_uri or ""))
    spec = folder_model_spec(path)
    spec = spec.model_copy(update={"trust_remote_code": spec.trust_remote_code or stage.teacher_trust_remote_code})
    config = load_model_config(path, spec)
    if is_speech_model(config):
        raise JobSpecError(f"stage {stage.name!r}: teacher {ref!r} is a speech LLM; distill needs a text-only causal LM")
    teacher_tok, _ = load_tokenizer_and_features(path, trust_remote_code=spec.trust_remote_code)
    a, b = teacher_tok.get_vocab(), student_tokenizer.get_vocab()
    if a != b:
        diff = next((t for t in sorted(set(a) | set(b)) if a.get(t) != b.get(t)), None)
        raise JobSpecError(
            f"stage {stage.name!r}: teacher {ref!r} and the student ({ctx.job.model.base}) use different "
            f"tokenizers ({len(a)} vs {len(b)} tokens; e.g. {diff!r} is id {a.get(diff)} vs {b.get(diff)}): "
            f"distillation compares logits token by token, so both need the same vocabulary")
    teacher = load_base_model(path, model=spec, dtype=dtype, config=config)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    log.info("stage=%s teacher %s: %d parameters (student vocabulary %d)", stage.name, ref,
             sum(p.numel() for p in teacher.parameters()), len(b))
    return teacher, len(b)


# ------------------------------------------------------------------------------------------ data


def load_datasets(refs: list[DatasetRef]) -> list[ReadResult]:
    """Read and validate each dataset of a stage."""
    out = []
    for ref in refs:
        res = read_records(ref.path, ref.kind, on_bad_record=ref.on_bad_record, labels=ref.labels,
                           max_text_chars=ref.max_text_chars)
        if ref.kind == "classification":  # instruction tuning: the prompt asks, the label is the answer
            res = classification_as_text_qa(res, ref.instruction, ref.task_name)
        if ref.max_records:
            res.records = res.records[: ref.max_records]
        out.append(res)
    return out


def dataset_records(results: list[ReadResult], context: str) -> list[DatasetRecord]:
    """Lineage records (name, digest, source, rows) for the tracker."""
    return [DatasetRecord(name=Path(r.path).stem, digest=r.digest(), source=str(r.path), num_rows=len(r.records),
                          context=context) for r in results]


def encode_mixture(
    results: list[ReadResult], refs: list[DatasetRef], *, tokenizer: Any, chat: Any, features: Any, max_seq_len: int,
    seed: int,
) -> list[Example]:
    """Encode every record once, then draw the weighted mixture for one epoch."""
    encoded: list[list[Example]] = []
    for res in results:
        rows = [ex for ex in encode_records(res.records, res.kind, tokenizer=tokenizer, chat=chat,
                                            feature_extractor=features, max_seq_len=max_seq_len) if ex is not None]
        if len(rows) < len(res.records):
            log.warning("%s: %d records longer than max_seq_len=%d skipped", res.path, len(res.records) - len(rows),
                        max_seq_len)
        encoded.append(rows)
    if len(encoded) == 1:
        return encoded[0]
    picks = mixture_indices([len(e) for e in encoded], [r.weight for r in refs], seed=seed)
    return [encoded[d][i] for d, i in picks]


# ------------------------------------------------------------------------------------------ progress


def _status_callback(stage_name: str, ctx: StageContext, history: list[tuple[int, float]]) -> Any:
    from transformers import TrainerCallback

    class StatusLine(TrainerCallback):
        """One fixed-format line per logging interval, same numbers to the tracker."""

        def __init__(self) -> None:
            self.t_last = time.perf_counter()
            self.step_last = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t_last, self.step_last = time.perf_counter(), state.global_step
            # a resumed stage (re-run, requeue, Ray restart) logs into the same run: the steps an earlier attempt
            # already logged (those after its last checkpoint, trained again now) are not logged a second time
            self.logged_upto = ctx.tracker.last_step("train/loss") if ctx.is_main else None

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if logs and "eval_loss" in logs and ctx.is_main:  # train.eval_at_start's score, and the final one
                log.info("stage=%s step %d/%d | val_loss %.3f", stage_name, state.global_step, state.max_steps,
                         logs["eval_loss"])
                ctx.tracker.log_metrics({"val/loss": float(logs["eval_loss"])}, step=state.global_step)
            if not logs or "loss" not in logs:
                return
            history.append((state.global_step, float(logs["loss"])))
            if not ctx.is_main:
                return
            now = time.perf_counter()
            dt = (now - self.t_last) / max(1, state.global_step - self.step_last) * 1000
            self.t_last, self.step_last = now, state.global_step
            lr = float(logs.get("learning_rate", 0.0))
            log.info("stage=%s step %d/%d | loss %.3f | lr %.1e | %.0f ms/step", stage_name, state.global_step,
                     state.max_steps, logs["loss"], lr, dt)
            if self.logged_upto is not None and state.global_step <= self.logged_upto:
                return
            ctx.tracker.log_metrics({"train/loss": float(logs["loss"]), "train/lr": lr,
                                     "train/grad_norm": float(logs.get("grad_norm", 0.0) or 0.0)},
                                    step=state.global_step)

    return StatusLine()


# ------------------------------------------------------------------------------------------ the stage


def _precision(requested: str) -> dict[str, bool]:
    import torch

    if requested == "fp32" or not torch.cuda.is_available():
        if requested != "fp32":
            log.warning("precision=%s needs a GPU; training in fp32 on CPU", requested)
        return {"bf16": False, "fp16": False}
    return {"bf16": requested == "bf16", "fp16": requested == "fp16"}


def _audio_params_idle_in_some_batches(stage: Any) -> bool:
    """Text-only batches leave the projector/encoder without gradients; DDP must then look for unused ones."""
    audio_groups = {"projector", "audio_encoder"} & set(stage.trainable)
    return bool(audio_groups) and any(ref.kind == "text_qa" for ref in stage.data.train)


def _ddp_backend(ctx: StageContext) -> dict[str, str]:
    """nccl on GPU, gloo on CPU; only for a distributed run (naming a backend alone makes accelerate expect one)."""
    import torch

    if ctx.world_size <= 1:
        return {}
    return {"ddp_backend": "nccl" if torch.cuda.is_available() else "gloo"}


def _deepspeed_args(stage: Any, ctx: StageContext, model: Any) -> dict[str, Any]:
    """TrainingArguments for a DeepSpeed stage (empty without one); sets up the process group it needs."""
    if stage.deepspeed is None:
        return {}
    import torch

    from sllm_lib.deepspeed_config import runtime_config
    from sllm_lib.training.deepspeed_env import prepare_deepspeed_process

    cuda = torch.cuda.is_available()
    text = getattr(model.config, "text_config", None) or model.config
    cfg = runtime_config(stage.deepspeed, hidden_size=getattr(text, "hidden_size", None), cuda=cuda)
    args: dict[str, Any] = {"deepspeed": cfg, "use_cpu": False}
    if prepare_deepspeed_process(cuda=cuda):
        args["accelerator_config"] = {"use_configured_state": True}
    return args


def _strict_json(value: Any) -> Any:
    """A copy readable by strict JSON parsers: accelerate sets steps_per_print to float('inf') ("never")."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return 10**12 if value > 0 else -(10**12)
    return value


def _training_args(stage: Any, ctx: StageContext, model: Any) -> Any:
    import torch
    from transformers import TrainingArguments

    t = stage.train
    ds = _deepspeed_args(stage, ctx, model)
    kwargs: dict[str, Any] = {"use_cpu": not torch.cuda.is_available(), **_ddp_backend(ctx)}
    kwargs.update(ds)
    if ds:
        kwargs.pop("ddp_backend", None)  # DeepSpeed makes its own process group (gloo on CPU, nccl on GPU)
    return TrainingArguments(
        output_dir=str(ctx.stage_dir / "checkpoints"), per_device_train_batch_size=t.per_device_bsz,
        per_device_eval_batch_size=t.per_device_bsz, gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs or 1.0, max_steps=t.max_steps or -1, learning_rate=t.lr,
        warmup_steps=t.warmup_steps, weight_decay=t.weight_decay, lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm, seed=t.seed, data_seed=t.seed, save_strategy="steps", save_steps=t.save_steps,
        # a watched stage rotates its own checkpoints: one is deleted only once the watcher has scored it
        save_total_limit=None if stage.watch is not None else t.save_total_limit,
        logging_steps=t.logging_steps, logging_first_step=True,
        report_to="none", disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        eval_strategy="no", ddp_find_unused_parameters=_audio_params_idle_in_some_batches(stage),
        **kwargs, **_precision(t.precision),
    )


def _log_padding(stage: Any, ctx: StageContext, lengths: list[int]) -> None:
    """Report the padding share of this stage's batching next to plain shuffled batches."""
    from sllm_lib.data.sampler import length_grouped_batches, padding_share, random_batches

    bsz, seed = stage.train.per_device_bsz, stage.train.seed
    plain = padding_share(lengths, random_batches(lengths, bsz, seed=seed))
    used = padding_share(lengths, length_grouped_batches(lengths, bsz, seed=seed)) if stage.train.group_by_length \
        else plain
    log.info("stage=%s %d examples | padding share %.1f%% (shuffled batches: %.1f%%)", stage.name, len(lengths),
             100 * used, 100 * plain)
    if ctx.is_main and ctx.tracker.last_step("data/padding_share") is None:  # once per run, not per attempt
        ctx.tracker.log_metrics({"data/padding_share": used, "data/padding_share_shuffled": plain}, step=0)


def check_architecture(stage: Any, config: Any, base: str) -> None:
    """causal_sft needs a text-only causal LM; vision_sft a vision-language model; the speech stages the speech
    LLM (checked from the config, before any weight loads)."""
    from sllm_lib.errors import JobSpecError
    from sllm_lib.models.builders import is_vision_model
    from sllm_lib.spec import STAGE_TYPES

    family = STAGE_TYPES[stage.kind].model_family  # the architecture the stage kind trains
    vision = is_vision_model(config)
    if (family == "vision") != vision:
        want = "a vision-language model (e.g. Llava, Qwen2-VL, Phi-3.5-vision)" if vision is False else \
            "the stage kind vision_sft"
        raise JobSpecError(f"stage {stage.name!r} ({stage.kind}): model.base {base!r} is {config.model_type}; "
                           f"this needs {want}")
    if vision:
        return
    speech = is_speech_model(config)
    text_only = family == "causal"
    if text_only and speech:
        raise JobSpecError(f"stage {stage.name!r} ({stage.kind}): model.base {base!r} is a speech LLM "
                           f"({config.model_type}); use text_sft for its text stage, or a text-only causal LM")
    if not text_only and not speech:
        raise JobSpecError(f"stage {stage.name!r} ({stage.kind}): model.base {base!r} is a text-only "
                           f"{config.model_type} model; {stage.kind} needs the speech LLM (use causal_sft)")


def run_training_stage(stage: Any, ctx: StageContext) -> StageResult:
    """Fine-tune from the upstream chain on the stage's data; publish adapter/modules under output/."""
    import torch
    from transformers import TrainerState, set_seed

    t0 = time.perf_counter()
    path = resolve_model_path(ctx.job.model)
    config = load_model_config(path, ctx.job.model)
    check_architecture(stage, config, ctx.job.model.base)
    tokenizer, features = load_tokenizer_and_features(path, revision=ctx.job.model.revision,
                                                      trust_remote_code=ctx.job.model.trust_remote_code)
    train_sets, val_sets = load_datasets(stage.data.train), load_datasets(stage.data.val)
    if ctx.is_main:
        ctx.tracker.log_datasets(dataset_records(train_sets, "train") + dataset_records(val_sets, "validation"))
    dtype = "float32" if not torch.cuda.is_available() or stage.train.precision == "fp32" else (
        "bfloat16" if stage.train.precision == "bf16" else "float16")
    teacher, vocab = load_teacher(stage, ctx, tokenizer, dtype) if stage.kind == "distill" else (None, 0)
    model = load_base_model(path, model=ctx.job.model, quant=stage.quant, dtype=dtype, config=config)
    chat = chat_for(tokenizer, model.config, system_prompt=getattr(stage, "system_prompt", None), processor=features,
                    render=getattr(stage, "render", None))
    model = apply_chain(model, ctx.chain)
    set_seed(stage.train.seed)  # right before the LoRA init: the Trainer seeds only after the model exists
    model = prepare_trainable(model, lora=stage.lora, trainable=list(stage.trainable),
                              gradient_checkpointing=stage.train.gradient_checkpointing)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    log.info("stage=%s trainable %s: %d of %d parameters (%.2f%%)", stage.name, stage.trainable, n_trainable, n_total,
             100.0 * n_trainable / n_total)

    enc = dict(tokenizer=tokenizer, chat=chat, features=features, max_seq_len=stage.train.max_seq_len)
    train_ds = ExampleDataset(encode_mixture(train_sets, stage.data.train, seed=stage.train.seed, **enc))
    val_ds = ExampleDataset(encode_mixture(val_sets, stage.data.val, seed=stage.train.seed, **enc)) if val_sets else None
    history: list[tuple[int, float]] = []
    trainer = _trainer_class()(
        model=model, args=_training_args(stage, ctx, model), train_dataset=train_ds, eval_dataset=val_ds,
        data_collator=SpeechCollator(pad_id=chat.pad),
        callbacks=[_status_callback(stage.name, ctx, history), stop_callback(ctx.world_size), *fault_callbacks(ctx),
                   *ctx.trainer_callbacks,
                   *([watch_stop_callback(ctx.stage_dir, ctx.world_size)] if stage.watch is not None else [])],
    )
    if stage.watch is not None:
        trainer.watch_keep = stage.train.save_total_limit
    if stage.kind == "distill":
        trainer.teacher = teacher.to(trainer.args.device)
        trainer.alpha, trainer.temperature, trainer.vocab = stage.alpha, stage.temperature, vocab
        trainer.model_accepts_loss_kwargs = False  # the loss is a per-batch mean: the Trainer averages accumulation
    if ctx.prepare_trainer is not None:
        trainer = ctx.prepare_trainer(trainer)
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our status line replaces its raw dict prints
    if stage.train.group_by_length:
        trainer.group_lengths = train_ds.lengths()
    _log_padding(stage, ctx, train_ds.lengths())
    resume = latest_complete_checkpoint(ctx.stage_dir / "checkpoints")
    start_step, prior_sum = (0, 0.0) if resume is None else checkpoint_loss_sum(resume)
    trainer.prior_loss_sum = prior_sum
    if resume is not None:
        log.info("stage=%s resuming from %s", stage.name, resume)
        _record_resume(ctx, start_step)
    # a resumed attempt's checkpoint already holds the step-0 score in its log history
    trainer.args.eval_on_start = bool(stage.train.eval_at_start and val_ds is not None and len(val_ds)
                                      and resume is None)
    loop_s = 0.0
    if resume is not None and _holds_final_step(resume):
        # re-run after the last step was saved (e.g. a requeue racing the job's end): publish, don't train on
        log.info("stage=%s %s already holds the final step; publishing it", stage.name, resume)
        trainer._load_from_checkpoint(str(resume))
        trainer.state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
        train_loss = prior_sum / start_step if start_step else float("nan")
    else:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        # the Trainer's training_loss averages this attempt's steps only; the stage's covers every step
        steps_now = int(trainer.state.global_step) - start_step
        train_loss = (prior_sum + out.training_loss * steps_now) / max(1, int(trainer.state.global_step))
        loop_s = float(out.metrics.get("train_runtime", 0.0))
    hf_ds = getattr(trainer.args, "hf_deepspeed_config", None)
    if hf_ds is not None and ctx.is_main:  # the config DeepSpeed ran with, "auto" values filled in
        write_json_atomic(ctx.stage_dir / "deepspeed_config.json", _strict_json(hf_ds.config))
    if ctx.world_size > 1:  # each rank's view of the (all-reduced) loss, for checking a distributed run
        write_json_atomic(ctx.stage_dir / f"losses.rank{ctx.rank}.json", history)
    if stage.watch is not None and (ctx.stage_dir / "STOP_REQUESTED").is_file() \
            and trainer.state.global_step < trainer.state.max_steps:
        log.info("stage=%s stopped early at step %d of %d (the watcher's rule); publishing", stage.name,
                 trainer.state.global_step, trainer.state.max_steps)
    elif stop_requested() and trainer.state.global_step < trainer.state.max_steps:
        raise StageInterrupted(f"stage {stage.name!r} stopped at step {trainer.state.global_step} after a complete "
                               f"checkpoint; run it again to resume")
    metrics: dict[str, float] = {"train_loss": float(train_loss), "train_runtime_s": time.perf_counter() - t0}
    if stage.watch is not None and (ctx.stage_dir / "STOP_REQUESTED").is_file():
        metrics["early_stop_step"] = float(trainer.state.global_step)
    if loop_s:
        metrics["train_loop_s"] = loop_s  # the optimizer steps alone (no loading, encoding or saving)
    if torch.cuda.is_available():  # what the memory planner predicts, measured (this rank)
        metrics["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    start = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == 0]
    if stage.train.eval_at_start and start:
        metrics["val_loss_start"] = float(start[0])
    if val_ds is not None and len(val_ds):
        ev = trainer.evaluate()
        metrics["val_loss"] = float(ev["eval_loss"])
        metrics["val_perplexity"] = float(math.exp(min(ev["eval_loss"], 50.0)))
    if ctx.is_main:
        ctx.tracker.log_metrics({f"final/{k}": v for k, v in metrics.items()}, step=trainer.state.global_step)
    return _publish_training_output(stage, ctx, model, trainer, history, metrics, train_sets)


def _publish_training_output(
    stage: Any, ctx: StageContext, model: Any, trainer: Any, history: list[tuple[int, float]],
    metrics: dict[str, float], train_sets: list[ReadResult],
) -> StageResult:
    steps = int(trainer.state.global_step)
    # the whole stage's: a resumed Trainer's log_history holds the earlier attempts' logs (from the checkpoint)
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h] or [v for _, v in history]
    result = StageResult(stage=stage.name, kind=stage.kind, output_dir=str(ctx.output_dir), steps=steps,
                         loss_first=losses[0] if losses else None, loss_last=losses[-1] if losses else None,
                         metrics=metrics)
    from sllm_lib.training.deepspeed_env import gathered_trainable

    with gathered_trainable(model) as digests:  # every rank enters: under ZeRO-3 gathering is a collective
        if not ctx.is_main:
            return result
        return _write_training_output(stage, ctx, model, steps, metrics, train_sets, result, digests)


def _write_training_output(
    stage: Any, ctx: StageContext, model: Any, steps: int, metrics: dict[str, float], train_sets: list[ReadResult],
    result: StageResult, rank_digests: list[str],
) -> StageResult:
    tmp = new_output_tmp(ctx)
    try:
        written = save_stage_weights(model, tmp, trainable=list(stage.trainable))
        manifest = {
            "stage": stage.name, "kind": stage.kind, "spec_hash": ctx.spec_hash, "base_model": ctx.job.model.base,
            "chain": [str(p) for p in ctx.chain], "trainable": list(stage.trainable), "written": written,
            "lora": stage.lora.model_dump() if stage.lora else None, "steps": steps, "metrics": metrics,
            "system_prompt": getattr(stage, "system_prompt", None),
            "teacher": getattr(stage, "teacher", None),
            "vision_prompt": {"prompt": stage.prompt, "default_instruction": stage.default_instruction}
            if stage.model_family == "vision" else None,
            "quant": stage.quant.model_dump(), "deepspeed": stage.deepspeed.model_dump() if stage.deepspeed else None,
            "world_size": ctx.world_size, "trainable_sha256_by_rank": rank_digests, "datasets": {str(r.path): r.digest() for r in train_sets},
        }
        publish_output(tmp, ctx, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
