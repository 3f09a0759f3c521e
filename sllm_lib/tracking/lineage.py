"""Walk lineage back from a registered model: version -> merge run -> stage runs -> datasets."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from sllm_lib.errors import ArtifactNotFoundError
from sllm_lib.tracking.tracker import (TAG_MODEL_ID, TAG_PARENT, TAG_SOURCE_MODELS, TAG_SPEC_HASH, TAG_STAGE,
                                       TAG_STAGE_KIND, TAG_UPSTREAM_RUNS)

log = logging.getLogger(__name__)


@dataclass
class LineageNode:
    """One run in the chain with its datasets and upstream runs."""

    run_id: str
    stage: str
    kind: str
    status: str
    spec_hash: str
    datasets: list[dict[str, str]] = field(default_factory=list)
    upstream: list[LineageNode] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # the LoggedModels this run output (its adapter, its merge)
    usage: RunUsage | None = None  # what this run used (None: recorded before usage was, or nothing ran)
    sweep_points: list[RunUsage] = field(default_factory=list)  # the other points of the sweep this run won

    def stages(self) -> list[str]:
        """Every stage name in the tree (this one first)."""
        return [self.stage] + [s for u in self.upstream for s in u.stages()]


@dataclass
class RunUsage:
    """A stage run's GPU-hours and cost, as its run records them (sllm_lib/usage.py)."""

    run_id: str
    gpu_hours: float
    wall_s: float
    interrupted_gpu_hours: float = 0.0
    cost: float | None = None
    currency: str | None = None

    @classmethod
    def of(cls, run: Any) -> RunUsage | None:
        from sllm_lib.usage import COST_METRIC, TAG_CURRENCY

        m = run.data.metrics
        if "usage/gpu_hours" not in m:
            return None
        return cls(run_id=run.info.run_id, gpu_hours=m["usage/gpu_hours"], wall_s=m.get("usage/wall_s", 0.0),
                   interrupted_gpu_hours=m.get("usage/interrupted_gpu_hours", 0.0), cost=m.get(COST_METRIC),
                   currency=run.data.tags.get(TAG_CURRENCY))


@dataclass
class UsageTotal:
    """A model's usage along its lineage: each run once (a stage reused by several pipelines is one run), the
    losing points of a sweep included. `cost` per currency; `unpriced` runs used GPUs on a profile without a
    price, so a cost total leaves them out (and says so)."""

    gpu_hours: float = 0.0
    wall_s: float = 0.0
    interrupted_gpu_hours: float = 0.0
    cost: dict[str, float] = field(default_factory=dict)
    runs: int = 0
    unpriced: int = 0

    def add(self, u: RunUsage) -> None:
        self.gpu_hours += u.gpu_hours
        self.wall_s += u.wall_s
        self.interrupted_gpu_hours += u.interrupted_gpu_hours
        self.runs += 1
        if u.cost is not None and u.currency:
            self.cost[u.currency] = self.cost.get(u.currency, 0.0) + u.cost
        elif u.gpu_hours > 0:
            self.unpriced += 1

    def cost_text(self) -> str:
        """'12.50 USD' (several currencies joined with ' + '); '-' when nothing was priced."""
        text = " + ".join(f"{v:,.2f} {c}" for c, v in sorted(self.cost.items())) or "-"
        return text + (f" (+{self.unpriced} unpriced run{'s' if self.unpriced != 1 else ''})" if self.unpriced
                       and self.cost else "")

    def to_dict(self) -> dict[str, Any]:
        return {"gpu_hours": self.gpu_hours, "wall_s": self.wall_s, "interrupted_gpu_hours": self.interrupted_gpu_hours,
                "cost": dict(self.cost), "runs": self.runs, "unpriced_runs": self.unpriced}


def total_usage(root: LineageNode) -> UsageTotal:
    """The usage of every run in the tree, each once."""
    total, seen = UsageTotal(), set()

    def walk(node: LineageNode) -> None:
        for u in ([node.usage] if node.usage else []) + node.sweep_points:
            if u.run_id not in seen:
                seen.add(u.run_id)
                total.add(u)
        for up in node.upstream:
            walk(up)

    walk(root)
    return total


