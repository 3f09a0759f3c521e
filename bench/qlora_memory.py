"""QLoRA through sllm vs a plain HF Trainer + PEFT script: tokens/s and peak GPU memory, and the memory
planner's prediction checked against the measured peak, side by side in one run.

    python bench/qlora_memory.py --model voxtral-mini-3b --zero off,2,3 --steps 20 --bsz 4 --seq 1024
    python bench/qlora_memory.py --device cpu --model tiny --steps 2 --bsz 2 --seq 128   # smoke run, no GPU

What runs, for every model and ZeRO mode (`--zero off,2,3`; "off" = no DeepSpeed), each in its own process:

* sllm: a one-stage `text_sft` spec (4-bit nf4 + double quant base, LoRA r=16/alpha=32/dropout 0.05 on q,k,v,o,
  gate,up,down of the language model, gradient checkpointing, bf16 on a GPU / fp32 on the CPU, micro-batch
  `--bsz`, `--steps` optimizer steps, no length grouping, no checkpoint saved during the run) submitted with
  `python -m launch.cli submit` on a one-GPU local profile (one CPU process with `--device cpu`). Its
  result.json gives `train_loop_s` (the Trainer's train_runtime) and `peak_gpu_mem_gb`
  (torch.cuda.max_memory_allocated, reset right before training).
* baseline: what a user would write by hand (`_baseline` below, `python bench/qlora_memory.py --_baseline
  ARGS.json`): VoxtralForConditionalGeneration.from_pretrained with the same BitsAndBytesConfig,
  peft.prepare_model_for_kbit_training, get_peft_model with the same LoRA, transformers.Trainer with the same
  batch, steps, learning rate, gradient checkpointing and precision; under ZeRO the DeepSpeed config the sllm run
  resolved and wrote to its stage folder (so both run the same DeepSpeed settings), in a one-process world
  (RANK=0, WORLD_SIZE=1, MASTER_ADDR/PORT set as a launcher would). The same records, tokenised with the
  tokenizer directly ([bos][INST]prompt[/INST]answer</s>, loss on the answer) and padded to --seq; measured the
  same way (train_runtime; max_memory_allocated reset right before trainer.train()).
* planner: `sllm_lib.memory.plan_memory` for the same spec on a one-GPU profile. max_memory_allocated counts
  live tensors only, so the planner's figure compared with it leaves out its "CUDA context + allocator margin"
  row (1 GB + 10 %, which covers what max_memory_reserved and the CUDA context add); the table shows the total
  with the margin too. Planner error = (planner - measured) / measured of the sllm run; outside +-15 % is
  flagged.

tokens/s = steps x bsz x seq / train_loop_s: every example is exactly --seq tokens (synthetic Korean text_qa
records, written once), so no padding is counted. train_loop_s includes the first step's warm-up on both sides.

Models (random weights from a config, materialised once as bf16 safetensors under --workdir, seed fixed; the
stage runner loads Voxtral-architecture models only, so every model is a Voxtral):
* voxtral-mini-3b: the bundled config of mistralai/Voxtral-Mini-3B-2507 (32-layer Whisper-large encoder,
  3B Llama-style LLM, 131072 vocab, untied lm_head).
* llama-3.2-1b: Voxtral-Mini's audio encoder and projector with a language model of Llama-3.2-1B's dimensions
  (hidden 2048, 16 layers, intermediate 8192, 32 heads, 8 KV heads, head_dim 64, vocab 128256), i.e. what
  QLoRA on a 1B LLM costs. Unlike Llama-3.2-1B itself its lm_head is not tied to the embeddings: transformers'
  Voxtral class never ties them (whatever text_config says), so it holds a separate 128256 x 2048 lm_head.
* tiny: the `tiny:voxtral` preset (for the CPU smoke run).
All use sllm's character-level Korean tokenizer (its ids fit any of these vocabularies); the embedding and
lm_head keep the model's full vocabulary, so the logits cost what they would with the real tokenizer.

On `--device cpu` there is no GPU memory to measure: the table gives tokens/s and the planner's (CPU, fp32)
prediction only. Figures are written to --out as JSON (default <workdir>/qlora_memory.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VOXTRAL_MINI = "mistralai/Voxtral-Mini-3B-2507"
LLAMA_1B = "meta-llama/Llama-3.2-1B-Instruct"
MODELS = ("tiny", "llama-3.2-1b", "voxtral-mini-3b")
STAGE = "qlora"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05,
        "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
LR = 2e-4
SEED = 42
TOLERANCE = 0.15
MODEL_VERSION = 1  # bump when the materialised folders change


# ------------------------------------------------------------------------------------------ model and data


def _real_size_config(name: str, tokenizer: Any) -> Any:
    """A Voxtral config of real size (see the module docstring), with the char tokenizer's special ids."""
    from transformers import VoxtralConfig

    from sllm_lib.memory import load_model_config
    from sllm_lib.spec import ModelSpec

    voxtral, _ = load_model_config(ModelSpec(base=VOXTRAL_MINI))
    if name == "voxtral-mini-3b":
        config = voxtral
    else:
        llama, _ = load_model_config(ModelSpec(base=LLAMA_1B))
        config = VoxtralConfig(audio_config=voxtral.audio_config.to_dict(), text_config=llama.to_dict(),
                               projector_hidden_act=voxtral.projector_hidden_act)
    text = config.text_config
    text.bos_token_id, text.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    text.pad_token_id = tokenizer.pad_token_id
    config.audio_token_id = tokenizer.convert_tokens_to_ids("[AUDIO]")
    return config


