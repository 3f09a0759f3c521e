"""The nightly evaluation against a real MLflow sqlite registry with two registered tiny models.

The champion is a "silent" model (final norm zeroed: every logit ties, greedy picks <pad>, the
answer is empty: CER 1.0 on every sample). The degraded candidate is the random-weight preset,
which babbles max_new_tokens characters (CER well above 1.0 on every sample): a regression the
bootstrap interval cannot call noise. A candidate that is a copy of the champion ties.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from tests.conftest import SAMPLE

pytestmark = pytest.mark.mlflow

DATE = "2026-11-20"


def _silent_copy(src: Path, dst: Path) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    norms = [k for k in weights if k.endswith("model.norm.weight") and "language_model" in k]
    assert norms, "the preset's final norm was not found"
    for k in norms:
        weights[k].zero_()
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _register(uri: str, folder: Path, name: str, alias: str | None) -> str:
    from mlflow import MlflowClient

    from sllm_lib.tracking.tracker import MlflowTracker

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("models") or None
    exp_id = exp.experiment_id if exp else client.create_experiment("models")
    run = client.create_run(exp_id, run_name=f"merge-{folder.name}")
    info = MlflowTracker(uri, run.info.run_id).log_model(folder, name=folder.name, registered_name=name, alias=alias)
    client.set_terminated(run.info.run_id, "FINISHED")
    return str(info["version"])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from sllm_lib.models.builders import materialize_tiny

    root = tmp_path_factory.mktemp("nightly_models")
    base = materialize_tiny("voxtral")
    return {"random": Path(shutil.copytree(base, root / "random")),
            "silent": _silent_copy(base, root / "silent")}


def _suite(tmp: Path) -> Path:
    suite = {
        "name": "nightly_it",
        "generation": {"max_new_tokens": 12, "batch_size": 8},
        "sample_limit": 8,
        "tasks": [
            {"name": "asr", "type": "asr", "data": str(SAMPLE / "asr_val.jsonl"), "metrics": ["cer", "wer"],
             "thresholds": {"cer": 0.0}},
            {"name": "text_qa", "type": "text_qa", "data": str(SAMPLE / "text_qa_val.jsonl"),
             "metrics": ["cer", "rougeL", "distinct_1"], "thresholds": {"cer": 0.0, "rougeL": 0.0}},
        ],
    }
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, allow_unicode=True), encoding="utf-8")
    return path


def _job(tmp: Path, **stage: object) -> Path:
    spec = {"name": "nightly-it", "cluster": str(tmp / "inproc.yaml"), "output_dir": str(tmp / "runs"),
            "tracking": {"experiment": "nightly"},
            "stages": [{"name": "nightly", "kind": "nightly_eval", "suite": str(_suite(tmp)),
                        "registered_model": "it-model", "date": DATE, "report_dir": str(tmp / "reports"),
                        "bootstrap": {"resamples": 500, "seed": 1}, **stage}]}
    (tmp / "inproc.yaml").write_text("kind: local\nname: inproc\nisolation: inprocess\n", encoding="utf-8")
    path = tmp / "nightly.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return path


def _nightly(job: Path, *args: str) -> int:
    from launch import cli

    rc = cli.app(["nightly", str(job), *args], standalone_mode=False)  # typer.Exit(n) returns n here
    return int(rc or 0)


def _uri(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'runs' / 'mlflow.db'}"


def test_degraded_candidate_is_a_regression_and_reruns_do_not_duplicate(tmp_path: Path, models) -> None:
    from mlflow import MlflowClient

    (tmp_path / "runs").mkdir()
    uri = _uri(tmp_path)
    champ = _register(uri, models["silent"], "it-model", "champion")
    cand = _register(uri, models["random"], "it-model", "candidate")
    newest = _register(uri, models["silent"], "it-model", None)  # a newer version without an alias
    job = _job(tmp_path, promote=True, latest_versions=2)

    assert _nightly(job) == 3  # regression -> exit 3

    out = tmp_path / "reports" / DATE
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert result["regression"] is True and result["promoted"] is False
    roles = {m["role"]: m["version"] for m in result["models"]}
    assert roles == {"candidate": cand, "champion": champ, "latest": newest}  # only one other version exists
    gates = {(g["task"], g["metric"]): g for g in result["gates"] if g["baseline"] == "champion"}
    assert set(gates) == {("asr", "cer"), ("text_qa", "cer"), ("text_qa", "rougeL")}
    asr = gates[("asr", "cer")]  # the babbling candidate inserts characters on every ASR sample
    assert asr["status"] == "regression", asr
    assert asr["candidate_value"] > asr["baseline_value"] and asr["ci_high"] < 0 and asr["n_samples"] == 8
    assert result["worst_samples"] and all(w["loss"] > 0 for w in result["worst_samples"])
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<title>NO-GO" in html and 'id="gates"' in html
    assert "NO-GO" in (out / "summary.md").read_text(encoding="utf-8")
    client = MlflowClient(tracking_uri=uri)
    assert str(client.get_model_version_by_alias("it-model", "champion").version) == champ  # not promoted

    def counts() -> tuple[int, int]:
        con = sqlite3.connect(tmp_path / "runs" / "mlflow.db")
        try:
            runs = con.execute("select count(*) from runs").fetchone()[0]
            metrics = con.execute("select count(*) from metrics").fetchone()[0]
        finally:
            con.close()
        return runs, metrics

    before = counts()
    assert _nightly(job) == 3  # same date: the night's result is reused
    assert counts() == before

    # the eval runs sit in the models' lineage and carry the samples artifact
    exp = client.get_experiment_by_name("nightly")
    evals = client.search_runs([exp.experiment_id], "tags.`sllm.eval.model_version` = '%s'" % cand)
    assert len(evals) == 1
    ev = evals[0]
    mv = client.get_model_version("it-model", cand)
    assert mv.run_id in ev.data.tags["sllm.upstream_run_ids"].split(",")
    local = client.download_artifacts(ev.info.run_id, "eval/samples.jsonl", str(tmp_path))
    rows = [json.loads(x) for x in Path(local).read_text(encoding="utf-8").splitlines()]
    assert {r["task"] for r in rows} == {"asr", "text_qa"} and all("cer" in r["scores"] for r in rows)


def test_tie_passes_promotes_and_trend_spans_nights(tmp_path: Path, models) -> None:
    from mlflow import MlflowClient

    (tmp_path / "runs").mkdir()
    uri = _uri(tmp_path)
    champ = _register(uri, models["silent"], "it-model", "champion")
    job = _job(tmp_path, promote=False, reuse_evals="always")
    # night 1: the candidate is the champion's twin (a re-registered copy)
    cand = _register(uri, models["silent"], "it-model", "candidate")
    assert _nightly(job, "--date", "2026-11-19") == 0
    # night 2: same twin; `always` reuses both evaluations; --promote moves champion to the twin
    assert _nightly(job, "--date", DATE, "--promote") == 0
    result = json.loads((tmp_path / "reports" / DATE / "result.json").read_text(encoding="utf-8"))
    assert result["regression"] is False and result["promoted"] is True
    gates = [g for g in result["gates"] if g["baseline"] == "champion"]
    assert gates and all(g["status"] == "pass" and g["improvement"] == 0 for g in gates)
    assert any(g["baseline"] == "previous_nightly" for g in result["gates"])
    assert [p["date"] for p in result["trends"]["asr/cer"]] == ["2026-11-19", DATE]
    assert all(m["reused"] for m in result["models"] if m["role"] in ("candidate", "champion"))
    client = MlflowClient(tracking_uri=uri)
    assert str(client.get_model_version_by_alias("it-model", "champion").version) == cand != champ


def test_first_night_is_inconclusive_and_a_policy_decides(tmp_path: Path, models) -> None:
    """No champion yet: INCONCLUSIVE, exit 4, and --promote makes the candidate the first champion. The next night
    (babbling candidate vs that champion) under `policy: {min_items: 20}`: 8 paired samples per gate are too few
    for a critical gate, so INCONCLUSIVE (exit 4) where the original rules say NO-GO (exit 3)."""
    from mlflow import MlflowClient

    (tmp_path / "runs").mkdir()
    uri = _uri(tmp_path)
    first = _register(uri, models["silent"], "it-model", "candidate")
    job = _job(tmp_path, promote=True)
    assert _nightly(job, "--date", "2026-11-19") == 4
    result = json.loads((tmp_path / "reports" / "2026-11-19" / "result.json").read_text(encoding="utf-8"))
    assert result["verdict"] == "inconclusive" and result["promoted"] is True
    assert result["reasons"] == ["no baseline to compare with (no champion yet, or it lacks every gated metric): "
                                 "nothing was gated"]
    assert any("as the first champion" in n for n in result["notes"])
    client = MlflowClient(tracking_uri=uri)
    assert str(client.get_model_version_by_alias("it-model", "champion").version) == first
    run, = client.search_runs([client.get_experiment_by_name("nightly").experiment_id],
                              "tags.`sllm.nightly.suite` = 'nightly_it' and tags.`sllm.nightly.date` = '2026-11-19'")
    assert run.data.tags["sllm.nightly.verdict"] == "inconclusive" and run.data.metrics["nightly/inconclusive"] == 1

    cand = _register(uri, models["random"], "it-model", "candidate")
    strict = _job(tmp_path, promote=True, compare_previous=False,
                  policy={"min_items": 20, "tiers": {"text_qa/rougeL": "advisory"}})
    assert _nightly(strict, "--date", DATE) == 4
    result = json.loads((tmp_path / "reports" / DATE / "result.json").read_text(encoding="utf-8"))
    assert result["verdict"] == "inconclusive" and result["promoted"] is False
    tiers = {(g["task"], g["metric"]): (g["tier"], g["status"]) for g in result["gates"]}
    assert tiers == {("asr", "cer"): ("critical", "insufficient"), ("text_qa", "cer"): ("critical", "insufficient"),
                     ("text_qa", "rougeL"): ("advisory", "insufficient")}
    assert "asr/cer (critical) against the champion has 8 paired samples, the policy needs 20" in result["reasons"]
    assert any("at least 20 paired samples" in line for line in result["policy"])
    html = (tmp_path / "reports" / DATE / "report.html").read_text(encoding="utf-8")
    assert "<title>INCONCLUSIVE" in html and 'data-tier="advisory"' in html
    assert str(client.get_model_version_by_alias("it-model", "champion").version) == first != cand
    assert _nightly(_job(tmp_path, compare_previous=False), "--date", "2026-11-21") == 3  # the original rules


def test_missing_candidate_fails_before_anything_runs(tmp_path: Path) -> None:
    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.errors import PlanError
    from sllm_lib.spec import find_cluster_profile, load_job_spec

    (tmp_path / "runs").mkdir()
    job = _job(tmp_path)
    spec = load_job_spec(job)
    plan = build_plan(spec, job, find_cluster_profile(str(tmp_path / "inproc.yaml")))
    with pytest.raises(PlanError, match="it-model@candidate not found"):
        submit_pipeline(plan)
    assert not plan.run_dir.exists()


@pytest.mark.slurm
def test_nightly_runs_as_a_slurm_job(slurm_cluster, tmp_path: Path, models) -> None:
    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.spec import SlurmProfile, load_job_spec

    (tmp_path / "runs").mkdir()
    uri = _uri(tmp_path)
    _register(uri, models["silent"], "it-model", "champion")
    _register(uri, models["random"], "it-model", "candidate")
    job = _job(tmp_path)
    profile = SlurmProfile(kind="slurm", name="t", partition="debug", nodes=1, cpus_per_task=1, mem_gb=2,
                           timeout_min=10, python="submitting")
    plan = build_plan(load_job_spec(job), job, profile)
    outcome = submit_pipeline(plan)
    r = outcome.results["nightly"]
    assert r.metrics["nightly/regression"] == 1.0 and r.extras["date"] == DATE
    state = json.loads((plan.run_dir / "state.json").read_text(encoding="utf-8"))
    assert state["stages"]["nightly"]["job_id"].isdigit()  # a real SLURM job id
    assert (tmp_path / "reports" / DATE / "report.html").is_file()
