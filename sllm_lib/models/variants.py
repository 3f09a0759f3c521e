"""Device variants of a model folder and their CPU measurement.

* dynamic int8 (CPU serving): every Linear becomes torch's dynamic int8 Linear (weights int8, activations
  quantized on the fly); the folder holds the config, the quantized state dict (`dynamic_int8.pt`) and a marker
  that `load_base_model` reads to rebuild the model.
* bf16 / fp16 / fp32 / bnb4 / bnb8 (`write_variant`): the model loaded in that dtype, or bitsandbytes NF4 /
  LLM.int8(), saved as a regular transformers folder.
* `measure_cpu`: size on disk, memory and ms per generated token of a folder, in a fresh process.

Used by the quantize stage and by `sllm export --variants`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from sllm_lib.files import MANIFEST

DYNAMIC_MARKER = "sllm_dynamic_int8.json"
DYNAMIC_WEIGHTS = "dynamic_int8.pt"
VARIANTS = ("bf16", "fp16", "fp32", "bnb4", "bnb8")
KEPT_MANIFEST = "sllm_manifest.json"  # sllm's own manifest, kept beside the weights for provenance


def save_dynamic_int8(model: Any, folder: Path) -> None:
    """Quantize every Linear to dynamic int8 and write config + quantized state + marker into `folder`."""
    import torch
    from torch import nn

    # torch 2.13 marks torch.ao's eager quantization deprecated in favour of torchao (not a dependency here); it
    # still works and is what the CPU serving path loads back
    quantized = torch.ao.quantization.quantize_dynamic(model.float().eval(), {nn.Linear}, dtype=torch.qint8)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(folder))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(folder))
    torch.save(quantized.state_dict(), folder / DYNAMIC_WEIGHTS)
    (folder / DYNAMIC_MARKER).write_text(json.dumps({"format": "torch dynamic int8 (qint8 Linear)",
                                                     "weights": DYNAMIC_WEIGHTS}), encoding="utf-8")


def load_dynamic_int8(folder: Path, config: Any, *, trust_remote_code: bool = False) -> Any:
    """Rebuild a dynamic-int8 model written by `save_dynamic_int8` (float skeleton -> quantize -> load state)."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, dtype=torch.float32)
    model = torch.ao.quantization.quantize_dynamic(skeleton.eval(), {nn.Linear}, dtype=torch.qint8)
    # the file is this stage's own output; its packed int8 Linear params need full unpickling
    state = torch.load(folder / DYNAMIC_WEIGHTS, map_location="cpu", weights_only=False)
    model.load_state_dict(state)
    return model.eval()


def write_variant(src: Path, dst: Path, variant: str) -> None:
    """Load the merged model as `variant` and save it (weights, tokenizer files, sllm manifest) into `dst`."""
    import torch

    from sllm_lib.models.builders import folder_model_spec, load_base_model
    from sllm_lib.spec import QuantSpec

    spec = folder_model_spec(src)
    if variant in ("bf16", "fp16", "fp32"):
        dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[variant]
        model = load_base_model(str(src), model=spec, dtype=dtype)
    else:
        quant = QuantSpec(bits=4, quant_type="nf4", double_quant=True, compute_dtype="bfloat16") if variant == "bnb4" \
            else QuantSpec(bits=8)
        model = load_base_model(str(src), model=spec, quant=quant, dtype="bfloat16")
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dst), safe_serialization=True)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    for f in src.iterdir():  # tokenizer, feature extractor, chat template, manifest: everything but the weights
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name not in ("config.json",
                                                                                             "generation_config.json"):
            shutil.copy2(f, dst / (KEPT_MANIFEST if f.name == MANIFEST else f.name))


def peak_rss_mb() -> float:
    """This process's own peak resident memory in MiB.

    Read from VmHWM in /proc/self/status: the high-water mark of this process's own address space, which starts
    afresh at execve. Not `ru_maxrss`: Linux keeps it across execve (getrusage(2)), so a measuring child started by
    a large parent (the stage process, torch and a model loaded) reports the parent's peak, and every model
    measured from one stage shows the same figure. Elsewhere (no /proc) ru_maxrss is the fallback.
    """
    import resource
    import sys

    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


_MEASURE = r"""
import json, os, sys, time
from pathlib import Path
folder, tokens = Path(sys.argv[1]), int(sys.argv[2])
import torch
torch.manual_seed(0)
from sllm_lib.models.builders import chat_for, folder_model_spec, load_base_model, load_tokenizer_and_features
spec = folder_model_spec(folder)
cfg = json.loads((folder / "config.json").read_text())
dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").replace("torch.", "")
model = load_base_model(str(folder), model=spec, dtype=dtype if dtype in ("float32", "bfloat16", "float16") else "float32")
model.eval()
tok, _ = load_tokenizer_and_features(str(folder), trust_remote_code=spec.trust_remote_code)
chat = chat_for(tok, model.config)
text = "요즘 잠을 잘 못 자고 머리가 아파요. 어떻게 해야 하나요?"
ids = chat.prompt_ids(tok, text) if hasattr(chat, "prompt_ids") else tok.encode(text)
x = torch.tensor([ids])
kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=chat.pad)
with torch.no_grad():
    model.generate(x, max_new_tokens=2, do_sample=False, pad_token_id=chat.pad)  # warm-up
    t0 = time.perf_counter()
    out = model.generate(x, **kw)
    dt = time.perf_counter() - t0
n = out.shape[1] - x.shape[1]
seen = set()
def nbytes(v):  # tensors (tied ones once), and the (weight, bias) tuples of dynamic int8 Linears' packed params
    if isinstance(v, torch.Tensor):
        key = (v.data_ptr(), v.numel(), str(v.dtype)) if not v.is_quantized else id(v)
        if key in seen:
            return 0
        seen.add(key)
        return v.element_size() * v.numel()
    return sum(nbytes(x) for x in v) if isinstance(v, (tuple, list)) else 0
weights = sum(nbytes(v) for v in model.state_dict().values()) / 2**20
from sllm_lib.models.variants import peak_rss_mb
print(json.dumps({"ms_per_token": 1000 * dt / max(1, n), "new_tokens": int(n), "peak_rss_mb": peak_rss_mb(),
                  "model_mem_mb": weights, "pid": os.getpid()}))
"""


def measure_cpu(folder: Path, *, tokens: int = 32) -> dict[str, Any]:
    """Size on disk, memory (model memory: the bytes of every tensor the loaded model holds, quantization
    constants included; peak RSS of the fresh process that loads it and generates, see `peak_rss_mb`) and ms per
    generated token on this machine's CPU (greedy, after a warm-up). The row carries the measuring process's
    `pid`. A variant that cannot run on the CPU is reported with the reason."""
    import subprocess
    import sys

    size = sum(f.stat().st_size for f in folder.iterdir()
               if f.is_file() and f.name.endswith((".safetensors", ".bin", ".pt")))  # the weights
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                      env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(folder), str(tokens)], capture_output=True,
                          text=True, env=env, timeout=1800)
    row: dict[str, Any] = {"size_mb": size / 2**20}
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]
        return row
    row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return row