def materialize(name: str, workdir: Path) -> Path:
    """The model folder of `name` (built once into workdir; the tiny preset lives in sllm's own cache)."""
    from sllm_lib.models.builders import materialize_tiny

    if name == "tiny":
        return materialize_tiny("voxtral")
    target = workdir / "models" / f"{name}-seed0-v{MODEL_VERSION}"
    if (target / ".complete").is_file():
        return target
    import gc

    import torch
    from transformers import VoxtralForConditionalGeneration, WhisperFeatureExtractor

    from sllm_lib.models.builders import build_char_tokenizer

    print(f"materialising {name} (random weights, bf16) into {target} ...", flush=True)
    t0 = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        tokenizer = build_char_tokenizer()
        config = _real_size_config(name, tokenizer)
        previous = torch.get_default_dtype()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            torch.set_default_dtype(torch.bfloat16)  # built in bf16: never a 4-byte copy of a 5B model in RAM
            try:
                model = VoxtralForConditionalGeneration(config)
            finally:
                torch.set_default_dtype(previous)
        model.save_pretrained(tmp)
        n_params = sum(p.numel() for p in model.parameters())
        del model
        gc.collect()
        tokenizer.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=128).save_pretrained(tmp)
        (tmp / ".complete").write_text(json.dumps({"model": name, "params": n_params, "seed": 0}))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"  {n_params / 1e9:.2f}B parameters in {time.perf_counter() - t0:.0f} s", flush=True)
    return target


def _hangul(rng: random.Random, n: int) -> str:
    """n characters of Korean-looking text: syllables in words of 2-4, single spaces, no space at either end."""
    out: list[str] = []
    while len(out) < n:
        if out and out[-1] != " " and len(out) < n - 1 and rng.random() < 0.3:
            out.append(" ")
        else:
            out.append(chr(rng.randrange(0xAC00, 0xD7A4)))
    if out[-1] == " ":
        out[-1] = "가"
    return "".join(out)


def write_data(workdir: Path, seq: int, n: int) -> Path:
    """n text_qa records, each exactly `seq` tokens with the char tokenizer: [bos][INST] q [/INST] a </s>."""
    path = workdir / "data" / f"text_qa-seq{seq}-n{n}.jsonl"
    if path.is_file():
        return path
    if seq < 16:
        raise SystemExit("--seq must be at least 16")
    rng = random.Random(0)
    q_len = seq // 4
    a_len = seq - q_len - 4  # bos, [INST], [/INST], eos
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"instruction": _hangul(rng, q_len), "output": _hangul(rng, a_len)}, ensure_ascii=False)
             for _ in range(n)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.rename(path)
    return path


# ------------------------------------------------------------------------------------------ the sllm side


