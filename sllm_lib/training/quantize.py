"""The `quantize` stage and the compression report.

dynamic_int8 (CPU serving): every Linear of the model becomes torch's dynamic int8 Linear (weights int8, activations
quantized on the fly); the folder holds the config, the quantized state dict (`dynamic_int8.pt`) and a marker that
`load_base_model` reads to rebuild the model. bnb8 / bnb4 (GPU serving): bitsandbytes LLM.int8() / NF4, saved as a
regular transformers folder.

The report compares the result with an uncompressed baseline (by default the stage's input; for a distill ->
prune -> quantize pipeline, name the teacher): size on disk, peak and model memory and ms per generated token on
this machine's CPU (each model in a fresh process), and task quality on the stage's datasets; then states for each
of the targets (size, speed, memory) whether it is met.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from sllm_lib.files import read_manifest, write_text_atomic
from sllm_lib.models.variants import measure_cpu, save_dynamic_int8, write_variant
from sllm_lib.stage import StageContext, StageResult, log_stage_model, new_output_tmp, publish_output

log = logging.getLogger(__name__)

REPORT_JSON, REPORT_MD = "compression_report.json", "compression_report.md"


def _quality(folder: Path, stage: Any) -> dict[str, float]:
    """The stage's datasets scored with the model in `folder` (as an eval stage would)."""
    import gc

    from sllm_lib.models.refs import load_model
    from sllm_lib.scoring import evaluate_dataset
    from sllm_lib.models.adapters import chain_system_prompt
    from sllm_lib.models.builders import chat_for

    if not stage.datasets:
        return {}
    model, tokenizer, features = load_model(folder)
    chat = chat_for(tokenizer, model.config, system_prompt=chain_system_prompt([folder]))
    scores: dict[str, float] = {}
    for ref in stage.datasets:
        got, _, _ = evaluate_dataset(ref, model=model, tokenizer=tokenizer, features=features, chat=chat,
                                     gen=stage.generation)
        scores.update({f"{ref.task_name}/{k}": float(v) for k, v in got.items()})
    del model
    gc.collect()
    return scores


def compare(baseline: dict[str, Any], compressed: dict[str, Any], targets: Any) -> dict[str, Any]:
    """Ratios against the baseline and, for each target, whether it is met (None when unmeasured)."""
    def ratio(key: str) -> float | None:
        a, b = baseline.get(key), compressed.get(key)
        return (b / a) if a and b is not None else None

    size, mem = ratio("size_mb"), ratio("model_mem_mb")
    speed = (baseline["ms_per_token"] / compressed["ms_per_token"]
             if baseline.get("ms_per_token") and compressed.get("ms_per_token") else None)
    out = {
        "size_reduction": None if size is None else 1 - size,
        "speedup": speed,
        "memory_reduction": None if mem is None else 1 - mem,
    }
    out["targets"] = {
        "size_reduction": {"target": targets.size_reduction, "met": None if out["size_reduction"] is None
                           else out["size_reduction"] >= targets.size_reduction},
        "speedup": {"target": targets.speedup, "met": None if speed is None else speed >= targets.speedup},
        "memory_reduction": {"target": targets.memory_reduction, "met": None if out["memory_reduction"] is None
                             else out["memory_reduction"] >= targets.memory_reduction},
    }
    out["quality_delta"] = {k: compressed["quality"][k] - v for k, v in baseline.get("quality", {}).items()
                            if k in compressed.get("quality", {})}
    return out


def report_markdown(report: dict[str, Any]) -> str:
    b, c, cmp_ = report["baseline"], report["compressed"], report["comparison"]

    def fmt(x: Any, spec: str = ".1f") -> str:
        return "-" if x is None else format(x, spec)

    lines = [f"# Compression report: {report['stage']} ({report['method']})", "",
             f"Baseline: `{report['baseline_ref']}`; compressed: this stage's output. CPU figures from one machine "
             f"({report['tokens']} generated tokens, greedy, after a warm-up; each model in a fresh process).", "",
             "| | baseline | compressed | change | target | met |", "| --- | --- | --- | --- | --- | --- |"]
    t = cmp_["targets"]

    def met(key: str) -> str:
        v = t[key]["met"]
        return "n/a" if v is None else ("yes" if v else "no")

    lines.append(f"| size on disk (MB) | {fmt(b.get('size_mb'), '.2f')} | {fmt(c.get('size_mb'), '.2f')} | "
                 f"{fmt(None if cmp_['size_reduction'] is None else -100 * cmp_['size_reduction'], '+.0f')} % | "
                 f"-{100 * t['size_reduction']['target']:.0f} % | {met('size_reduction')} |")
    lines.append(f"| model memory (MB) | {fmt(b.get('model_mem_mb'))} | {fmt(c.get('model_mem_mb'))} | "
                 f"{fmt(None if cmp_['memory_reduction'] is None else -100 * cmp_['memory_reduction'], '+.0f')} % | "
                 f"-{100 * t['memory_reduction']['target']:.0f} % | {met('memory_reduction')} |")
    lines.append(f"| ms per token (CPU) | {fmt(b.get('ms_per_token'))} | {fmt(c.get('ms_per_token'))} | "
                 f"{fmt(cmp_['speedup'], '.2f')}x faster | {t['speedup']['target']:g}x | {met('speedup')} |")
    lines.append(f"| peak RSS (MB) | {fmt(b.get('peak_rss_mb'), '.0f')} | {fmt(c.get('peak_rss_mb'), '.0f')} | | | |")
    for k, d in cmp_["quality_delta"].items():
        lines.append(f"| {k} | {b['quality'][k]:.4f} | {c['quality'][k]:.4f} | {d:+.4f} | | |")
    return "\n".join(lines) + "\n"


