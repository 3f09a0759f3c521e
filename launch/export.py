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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sllm_lib.errors import SllmError, SubmissionError
from sllm_lib.files import MANIFEST, building_folder, write_text_atomic
from sllm_lib.models.variants import KEPT_MANIFEST, VARIANTS, measure_cpu, write_variant
from sllm_lib.usage import format_gpu_hours

log = logging.getLogger(__name__)

CARD = "README.md"
REPORT = "cpu_report.json"


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


def _suite_tasks(suite_name: str) -> list[tuple[str, list[str]]] | None:
    """(task, declared metric names) of the suite an eval run names; None when that suite cannot be loaded here."""
    from eval.suites import find_suite, load_suite

    try:
        suite = load_suite(find_suite(suite_name))
    except (SllmError, OSError) as exc:
        log.info("export: suite %s not loadable here (%s); the card shows the run's own task/metric scores",
                 suite_name, exc)
        return None
    return [(t.name, t.metric_names()) for t in suite.tasks]


def _tasks_in_run(metrics: dict[str, float]) -> list[tuple[str, list[str]]]:
    """(task, metric names) from an eval run's keys: "task/metric" where metric is a registry metric (no counters
    such as cache/bytes_read, no runtimes, no copies such as eval/SUITE/task/metric)."""
    from sllm_lib.metrics.registry import metric_spec

    tasks: dict[str, list[str]] = {}
    for key in sorted(metrics):
        task, sep, name = key.partition("/")
        if sep and "/" not in name and metric_spec(name) is not None:
            tasks.setdefault(task, []).append(name)
    return list(tasks.items())


def _score(name: str, value: float) -> str:
    """'cer 0.1234 (≥0, ↓)': a score with the registry's scale and its direction."""
    from sllm_lib.metrics.registry import metric_spec

    spec = metric_spec(name)
    if spec is None:
        return f"{name} {value:.4g}"
    return f"{name} {value:.4g} ({spec.scale}, {'↑' if spec.higher_is_better else '↓'})"


def evaluation_lines(evaluations: list[dict[str, Any]], max_suites: int = 5) -> list[str]:
    """The card's Evaluations section: the newest finished eval of each suite, one row per task of the suite,
    the metrics the suite declares for it (a task the run has no score for says so)."""
    latest: dict[str, dict[str, Any]] = {}
    for ev in evaluations:  # newest first
        if ev.get("status", "FINISHED") == "FINISHED":
            latest.setdefault(ev["suite"], ev)
    if not latest:
        return []
    lines = ["", "## Evaluations", "",
             "Newest evaluation per suite; each score with its scale from sllm's metric registry and its direction "
             "(↑ higher is better, ↓ lower is better).", "",
             "| suite | task | scores | date | eval run |", "| --- | --- | --- | --- | --- |"]
    for suite, ev in list(latest.items())[:max_suites]:
        metrics = ev.get("metrics") or {}
        tasks = _suite_tasks(suite) or _tasks_in_run(metrics)
        for task, names in tasks:
            shown = [_score(n, metrics[f"{task}/{n}"]) for n in names if f"{task}/{n}" in metrics]
            lines.append(f"| {suite} | {task} | {', '.join(shown) or 'not scored'} | {ev.get('date') or '-'} "
                         f"| `{ev['run_id']}` |")
    return lines


def model_card(folder: Path, manifest: dict[str, Any], lineage: Any, metrics: dict[str, dict[str, float]],
               repo_id: str | None, *, aliases: list[str] | None = None, load_from: str | None = None) -> str:
    """The README.md of the exported folder: hub front matter, lineage, metrics, usage, limits."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    base = manifest.get("base_model") or "?"
    name = repo_id or (f"{lineage.name}" if lineage else folder.name)
    front = ["---", "library_name: transformers", f"pipeline_tag: {_pipeline_tag(config)}", "language:", "- ko",
             "tags:", "- sllm", "- lora", "- korean", "- medical"]
    if base and not base.startswith(("tiny:", "mini:", "/", ".")):
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
        lines += ["| stage | kind | MLflow run | datasets | key metrics | GPU-hours |",
                  "| --- | --- | --- | --- | --- | ---: |"]
        for n in _nodes(lineage.root):
            data = "<br>".join(f"{d['name']} ({d.get('context') or 'data'}, sha {str(d['digest'])[:12]})"
                               for d in n.datasets) or "-"
            m = metrics.get(n.run_id, {})
            key = ", ".join(f"{k.split('/', 1)[1]} {v:.4g}" for k, v in sorted(m.items())[:6]) or "-"
            hours = format_gpu_hours(n.usage.gpu_hours) if n.usage else "-"
            lines.append(f"| {n.stage} | {n.kind} | `{n.run_id}` | {data} | {key} | {hours} |")
        total = lineage.usage
        if total.runs:
            lines += ["", f"Compute: {format_gpu_hours(total.gpu_hours)} GPU-hours over {total.runs} stage runs "
                          f"(every attempt, requeues and sweep points included"
                      + (f"; {format_gpu_hours(total.interrupted_gpu_hours)} in interrupted attempts"
                         if total.interrupted_gpu_hours else "")
                      + f"), {total.wall_s / 3600:.2f} hours of wall time; cost {total.cost_text()}."]
        lines += evaluation_lines(lineage.evaluations)
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
    from sllm_lib.models.refs import resolve_model
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

    with building_folder(out_dir) as tmp:
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