def stage_spec(folder: Path, data: Path, out_dir: Path, *, zero: int | None, cuda: bool, bsz: int, steps: int,
               seq: int) -> dict[str, Any]:
    """The one-stage QLoRA job spec both sllm and the planner see."""
    stage: dict[str, Any] = {
        "name": STAGE, "kind": "text_sft",
        "data": {"train": [{"kind": "text_qa", "path": str(data)}]},
        "train": {"per_device_bsz": bsz, "grad_accum": 1, "max_steps": steps, "lr": LR, "seed": SEED,
                  "precision": "bf16" if cuda else "fp32", "gradient_checkpointing": True, "max_seq_len": seq,
                  "group_by_length": False, "save_steps": 10**9, "logging_steps": max(1, steps // 4)},
        "lora": dict(LORA),
        "quant": {"bits": 4, "quant_type": "nf4", "double_quant": True,
                  "compute_dtype": "bfloat16" if cuda else "float32"},
        "trainable": ["lora"],
    }
    if zero is not None:
        stage["deepspeed"] = {"stage": zero}
    return {"name": "qlora-bench", "model": {"base": str(folder)}, "output_dir": str(out_dir), "stages": [stage]}


def profile_yaml(cuda: bool, gpu_memory_gb: float) -> str:
    return (f"kind: local\nname: bench\ngpus: 1\ngpu_memory_gb: {gpu_memory_gb}\n" if cuda
            else "kind: local\nname: bench\ngpus: 0\n")


def _run_logged(cmd: list[str], env: dict[str, str], log_path: Path, timeout_s: int) -> int | None:
    """Run cmd in the repo root, stdout and stderr to log_path; its exit code, None on a timeout."""
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            return subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            return None


def run_sllm(run_root: Path, spec_path: Path, profile_path: Path, timeout_s: int) -> dict[str, Any]:
    """Submit the spec through the CLI; the stage's result.json metrics (or an error)."""
    log_path = run_root / "sllm.log"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env.pop("MLFLOW_TRACKING_URI", None)  # the run's own sqlite store, never a team server
    cmd = [sys.executable, "-m", "launch.cli", "submit", str(spec_path), "--cluster", str(profile_path), "--force"]
    rc = _run_logged(cmd, env, log_path, timeout_s)
    if rc is None:
        return {"error": f"timed out after {timeout_s} s (log {log_path})"}
    found = sorted((run_root / "out").glob(f"*/*/stages/{STAGE}/result.json"))
    if rc != 0 or not found:
        return {"error": f"exit {rc} (log {log_path})"}
    result = json.loads(found[-1].read_text(encoding="utf-8"))
    m = result.get("metrics", {})
    if not m.get("train_loop_s"):
        return {"error": f"no train_loop_s in {found[-1]} (a stage runner from before the metric existed?)"}
    ds_cfg = found[-1].parent / "deepspeed_config.json"
    return {"train_loop_s": m.get("train_loop_s"), "peak_gpu_mem_gb": m.get("peak_gpu_mem_gb"),
            "train_loss": m.get("train_loss"), "steps": result.get("steps"), "log": str(log_path),
            "deepspeed_config": str(ds_cfg) if ds_cfg.is_file() else None}


def plan(spec_path: Path, cuda: bool, gpu_memory_gb: float) -> dict[str, Any]:
    """The planner's prediction for the stage: total, total without the margin row, and every row."""
    from sllm_lib.memory import GB, plan_memory
    from sllm_lib.spec import LocalProfile, load_job_spec

    profile = LocalProfile(kind="local", gpus=1 if cuda else 0, gpu_memory_gb=gpu_memory_gb if cuda else None)
    m = plan_memory(load_job_spec(spec_path), profile)[0]
    margin = sum(r.bytes for r in m.rows if "margin" in r.name)
    return {"planner_gb": (m.total - margin) / GB, "planner_total_gb": m.total / GB,
            "planner_rows_gb": {r.name: r.bytes / GB for r in m.rows}, "setting": m.setting}


# ------------------------------------------------------------------------------------------ the baseline


def fallback_ds_config(zero: int, hidden: int) -> dict[str, Any]:
    """A hand-written ZeRO config, used only when the sllm run left none (it failed)."""
    z: dict[str, Any] = {"stage": zero, "overlap_comm": True, "contiguous_gradients": True,
                         "reduce_bucket_size": hidden * hidden}
    if zero == 3:
        z.update(stage3_prefetch_bucket_size=int(0.9 * hidden * hidden), stage3_param_persistence_threshold=10 * hidden,
                 stage3_gather_16bit_weights_on_model_save=True)
    return {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
            "fp16": {"enabled": "auto"}, "zero_optimization": z}


def baseline_encode(tok: Any, rec: dict[str, str], seq: int) -> tuple[list[int], list[int]]:
    """A text_qa record as a user would tokenise it: [bos][INST]prompt[/INST]answer</s>, loss on the answer."""
    prompt = tok(f"{tok.bos_token}[INST]{rec['instruction']}[/INST]", add_special_tokens=False)["input_ids"]
    answer = tok(rec["output"] + tok.eos_token, add_special_tokens=False)["input_ids"]
    return (prompt + answer)[:seq], ([-100] * len(prompt) + answer)[:seq]


def _baseline(args_path: Path) -> None:
    """The plain HF Trainer + PEFT QLoRA script (runs in its own process; writes its figures to a JSON)."""
    a = json.loads(args_path.read_text(encoding="utf-8"))
    cuda, zero = a["device"] == "cuda", a["zero"]
    if zero is not None and not cuda:
        # DeepSpeed on CPU: accelerate (1.15) picks no backend for a CPU-only DeepSpeed process by itself
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        from accelerate.state import PartialState

        PartialState(cpu=False, backend="gloo")
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoTokenizer, BitsAndBytesConfig, Trainer, TrainingArguments,
                              VoxtralForConditionalGeneration, set_seed)

    dtype = torch.bfloat16 if cuda else torch.float32
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype,  # ZeRO-3 partitions it
                             llm_int8_skip_modules=["model.multi_modal_projector", "multi_modal_projector", "lm_head"])
    extra = {"device_map": {"": 0}} if cuda else {}
    model = VoxtralForConditionalGeneration.from_pretrained(a["folder"], quantization_config=bnb, dtype=dtype, **extra)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    set_seed(a["seed"])
    names = "|".join(a["lora"]["targets"])
    model = get_peft_model(model, LoraConfig(r=a["lora"]["r"], lora_alpha=a["lora"]["alpha"],
                                             lora_dropout=a["lora"]["dropout"], bias="none", task_type="CAUSAL_LM",
                                             target_modules=rf".*language_model.*\.({names})$"))

    tok = AutoTokenizer.from_pretrained(a["folder"])
    seq = a["seq"]
    rows, short = [], 0
    for line in Path(a["data"]).read_text(encoding="utf-8").splitlines():
        if line.strip():
            ids, labels = baseline_encode(tok, json.loads(line), seq)
            short += len(ids) < seq
            pad = seq - len(ids)
            rows.append({"input_ids": torch.tensor(ids + [tok.pad_token_id] * pad),
                         "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
                         "labels": torch.tensor(labels + [-100] * pad)})

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return rows[i]

    ds_cfg = None
    if zero is not None:
        ds_cfg = json.loads(Path(a["deepspeed_config"]).read_text()) if a["deepspeed_config"] \
            else fallback_ds_config(zero, a["hidden_size"])
    targs = TrainingArguments(
        output_dir=a["output_dir"], per_device_train_batch_size=a["bsz"], gradient_accumulation_steps=1,
        max_steps=a["steps"], learning_rate=LR, lr_scheduler_type="linear", seed=a["seed"], bf16=cuda,
        gradient_checkpointing=True, save_strategy="no", logging_steps=max(1, a["steps"] // 4), report_to="none",
        disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
        use_cpu=not cuda and zero is None, deepspeed=ds_cfg,
        **({"accelerator_config": {"use_configured_state": True}} if zero is not None and not cuda else {}))
    trainer = Trainer(model=model, args=targs, train_dataset=Rows(),
                      data_collator=lambda batch: {k: torch.stack([b[k] for b in batch]) for k in batch[0]})
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out = trainer.train()
    result = {"train_loop_s": float(out.metrics["train_runtime"]), "train_loss": float(out.training_loss),
              "steps": int(trainer.state.global_step), "examples_shorter_than_seq": short,
              "deepspeed_config": a["deepspeed_config"] or ("fallback" if zero is not None else None)}
    if cuda:
        result["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    Path(a["result"]).write_text(json.dumps(result, indent=2), encoding="utf-8")


def run_baseline(run_root: Path, args: dict[str, Any], cuda: bool, timeout_s: int) -> dict[str, Any]:
    """Run `_baseline` in a fresh process (one-rank world under DeepSpeed); its figures or an error."""
    from sllm_lib.ports import free_port

    args = {**args, "result": str(run_root / "baseline_result.json"), "output_dir": str(run_root / "baseline_out")}
    args_path = run_root / "baseline_args.json"
    args_path.write_text(json.dumps(args, indent=2), encoding="utf-8")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if args["zero"] is not None:
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(free_port()))
    if not cuda:
        env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    log_path = run_root / "baseline.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_baseline", str(args_path)]
    rc = _run_logged(cmd, env, log_path, timeout_s)
    if rc is None:
        return {"error": f"timed out after {timeout_s} s (log {log_path})"}
    result_path = Path(args["result"])
    if rc != 0 or not result_path.is_file():
        return {"error": f"exit {rc} (log {log_path})"}
    return {**json.loads(result_path.read_text(encoding="utf-8")), "log": str(log_path)}


