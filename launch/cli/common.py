"""What every command group shares: the Typer apps, the consoles, the common options, logging set-up, loading a
spec with its profile, and printing a pipeline's outcome."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, get_args

import typer
from rich.console import Console
from rich.table import Table

from sllm_lib.errors import SllmError
from sllm_lib.spec.base import RecordKind


app = typer.Typer(add_completion=False, no_args_is_help=True, help="Launch multi-stage fine-tuning pipelines.")
data_app = typer.Typer(no_args_is_help=True, help="Validate and describe JSONL datasets.")
app.add_typer(data_app, name="data")
cache_app = typer.Typer(no_args_is_help=True, help="The shared audio-feature cache: build, stats, verify, gc.")
app.add_typer(cache_app, name="cache")
tracking_app = typer.Typer(no_args_is_help=True, help="Tracking journal: what an outage kept on disk.")
app.add_typer(tracking_app, name="tracking")


# wide enough for tables when output goes to a file or CI log (rich falls back to 80 columns there)
# off a terminal: COLUMNS when the caller sets it (rich reads it), else 160 (rich's 80 folds every table)
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)


err_console = Console(stderr=True, width=None if sys.stderr.isatty() or os.environ.get("COLUMNS") else 160)


log = logging.getLogger("launch.cli")


_STATE = {"debug": False}


SetOpt = typer.Option(None, "--set", help="Override a spec field: stages[0].train.lr=2e-4 (repeatable).")


ClusterOpt = typer.Option(None, "--cluster", help="Cluster profile name or YAML path (default: the spec's).")


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    root.setLevel(level.upper())
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda r: r.levelno < logging.WARNING)
    out.setFormatter(logging.Formatter("%(message)s"))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.handlers = [out, err]
    from sllm_lib.secrets import install_log_filter

    install_log_filter(root)  # secret values (tokens, passwords) show as *** in every line
    from sllm_lib.noise import quiet_libraries

    quiet_libraries()  # known library noise, dropped at the source (sllm_lib/noise.py); real errors still show


def _load(spec_path: Path, set_: list[str] | None, cluster: str | None) -> Any:
    from launch.pipeline import build_plan
    from sllm_lib.spec import find_cluster_profile, load_job_spec

    spec = load_job_spec(spec_path, set_ or [])
    profile = find_cluster_profile(cluster or spec.cluster, spec_path=spec_path)
    return build_plan(spec, spec_path, profile)


REGRESSION_EXIT = 3
"""Exit code of `sllm submit`/`sllm nightly` when a nightly's verdict is NO-GO (errors exit 2)."""
INCONCLUSIVE_EXIT = 4
"""Exit code when a nightly's verdict is INCONCLUSIVE (too little evidence, or nothing to compare with)."""


def _exit_on_verdict(outcome: Any) -> None:
    """Print each nightly stage's verdict, its reasons and its report; exit 3 on NO-GO, else 4 on INCONCLUSIVE."""
    from eval.results import VERDICT_LABELS

    worst = "go"
    for s in outcome.plan.stages:
        if s.kind != "nightly_eval":
            continue
        r = outcome.results[s.name]
        ex = r.extras
        verdict = ex.get("verdict") or ("no_go" if r.metrics.get("nightly/regression", 0.0) > 0 else "go")
        if verdict == "no_go" or (verdict == "inconclusive" and worst == "go"):
            worst = verdict
        style = {"go": "green bold", "no_go": "red bold"}.get(verdict, "yellow bold")
        console.print(f"nightly {ex.get('date')}: [{style}]{VERDICT_LABELS.get(verdict, verdict)}[/]  candidate "
                      f"v{ex.get('candidate_version')} vs champion v{ex.get('champion_version') or '-'}, "
                      f"{r.metrics.get('nightly/regressed_gates', 0):.0f} of {r.metrics.get('nightly/gates', 0):.0f} "
                      "gates regressed" + (", promoted" if ex.get("promoted") else ""), highlight=False)
        for reason in ex.get("reasons") or []:
            console.print(f"  - {reason}", highlight=False, markup=False)
        console.print(f"report: {ex.get('report')}", highlight=False)
    if worst == "no_go":
        raise typer.Exit(REGRESSION_EXIT)
    if worst == "inconclusive":
        raise typer.Exit(INCONCLUSIVE_EXIT)


def _print_outcome(outcome: Any) -> None:
    from sllm_lib.tracking.lineage import lineage_tree, walk_lineage

    table = Table(title=f"{outcome.plan.spec.name}: pipeline run {outcome.parent_run_id} ({outcome.wall_s:.0f} s)")
    for col in ("stage", "kind", "steps", "loss first -> last", "metrics", "run id"):
        table.add_column(col, overflow="fold")
    for s in outcome.plan.stages:
        r = outcome.results[s.name]
        loss = f"{r.loss_first:.3f} -> {r.loss_last:.3f}" if r.loss_first is not None else "-"
        shown = {k: v for k, v in r.metrics.items() if not k.endswith("runtime_s")}
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
        tag = " (reused)" if s.name in outcome.reused else ""
        table.add_row(s.name + tag, s.kind, str(r.steps or "-"), loss, metrics or "-", outcome.run_ids[s.name])
    console.print(table)
    for s in outcome.plan.stages:
        reg = getattr(outcome.plan.spec.stage(s.name), "register_as", None)
        if reg:
            ref = f"{reg.name}@{reg.alias}"
            console.print(f"\nlineage of [bold]{ref}[/]:")
            console.print(lineage_tree(walk_lineage(outcome.tracking_uri, ref)))
    console.print("\n" + mlflow_ui_hint(outcome.tracking_uri, outcome.experiment_id))


def mlflow_ui_hint(uri: str, experiment_id: str) -> str:
    """How to open the pipeline's experiment in the MLflow UI, in its model-training view."""
    from sllm_lib.secrets import redact_text
    from sllm_lib.tracking.tracker import ui_link

    page = ui_link(f"experiments/{experiment_id}") if experiment_id else ui_link("experiments")
    if uri.startswith(("http://", "https://")):
        return f"MLflow UI: {redact_text(uri.rstrip('/'))}/{page}"
    return f"MLflow UI: mlflow ui --backend-store-uri {uri} --port 5000  (then open http://127.0.0.1:5000/{page})"


def _spec_cache(spec_path: Path, set_: list[str] | None) -> tuple[Any, Any]:
    from sllm_lib.cache.store import FeatureCache
    from sllm_lib.data.feature_cache import cache_kwargs
    from sllm_lib.spec import load_job_spec

    spec = load_job_spec(spec_path, set_ or [])
    if spec.model is None:
        raise SllmError(f"{spec_path}: the cache is keyed by the model's feature extractor; the spec has no model")
    kwargs = cache_kwargs(spec)
    if kwargs["mode"] == "off":
        kwargs["mode"] = "readwrite"  # the cache commands act on the cache even when stages skip it
    return spec, FeatureCache(**kwargs)


KindOpt = typer.Option(..., "--kind", help=" | ".join(get_args(RecordKind)))
