"""`sllm eval | nightly | lineage | export`: registered models, scored, traced and exported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from launch.cli.common import ClusterOpt, SetOpt, _exit_on_verdict, _load, _print_outcome, app, console
from sllm_lib.errors import SllmError


@app.command("eval")
def eval_(model: str = typer.Argument(..., help="Merged model folder, models:/NAME@ALIAS, models:/NAME/VERSION, "
                                                "or the MLflow run id of a merge stage."),
          suite: str = typer.Option(..., "--suite", help="Suite name (eval/suites/<name>.yaml) or YAML path."),
          cluster: Optional[str] = typer.Option("local", "--cluster", help="Cluster profile name or YAML path."),
          sample_limit: Optional[int] = typer.Option(None, help="At most N samples per task."),
          tracking_uri: Optional[str] = typer.Option(None, help="Default: sqlite file under --output-dir."),
          experiment: str = typer.Option("sllm-eval", help="MLflow experiment of the eval run."),
          output_dir: Path = typer.Option(Path("runs"), help="Run folders (and the embedded MLflow store).")) -> None:
    """Score one model on an evaluation suite: batched generation, metrics table, samples artifact, eval run."""
    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.spec import find_cluster_profile, parse_job_spec
    from sllm_lib.tracking.tracker import default_tracking_uri
    from eval.suites import find_suite, load_suite

    suite_path = find_suite(suite).resolve()
    s = load_suite(suite_path)
    uri = tracking_uri or default_tracking_uri(output_dir.resolve())
    ref = _pin_version(model, uri)
    raw = {"name": f"eval-{s.name}", "cluster": cluster or "local", "output_dir": str(output_dir),
           "tracking": {"uri": uri, "experiment": experiment},
           "stages": [{"name": "eval", "kind": "suite_eval", "model": ref, "suite": str(suite_path),
                       **({"sample_limit": sample_limit} if sample_limit else {})}]}
    spec = parse_job_spec(raw, source="sllm eval", base_dir=Path.cwd())
    profile = find_cluster_profile(cluster or "local")
    p = build_plan(spec, suite_path, profile)
    console.print(f"[bold]eval[/] {ref} on suite {s.name} ({len(s.tasks)} tasks) on {profile.name} -> {p.run_dir}")
    outcome = submit_pipeline(p)
    r = outcome.results["eval"]
    table = Table(title=f"{r.extras.get('model', ref)} on {s.name}  "
                        f"({r.metrics.get('samples_per_s', 0):.2f} samples/s; run {outcome.run_ids['eval']}"
                        + (", reused" if "eval" in outcome.reused else "") + ")")
    table.add_column("task")
    names = [m for t in s.tasks for m in t.metric_names()]
    metric_cols = list(dict.fromkeys(names))
    from sllm_lib.metrics.registry import metric_scale

    for m in metric_cols:
        table.add_column(f"{m} ({metric_scale(m)})" if metric_scale(m) else m, justify="right")
    for t in s.tasks:
        table.add_row(t.name, *(f"{r.metrics[f'{t.name}/{m}']:.4f}" if f"{t.name}/{m}" in r.metrics else "-"
                                for m in metric_cols))
    console.print(table)
    from eval.results import normalizer_lines

    for line in normalizer_lines(s.normalizers()):
        console.print(f"text normaliser {line}", highlight=False)
    console.print(f"samples: {Path(r.output_dir or '') / 'samples.jsonl'}", highlight=False)


def _pin_version(ref: str, uri: str) -> str:
    """models:/NAME@ALIAS -> models:/NAME/VERSION, so a moved alias is a new evaluation, not a reused one."""
    if not (ref.startswith("models:/") and "@" in ref):
        return ref
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from sllm_lib.errors import ArtifactNotFoundError
    from sllm_lib.tracking.lineage import parse_model_ref

    name, alias, _ = parse_model_ref(ref)
    try:
        mv = MlflowClient(tracking_uri=uri).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise ArtifactNotFoundError(f"{ref}: not found in the registry at {uri} ({exc.message})") from exc
    console.print(f"{ref} is version {mv.version}")
    return f"models:/{name}/{mv.version}"


@app.command()
def nightly(spec_path: Path = typer.Argument(..., metavar="SPEC", help="A job with a nightly_eval stage "
                                                                       "(jobs/nightly_eval.yaml)."),
            set_: Optional[list[str]] = SetOpt, cluster: Optional[str] = ClusterOpt,
            date: Optional[str] = typer.Option(None, help="Nightly date YYYY-MM-DD (default: today, UTC)."),
            promote: bool = typer.Option(False, "--promote", help="Move champion to the candidate on GO."),
            ) -> None:
    """Run a nightly evaluation job: exit 0 on GO, 3 on NO-GO, 4 on INCONCLUSIVE, 2 on an error.

    Equivalent to `sllm submit SPEC` with the nightly stage's date/promote set; a re-run for the same
    date reuses that night's result (nothing is scored or logged twice).
    """
    from launch.pipeline import submit_pipeline
    from sllm_lib.spec import load_job_spec

    spec = load_job_spec(spec_path, set_ or [])
    idx = [i for i, st in enumerate(spec.stages) if st.kind == "nightly_eval"]
    if not idx:
        raise SllmError(f"{spec_path}: no stage of kind nightly_eval (see jobs/nightly_eval.yaml)")
    extra = [f"stages[{i}].date={date}" for i in idx if date] + [f"stages[{i}].promote=true" for i in idx if promote]
    p = _load(spec_path, [*(set_ or []), *extra], cluster)
    console.print(f"[bold]{p.spec.name}[/] hash {p.spec_hash[:12]} on {p.profile.name} -> {p.run_dir}")
    outcome = submit_pipeline(p)
    _print_outcome(outcome)
    _exit_on_verdict(outcome)


@app.command()
def lineage(model: str = typer.Argument(..., help="NAME@ALIAS or NAME/VERSION, e.g. sllm-demo-tiny@candidate"),
            tracking_uri: Optional[str] = typer.Option(None, help="Default: sqlite file under --output-dir."),
            output_dir: Path = typer.Option(Path("runs"), help="Where the embedded default store lives.")) -> None:
    """Walk a registered model back through its stage runs to the datasets."""
    from sllm_lib.tracking.lineage import lineage_tree, walk_lineage
    from sllm_lib.tracking.tracker import default_tracking_uri

    uri = tracking_uri or default_tracking_uri(output_dir)
    console.print(lineage_tree(walk_lineage(uri, model)))


@app.command()
def export(model: str = typer.Argument(..., help="Merged model folder, models:/NAME@ALIAS, NAME/VERSION, or the "
                                                 "MLflow run id of a merge stage."),
           out: Path = typer.Option(..., "-o", "--output", help="Folder to write (must not exist or be empty)."),
           push_to_hub: Optional[str] = typer.Option(None, help="Also upload to this hub repository (ORG/NAME); "
                                                                "token from HF_TOKEN or the hub login."),
           public: bool = typer.Option(False, "--public", help="Create the hub repository public (default private)."),
           overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output folder."),
           variants: Optional[str] = typer.Option(None, help="Also write device variants into OUTPUT/<variant>/: "
                                                             "comma-separated bf16, fp16, fp32, bnb4, bnb8."),
           cpu_report: bool = typer.Option(False, "--cpu-report", help="Measure size on disk, peak memory and ms "
                                                                       "per generated token of each folder on the CPU."),
           tracking_uri: Optional[str] = typer.Option(None, help="Default: sqlite file under --output-dir."),
           output_dir: Path = typer.Option(Path("runs"), help="Where the embedded default store lives.")) -> None:
    """Write a merged model as a hub-ready folder with a model card built from its lineage (optionally upload)."""
    from launch.export import REPORT, export_model, report_markdown
    from sllm_lib.tracking.tracker import default_tracking_uri

    uri = tracking_uri or default_tracking_uri(output_dir)
    chosen = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    result = export_model(model, out, tracking_uri=uri, push_to_hub=push_to_hub, private=not public,
                          overwrite=overwrite, variants=chosen, cpu_report=cpu_report)
    if cpu_report:
        console.print(report_markdown(json.loads((result.folder / REPORT).read_text(encoding="utf-8"))),
                      markup=False, highlight=False)
    files = sorted(p.name for p in result.folder.iterdir())
    console.print(f"exported {model} -> {result.folder} ({len(files)} files: {', '.join(files)})", highlight=False)
    if result.uploaded_to:
        console.print(f"uploaded: {result.uploaded_to}", highlight=False)