# ------------------------------------------------------------------------------------------ the run


def _gpu_info() -> tuple[str, float | None]:
    """GPU name and memory (GB) from nvidia-smi; no CUDA context in this process (it would count on the GPU)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()[0]
        name, mib = (s.strip() for s in out.split(","))
        return name, float(mib) * 2**20 / 1e9
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return "unknown GPU", None


def _parse_zero(text: str) -> list[int | None]:
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("off", "none", "ddp"):
            out.append(None)
        elif part in ("0", "1", "2", "3"):
            out.append(int(part))
        else:
            raise SystemExit(f"--zero: expected off, 0, 1, 2 or 3, got {part!r}")
    return out


def _f(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _render(rows: list[dict[str, Any]], title: str, cuda: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=f"planner error = (planner - sllm peak) / sllm peak, flagged outside "
                                       f"±{TOLERANCE:.0%}; planner GB leaves out the CUDA-context + allocator "
                                       f"margin row, 'with margin' is its full prediction", caption_justify="left")
    for col in ("model", "ZeRO", "sllm tok/s", "baseline tok/s", "sllm/baseline", "sllm peak GB",
                "baseline peak GB", "sllm/baseline mem", "planner GB", "with margin", "planner error"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        s, b = r["sllm"], r["baseline"]
        s_tps, b_tps = r.get("sllm_tok_s"), r.get("baseline_tok_s")
        s_mem, b_mem = s.get("peak_gpu_mem_gb"), b.get("peak_gpu_mem_gb")
        err = r.get("planner_error")
        if err is None:
            err_cell = "—" if not cuda else "n/a"
        else:
            bad = abs(err) > TOLERANCE
            err_cell = f"[red]{err:+.1%} !![/]" if bad else f"[green]{err:+.1%}[/]"
        table.add_row(
            r["model"], r["zero"],
            "failed" if "error" in s else _f(s_tps, ",.0f"),
            "failed" if "error" in b else _f(b_tps, ",.0f"),
            f"{s_tps / b_tps:.2f}x" if s_tps and b_tps else "—",
            _f(s_mem, ".2f"), _f(b_mem, ".2f"),
            f"{s_mem / b_mem:.2f}x" if s_mem and b_mem else "—",
            _f(r["planner"].get("planner_gb"), ".2f"), _f(r["planner"].get("planner_total_gb"), ".2f"), err_cell)
    Console(width=180).print(table)
    for r in rows:
        for side in ("sllm", "baseline"):
            if "error" in r[side]:
                print(f"  {r['model']} ZeRO {r['zero']} {side}: {r[side]['error']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.2-1b,voxtral-mini-3b",
                    help=f"comma-separated, of: {', '.join(MODELS)}")
    ap.add_argument("--zero", default="off,2,3", help="comma-separated ZeRO modes: off (no DeepSpeed), 0-3")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--bsz", type=int, default=4, help="micro-batch per GPU (grad_accum 1)")
    ap.add_argument("--seq", type=int, default=1024, help="tokens per example (all examples this long)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sllm-bench-qlora",
                    help="model folders, data and runs (models and data are reused when present)")
    ap.add_argument("--out", type=Path, default=None, help="JSON of every figure (default <workdir>/qlora_memory.json)")
    ap.add_argument("--gpu-memory-gb", type=float, default=None, help="for the planner (default: from nvidia-smi)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per training process")
    ap.add_argument("--_baseline", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._baseline is not None:
        _baseline(args._baseline)
        return

    models = [m.strip() for m in args.model.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"--model: unknown {unknown}; choose from {', '.join(MODELS)}")
    zeros = _parse_zero(args.zero)
    cuda = args.device == "cuda"
    gpu_name, gpu_mem = _gpu_info() if cuda else ("CPU", None)
    gpu_mem = args.gpu_memory_gb or gpu_mem or 80.0
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    import yaml

    data = write_data(workdir, args.seq, args.steps * args.bsz)
    rows: list[dict[str, Any]] = []
    for model in models:
        folder = materialize(model, workdir)
        hidden = json.loads((folder / "config.json").read_text())["text_config"]["hidden_size"]
        for zero in zeros:
            tag = "off" if zero is None else str(zero)
            run_root = workdir / "runs" / f"{model}-zero{tag}-{args.device}"
            shutil.rmtree(run_root, ignore_errors=True)  # a fresh run: sllm would skip a stage it already finished
            run_root.mkdir(parents=True)
            spec_path, profile_path = run_root / "job.yaml", run_root / "cluster.yaml"
            spec = stage_spec(folder, data, run_root / "out", zero=zero, cuda=cuda, bsz=args.bsz, steps=args.steps,
                              seq=args.seq)
            spec_path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False), encoding="utf-8")
            profile_path.write_text(profile_yaml(cuda, gpu_mem), encoding="utf-8")
            print(f"{model}, ZeRO {tag}: planner, sllm, baseline ...", flush=True)
            predicted = plan(spec_path, cuda, gpu_mem)
            sllm = run_sllm(run_root, spec_path, profile_path, args.timeout)
            baseline = run_baseline(run_root, {
                "folder": str(folder), "data": str(data), "seq": args.seq, "bsz": args.bsz, "steps": args.steps,
                "zero": zero, "device": args.device, "seed": SEED, "lora": LORA, "hidden_size": hidden,
                "deepspeed_config": sllm.get("deepspeed_config")}, cuda, args.timeout)
            tokens = args.steps * args.bsz * args.seq
            row: dict[str, Any] = {"model": model, "zero": tag, "tokens": tokens, "sllm": sllm, "baseline": baseline,
                                   "planner": predicted}
            for side in ("sllm", "baseline"):
                loop = row[side].get("train_loop_s")
                row[f"{side}_tok_s"] = tokens / loop if loop else None
            peak = sllm.get("peak_gpu_mem_gb")
            row["planner_error"] = (predicted["planner_gb"] - peak) / peak if peak else None
            for side in ("sllm", "baseline"):
                r = row[side]
                mem = f", peak {r['peak_gpu_mem_gb']:.2f} GB" if r.get("peak_gpu_mem_gb") else ""
                state = r.get("error") or f"{r['train_loop_s']:.1f} s, loss {r['train_loss']:.3f}{mem}"
                print(f"  {side}: {state}", flush=True)
            rows.append(row)

    title = (f"QLoRA (nf4, LoRA r={LORA['r']} on 7 projections, checkpointing), sllm vs HF Trainer + PEFT: "
             f"{args.steps} steps x {args.bsz} x {args.seq} tokens, {gpu_name}"
             + ("" if cuda else " (fp32; no GPU memory to measure)"))
    print()
    _render(rows, title, cuda)
    out = args.out or workdir / "qlora_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": args.device, "gpu": gpu_name, "gpu_memory_gb": gpu_mem if cuda else None,
                               "steps": args.steps, "bsz": args.bsz, "seq": args.seq, "lora": LORA,
                               "tolerance": TOLERANCE, "rows": rows}, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"figures: {out}")


if __name__ == "__main__":
    main()
