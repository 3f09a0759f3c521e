"""`sllm export MODEL -o DIR`: a merged model as a folder ready for a model hub, with a model card built from its
lineage (stages, datasets with digests, metrics, evaluations); `--push-to-hub REPO` uploads it.

MODEL is a merged folder, models:/NAME@ALIAS (or NAME@ALIAS, NAME/VERSION) or a merge run id, as for `sllm eval`.
The folder is assembled next to DIR and renamed into place: an export never leaves a half-written DIR.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sllm_lib.errors import SllmError, SubmissionError
from sllm_lib.training.context import MANIFEST, write_text_atomic

log = logging.getLogger(__name__)

CARD = "README.md"
VARIANTS = ("bf16", "fp16", "fp32", "bnb4", "bnb8")
REPORT = "cpu_report.json"
KEPT_MANIFEST = "sllm_manifest.json"  # sllm's own manifest, kept beside the weights for provenance


@dataclass
class Export:
    folder: Path
    card: str
    lineage: Any  # ModelLineage or None (a plain folder has no registry entry)
    uploaded_to: str | None = None


def _run_metrics(tracking_uri: str, run_ids: list[str]) -> dict[str, dict[str, float]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    out = {}
    for rid in run_ids:
        try:
            data = client.get_run(rid).data
        except Exception as exc:  # a card is still useful without one run's numbers
            log.warning("export: run %s unreadable (%s); its metrics are left out of the card", rid, exc)
            continue
        out[rid] = {k: v for k, v in data.metrics.items() if k.startswith(("final/", "eval/", "merge/"))}
    return out


def _nodes(root: Any) -> list[Any]:
    """Lineage nodes, upstream first (data -> ... -> merge)."""
    order: list[Any] = []

    def visit(n: Any) -> None:
        for up in n.upstream:
            visit(up)
        if n not in order:
            order.append(n)

    visit(root)
    return order


def _pipeline_tag(config: dict[str, Any]) -> str:
    return "automatic-speech-recognition" if config.get("model_type") == "voxtral" else "text-generation"


def model_card(folder: Path, manifest: dict[str, Any], lineage: Any, metrics: dict[str, dict[str, float]],
               repo_id: str | None, *, aliases: list[str] | None = None, load_from: str | None = None) -> str:
    """The README.md of the exported folder: hub front matter, lineage, metrics, usage, limits."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    base = manifest.get("base_model") or "?"
    name = repo_id or (f"{lineage.name}" if lineage else folder.name)
    front = ["---", "library_name: transformers", f"pipeline_tag: {_pipeline_tag(config)}", "language:", "- ko",
             "tags:", "- sllm", "- lora", "- korean", "- medical"]
    if base and not base.startswith(("tiny:", "/", ".")):
        front += [f"base_model: {base}"]
    front.append("---")
    lines = [*front, "", f"# {name}", ""]
    lines.append(f"Fine-tuned from `{base}` with sllm (multi-stage LoRA fine-tuning launcher) and merged into "
                 f"{manifest.get('dtype', '?')} weights ({int(manifest.get('num_parameters', 0)):,} parameters).")
    if lineage is not None:
        shown = aliases if aliases is not None else ([lineage.alias] if lineage.alias else [])
        lines.append(f"Registered as `{lineage.name}` version {lineage.version}"
                     + (" (" + ", ".join(f"`@{a}`" for a in shown) + ")" if shown else "")
                     + (f"; pipeline run `{lineage.pipeline_run_id}`." if lineage.pipeline_run_id else "."))
    if manifest.get("system_prompt"):
        lines += ["", "System prompt used in training (use the same one):", "", "```",
                  manifest["system_prompt"], "```"]
    lines += ["", "## Lineage", ""]
    if lineage is None:
        lines.append(f"Exported from a folder; stages recorded in its manifest: "
                     f"{', '.join(Path(c).parent.name for c in manifest.get('chain', [])) or '-'}.")
    else:
        lines += ["| stage | kind | MLflow run | datasets | key metrics |", "| --- | --- | --- | --- | --- |"]
        for n in _nodes(lineage.root):
            data = "<br>".join(f"{d['name']} ({d.get('context') or 'data'}, sha {str(d['digest'])[:12]})"
                               for d in n.datasets) or "-"
            m = metrics.get(n.run_id, {})
            key = ", ".join(f"{k.split('/', 1)[1]} {v:.4g}" for k, v in sorted(m.items())[:6]) or "-"
            lines.append(f"| {n.stage} | {n.kind} | `{n.run_id}` | {data} | {key} |")
        if lineage.evaluations:
            lines += ["", "## Evaluations", "", "| suite | date | run | metrics |", "| --- | --- | --- | --- |"]
            for ev in lineage.evaluations[:5]:
                ms = ", ".join(f"{k} {v:.4g}" for k, v in sorted(ev["metrics"].items())[:8]) or "-"
                lines.append(f"| {ev['suite']} | {ev.get('date') or '-'} | `{ev['run_id']}` | {ms} |")
    loader = "VoxtralForConditionalGeneration" if config.get("model_type") == "voxtral" else "AutoModelForCausalLM"
    where = repo_id or load_from or str(folder)
    lines += ["", "## Use", "", "```python", f"from transformers import AutoTokenizer, {loader}", "",
              f"model = {loader}.from_pretrained({where!r})",
              f"tokenizer = AutoTokenizer.from_pretrained({where!r})", "```", "",
              "## Limitations", "",
              "Trained for Korean medical question answering research. It is not a medical device: answers can be "
              "wrong or out of date and must not replace a clinician's judgement.", ""]
    return "\n".join(lines)