def run_quantize(stage: Any, ctx: StageContext) -> StageResult:
    """Quantize the upstream model folder, publish it, and report it against the baseline."""
    from sllm_lib.errors import JobSpecError
    from sllm_lib.models.builders import folder_model_spec, load_base_model

    src = ctx.upstream_output
    if src is None or not (src / "config.json").is_file():
        raise JobSpecError(f"stage {stage.name!r}: quantize needs a model folder from its from_stage (a merge or "
                           f"prune stage); {src} has no config.json")
    result = StageResult(stage=stage.name, kind=stage.kind, output_dir=str(ctx.output_dir))
    if not ctx.is_main:
        return result
    from sllm_lib.models.refs import model_ref_path

    baseline = model_ref_path(stage.baseline, ctx.tracking_uri or "") if stage.baseline else src
    upstream = read_manifest(src) or {}
    tmp = new_output_tmp(ctx)
    try:
        if stage.method == "dynamic_int8":
            spec = folder_model_spec(src)
            save_dynamic_int8(load_base_model(str(src), model=spec, dtype="float32"), tmp)
            for f in src.iterdir():  # tokenizer files and the like
                if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name not in (
                        "config.json", "generation_config.json", "manifest.json"):
                    shutil.copy2(f, tmp / f.name)
        else:
            write_variant(src, tmp, stage.method)
            (tmp / "sllm_manifest.json").unlink(missing_ok=True)
        manifest = {"stage": stage.name, "kind": stage.kind, "spec_hash": ctx.spec_hash, "source": str(src),
                    "method": stage.method, "base_model": upstream.get("base_model"), "chain": upstream.get("chain", []),
                    "system_prompt": upstream.get("system_prompt"), "trust_remote_code": upstream.get("trust_remote_code",
                                                                                                      False)}
        write_text_atomic(tmp / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))  # for measuring
        log.info("stage=%s measuring baseline %s and the %s model on the CPU", stage.name, baseline, stage.method)
        rows = {"baseline": measure_cpu(baseline, tokens=stage.report_tokens),
                "compressed": measure_cpu(tmp, tokens=stage.report_tokens)}
        for name, row in rows.items():
            if "error" in row:
                raise RuntimeError(f"stage {stage.name!r}: measuring the {name} model failed: {row['error']}")
        rows["baseline"]["quality"] = _quality(baseline, stage)
        rows["compressed"]["quality"] = _quality(tmp, stage)
        report = {"stage": stage.name, "method": stage.method, "baseline_ref": stage.baseline or str(src),
                  "tokens": stage.report_tokens, **rows,
                  "comparison": compare(rows["baseline"], rows["compressed"], stage.targets)}
        write_text_atomic(tmp / REPORT_JSON, json.dumps(report, indent=2, ensure_ascii=False))
        text = report_markdown(report)
        write_text_atomic(tmp / REPORT_MD, text)
        final = publish_output(tmp, ctx, {**manifest, "report": REPORT_JSON})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("stage=%s compression report\n%s", stage.name, text)
    cmp_ = report["comparison"]
    metrics = {f"compress/{k}": float(v) for k, v in cmp_.items() if isinstance(v, (int, float))}
    metrics.update({f"compress/{k}_met": float(bool(v["met"])) for k, v in cmp_["targets"].items()
                    if v["met"] is not None})
    metrics.update({f"compress/quality_delta/{k}": v for k, v in cmp_["quality_delta"].items()})
    for name in ("baseline", "compressed"):
        metrics.update({f"compress/{name}_{k}": float(v) for k, v in rows[name].items()
                        if k in ("size_mb", "model_mem_mb", "ms_per_token", "peak_rss_mb")})
    result.metrics.update(metrics)
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_artifact(final / REPORT_MD, "compression")
    ctx.tracker.log_artifact(final / REPORT_JSON, "compression")
    info = log_stage_model(stage, ctx, final, model_type="quantized", metrics=metrics)
    result.extras.update(info)
    return result