@dataclass
class ModelLineage:
    name: str
    version: str
    alias: str | None
    source: str
    pipeline_run_id: str | None
    root: LineageNode
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # eval runs that scored this version
    model_id: str | None = None  # the LoggedModel the version was registered from
    source_model_ids: list[str] = field(default_factory=list)  # the models it was built from (the adapters)

    @property
    def usage(self) -> UsageTotal:
        return total_usage(self.root)


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """'name@alias', 'models:/name@alias', 'name/3' or 'models:/name/3' -> (name, alias, version)."""
    body = ref[len("models:/"):] if ref.startswith("models:/") else ref
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        return name, alias, None
    if "/" in body:
        name, version = body.rsplit("/", 1)
        return name, None, version
    raise ArtifactNotFoundError(f"model reference {ref!r}: expected NAME@ALIAS or NAME/VERSION (e.g. sllm-demo@candidate)")


def _node(client: Any, run_id: str, seen: set[str]) -> LineageNode:
    run = client.get_run(run_id)
    tags = run.data.tags
    datasets = []
    for di in run.inputs.dataset_inputs or []:
        ctx = next((t.value for t in di.tags if t.key == "mlflow.data.context"), "")
        try:
            src = json.loads(di.dataset.source).get("uri", di.dataset.source)
        except (ValueError, AttributeError):
            src = di.dataset.source
        datasets.append({"name": di.dataset.name, "digest": di.dataset.digest, "source": src, "context": ctx})
    node = LineageNode(run_id=run_id, stage=tags.get(TAG_STAGE, run.info.run_name or run_id),
                       kind=tags.get(TAG_STAGE_KIND, "?"), status=run.info.status,
                       spec_hash=tags.get(TAG_SPEC_HASH, ""), datasets=datasets,
                       models=[m.model_id for m in getattr(run.outputs, "model_outputs", None) or []],
                       usage=RunUsage.of(run), sweep_points=_sweep_points(client, run))
    seen.add(run_id)
    for up in filter(None, tags.get(TAG_UPSTREAM_RUNS, "").split(",")):
        if up not in seen:
            node.upstream.append(_node(client, up, seen))
    return node


def _sweep_points(client: Any, run: Any) -> list[RunUsage]:
    """The other points of the sweep a run won (same pipeline run, same stage): a model's cost includes its
    search."""
    tags = run.data.tags
    if "sllm.sweep_index" not in tags or not tags.get(TAG_PARENT):
        return []
    flt = (f"tags.`{TAG_PARENT}` = '{tags[TAG_PARENT]}' and tags.`{TAG_STAGE}` = '{tags.get(TAG_STAGE, '')}'")
    others = client.search_runs([run.info.experiment_id], flt, max_results=1000)
    return [u for r in others if r.info.run_id != run.info.run_id and "sllm.sweep_index" in r.data.tags
            for u in [RunUsage.of(r)] if u is not None]


def run_usage_total(tracking_uri: str, run_id: str) -> UsageTotal:
    """The usage along the lineage of the model a run produced (e.g. a merge run): the run and its upstream."""
    from mlflow import MlflowClient

    return total_usage(_node(MlflowClient(tracking_uri=tracking_uri), run_id, set()))