def export_model(ref: str, out_dir: Path, *, tracking_uri: str, push_to_hub: str | None = None,
                 private: bool = True, overwrite: bool = False, variants: list[str] | None = None,
                 cpu_report: bool = False, report_tokens: int = 32) -> Export:
    """Copy the model's files to `out_dir` with a model card; upload to `push_to_hub` when given.

    With `variants`, `out_dir/<variant>/` holds each device variant (16-bit, bitsandbytes 4-bit nf4 / 8-bit) with
    its own card; `cpu_report` measures every folder on this machine's CPU (size on disk, peak memory, ms per
    generated token) into `out_dir/cpu_report.json` and the cards.
    """
    bad = [v for v in variants or [] if v not in VARIANTS]
    if bad:
        raise SllmError(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
    from eval.runner import resolve_model
    from sllm_lib.tracking.lineage import walk_lineage

    out_dir = out_dir.expanduser().resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise SllmError(f"{out_dir} exists and is not empty; choose another folder or pass --overwrite")
    model = resolve_model(ref, tracking_uri)
    manifest_path = model.path / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    lineage = walk_lineage(tracking_uri, f"{model.name}/{model.version}") if model.name else None
    metrics = _run_metrics(tracking_uri, [n.run_id for n in _nodes(lineage.root)]) if lineage else {}
    card = model_card(model.path, manifest, lineage, metrics, push_to_hub, aliases=model.aliases,
                      load_from=str(out_dir))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        _copy_model(model.path, tmp)
        write_text_atomic(tmp / CARD, card)
        for v in variants or []:
            log.info("export: writing variant %s", v)
            write_variant(model.path, tmp / v, v)
            write_text_atomic(tmp / v / CARD, card.replace("\n## Lineage", f"\nDevice variant: **{v}** "
                                                          f"({VARIANT_TEXT[v]}).\n\n## Lineage", 1))
        if cpu_report:
            folders = {"as merged": tmp, **{v: tmp / v for v in variants or []}}
            report = {name: measure_cpu(folder, tokens=report_tokens) for name, folder in folders.items()}
            write_text_atomic(tmp / REPORT, json.dumps(report, indent=2))
            table = report_markdown(report)
            log.info("export: CPU report\n%s", table)
            for folder in folders.values():
                write_text_atomic(folder / CARD, (folder / CARD).read_text(encoding="utf-8")
                                  + "\n## CPU measurements (export machine)\n\n" + table + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = Export(folder=out_dir, card=card, lineage=lineage)
    if push_to_hub:
        result.uploaded_to = upload(out_dir, push_to_hub, private=private)
    return result


VARIANT_TEXT = {"bf16": "bfloat16 weights", "fp16": "float16 weights", "fp32": "float32 weights",
                "bnb4": "bitsandbytes 4-bit NF4 with double quantization, bfloat16 compute; GPU serving",
                "bnb8": "bitsandbytes 8-bit (LLM.int8()); GPU serving"}


def _copy_model(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name == MANIFEST:
            shutil.copy2(f, dst / KEPT_MANIFEST)
        elif f.is_file():
            shutil.copy2(f, dst / f.name)
        elif f.is_dir():
            shutil.copytree(f, dst / f.name)


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


_MEASURE = r"""
import json, resource, sys, time
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
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"ms_per_token": 1000 * dt / max(1, n), "new_tokens": int(n), "peak_rss_mb": peak,
                  "model_mem_mb": weights}))
"""


def measure_cpu(folder: Path, *, tokens: int = 32) -> dict[str, Any]:
    """Size on disk, memory (model memory: the bytes of every tensor the loaded model holds, quantization
    constants included; peak RSS of the fresh process that loads it and generates) and ms per generated token on
    this machine's CPU (greedy, after a warm-up). A variant that cannot run on the CPU is reported with the reason."""
    import subprocess
    import sys

    size = sum(f.stat().st_size for f in folder.iterdir()
               if f.is_file() and f.name.endswith((".safetensors", ".bin", ".pt")))  # the weights
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(folder), str(tokens)], capture_output=True,
                          text=True, env=env, timeout=1800)
    row: dict[str, Any] = {"size_mb": size / 2**20}
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]
        return row
    row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return row


def report_markdown(report: dict[str, dict[str, Any]]) -> str:
    """The CPU report as a markdown table (size and memory also relative to the merged model)."""
    base = report.get("as merged", {})
    lines = ["| variant | size MB | vs merged | peak RSS MB | model memory MB | vs merged | ms / token |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report.items():
        if "error" in r:
            lines.append(f"| {name} | {r['size_mb']:.1f} | - | - | - | - | failed: {r['error']} |")
            continue
        rel = (lambda k: f"{r[k] / base[k]:.2f}x" if base.get(k) else "-")
        lines.append(f"| {name} | {r['size_mb']:.1f} | {rel('size_mb')} | {r['peak_rss_mb']:.0f} | "
                     f"{r['model_mem_mb']:.0f} | {rel('model_mem_mb')} | {r['ms_per_token']:.1f} |")
    return "\n".join(lines)


def upload(folder: Path, repo_id: str, *, private: bool) -> str:
    """Create (if needed) the hub repository and upload the folder; the token comes from HF_TOKEN or the
    huggingface-cli login. Needs network: not exercised by the offline tests."""
    from huggingface_hub import HfApi

    api = HfApi(token=os.environ.get("HF_TOKEN") or None)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message="Upload from sllm export")
    except Exception as exc:  # network, auth or permission: one clear line
        raise SubmissionError(f"upload to {repo_id} failed: {exc}") from exc
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")