def walk_lineage(tracking_uri: str, ref: str) -> ModelLineage:
    """Resolve a registered model reference and walk its runs back to the datasets."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_ref(ref)
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise ArtifactNotFoundError(f"{ref}: not found in the registry at {tracking_uri} ({exc.message})") from exc
    if not mv.run_id:
        raise ArtifactNotFoundError(f"{ref}: version {mv.version} has no source run; lineage unknown")
    root = _node(client, mv.run_id, set())
    parent = client.get_run(mv.run_id).data.tags.get(TAG_PARENT)
    model_id = version_model_id(mv)
    sources: list[str] = []
    if model_id:
        try:
            sources = list(filter(None, client.get_logged_model(model_id).tags.get(TAG_SOURCE_MODELS, "").split(",")))
        except MlflowException as exc:
            log.warning("%s: logged model %s not readable (%s)", ref, model_id, exc.message)
    return ModelLineage(name=name, version=str(mv.version), alias=alias, source=mv.source, pipeline_run_id=parent,
                        root=root, evaluations=_evaluations(client, name, str(mv.version)), model_id=model_id,
                        source_model_ids=sources)


def version_model_id(mv: Any) -> str | None:
    """The LoggedModel a registered version came from: its model_id where the registry keeps it, else our tag,
    else a models:/<id> source (mlflow 3.17's SQL registry stores no model_id)."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    if (mv.tags or {}).get(TAG_MODEL_ID):
        return mv.tags[TAG_MODEL_ID]
    src = mv.source or ""
    if src.startswith("models:/m-"):
        return src[len("models:/"):].split("/")[0]
    return None


def _evaluations(client: Any, name: str, version: str) -> list[dict[str, Any]]:
    """Suite evaluations of this version (sllm eval, nightly), newest first: the lineage's downstream end."""
    exps = [e.experiment_id for e in client.search_experiments()]
    if not exps:
        return []
    flt = f"tags.`sllm.eval.model_name` = '{name}' and tags.`sllm.eval.model_version` = '{version}'"
    out = []
    for r in client.search_runs(exps, flt, order_by=["attributes.start_time DESC"], max_results=20):
        tags = r.data.tags
        out.append({"run_id": r.info.run_id, "suite": tags.get("sllm.eval.suite", "?"), "status": r.info.status,
                    "date": tags.get("sllm.nightly.date", ""),
                    "metrics": task_scores(r.data.metrics)})
    return out


def task_scores(metrics: dict[str, float]) -> dict[str, float]:
    """The `task/metric` scores of an evaluation run, sorted: metrics the registry knows, without the
    `eval/SUITE/...` copies, cache and data counters or runtimes logged beside them."""
    from sllm_lib.metrics.registry import metric_spec

    out = {}
    for key in sorted(metrics):
        parts = key.split("/")
        if len(parts) == 2 and parts[0] not in ("cache", "data", "eval", "final", "train") and metric_spec(parts[1]):
            out[key] = metrics[key]
    return out


def lineage_tree(lin: ModelLineage) -> Any:
    """A rich Tree of the lineage."""
    from rich.markup import escape
    from rich.tree import Tree

    from sllm_lib.usage import format_gpu_hours

    head = f"[bold]{lin.name}[/] v{lin.version}" + (f" @{lin.alias}" if lin.alias else "") + f"  ({lin.source})"
    if lin.model_id:
        head += f"\nlogged model {lin.model_id}" + (
            f" built from {', '.join(lin.source_model_ids)}" if lin.source_model_ids else "")
    if lin.pipeline_run_id:
        head += f"\npipeline run {lin.pipeline_run_id}"
    total = lin.usage
    if total.runs:
        head += (f"\nused {format_gpu_hours(total.gpu_hours)} GPU-hours over {total.runs} stage run"
                 f"{'s' if total.runs != 1 else ''}" + (f" ({format_gpu_hours(total.interrupted_gpu_hours)} in "
                                                        "interrupted attempts)" if total.interrupted_gpu_hours else "")
                 + f", cost {total.cost_text()}")
    tree = Tree(head)

    def used(node: LineageNode) -> str:
        if node.usage is None:
            return ""
        u = node.usage
        text = f"  {format_gpu_hours(u.gpu_hours)} GPU-h" + (f", {u.cost:,.2f} {u.currency}" if u.cost is not None
                                                              else "")
        if node.sweep_points:
            n = len(node.sweep_points)
            text += (f" (+{n} other sweep point{'s' if n != 1 else ''}: "
                     f"{format_gpu_hours(sum(p.gpu_hours for p in node.sweep_points))} GPU-h)")
        return text

    def add(parent: Any, node: LineageNode) -> None:
        branch = parent.add(f"[cyan]{node.stage}[/] ({node.kind}) run {node.run_id} {node.status}"
                            + (f"  model {', '.join(node.models)}" if node.models else "") + escape(used(node)))
        for d in node.datasets:
            branch.add(f"[green]dataset[/] {escape(d['name'])} {escape('[' + d['context'] + ']')} "
                       f"digest {d['digest'][:12]} {escape(d['source'])}")
        for up in node.upstream:
            add(branch, up)

    add(tree, lin.root)
    if lin.evaluations:
        evals = tree.add("[magenta]evaluated by[/]")
        for e in lin.evaluations:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in e["metrics"].items())
            when = f" nightly {e['date']}" if e["date"] else ""
            evals.add(f"suite {escape(e['suite'])}{when}: run {e['run_id']} {e['status']}  {escape(shown)}")
    return tree
