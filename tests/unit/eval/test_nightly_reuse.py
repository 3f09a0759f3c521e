"""The nightly reuses what `sllm eval` already scored: same registered version, same suite digest, finished.

A sqlite MLflow store and the very functions `sllm eval` tags and logs its run with; the scoring path is
replaced by one that fails loudly, so a test that expects reuse fails if the nightly would score again."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from eval.eval_runs import TAG_NIGHTLY_DATE, eval_tags, log_eval
from eval.nightly import evaluate_version
from eval.results import SampleScore
from eval.suites import load_suite
from tests.conftest import SAMPLE

DATE = "2026-11-20"
MODEL_ID = "m-0123456789abcdef"


class WouldScore(Exception):
    pass


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    from mlflow import MlflowClient

    import sllm_lib.models.refs as refs

    def no_scoring(*args, **kwargs):
        raise WouldScore("the nightly went on to download and score the model")

    monkeypatch.setattr(refs, "download_logged_model", no_scoring)
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump({"name": "reuse_it", "tasks": [
        {"name": "text_qa", "type": "text_qa", "data": str(SAMPLE / "text_qa_val.jsonl"),
         "metrics": ["rougeL", "bleu"]}]}))
    suite = load_suite(suite_file)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    return SimpleNamespace(client=client, uri=uri, suite=suite, digest=suite.digest(),
                           nightly_exp=client.create_experiment("nightly", artifact_location=(tmp_path / "a1").as_uri()),
                           eval_exp=client.create_experiment("sllm-eval", artifact_location=(tmp_path / "a2").as_uri()))


def _sllm_eval_run(store: SimpleNamespace, *, version: str = "3", digest: str | None = None,
                   status: str = "FINISHED", sample_limit: int | None = None, date: str | None = None) -> str:
    """An eval run as `sllm eval models:/demo/VERSION --suite S` leaves it (the suite_eval stage's tags and logs)."""
    resolved = SimpleNamespace(path=Path("/models") / version, name="demo", version=version, model_id=MODEL_ID)
    run_id = store.client.create_run(store.eval_exp, run_name="eval").info.run_id
    samples = {"text_qa": [SampleScore(id="q1", reference="두통", prediction="두통", scores={"rougeL": 1.0, "bleu": 1.0})]}
    log_eval(store.client, run_id, tags=eval_tags(resolved, store.suite, digest or store.digest, date=date,
                                                  sample_limit=sample_limit),
             metrics={"text_qa/rougeL": 0.41, "text_qa/bleu": 0.07}, samples=samples, samples_per_s=3.0,
             model_id=None)
    store.client.log_metric(run_id, "cache/bytes_read", 123456.0)  # the worker's counters ride along
    store.client.log_metric(run_id, "eval/reuse_it/text_qa/rougeL", 0.41)  # the logged-model copy
    store.client.set_terminated(run_id, status)
    return run_id


def _nightly_eval(store: SimpleNamespace, reuse_evals: str = "same_date", version: str = "3"):
    stage = SimpleNamespace(name="nightly", registered_model="demo", reuse_evals=reuse_evals)
    mv = SimpleNamespace(version=version, aliases=["candidate"], run_id="r" * 32, model_id=MODEL_ID,
                         source=f"models:/{MODEL_ID}")
    ctx = SimpleNamespace(tracking_uri=store.uri, run_id="n" * 32)
    return evaluate_version(store.client, ctx, stage, store.suite, store.digest, "candidate", mv, date=DATE,
                            experiment_id=store.nightly_exp)


def test_nightly_reuses_a_finished_sllm_eval_of_the_same_version_and_suite(store, caplog) -> None:
    run_id = _sllm_eval_run(store)
    with caplog.at_level(logging.INFO, logger="eval.nightly"):
        got = _nightly_eval(store)
    assert got.reused and got.eval_run_id == run_id and got.version == "3"
    assert got.metrics == {"text_qa/rougeL": 0.41, "text_qa/bleu": 0.07}  # no counters, no eval/... copies
    assert [s.id for s in got.samples["text_qa"]] == ["q1"]
    assert any(f"reusing `sllm eval` run {run_id}" in r.getMessage() and store.digest[:12] in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("mismatch", [dict(version="4"), dict(digest="0" * 64), dict(status="FAILED"),
                                      dict(sample_limit=5)])
def test_nightly_scores_when_the_sllm_eval_does_not_match(store, mismatch) -> None:
    _sllm_eval_run(store, **mismatch)
    with pytest.raises(WouldScore):
        _nightly_eval(store)


def test_reuse_never_scores_and_same_date_ignores_other_nights(store) -> None:
    _sllm_eval_run(store)
    with pytest.raises(WouldScore):
        _nightly_eval(store, reuse_evals="never")
    store.client.delete_run(next(r.info.run_id for r in store.client.search_runs([store.eval_exp])))
    night_run = _sllm_eval_run(store, date="2026-11-19")  # another night's eval of the same version
    assert store.client.get_run(night_run).data.tags[TAG_NIGHTLY_DATE] == "2026-11-19"
    with pytest.raises(WouldScore):
        _nightly_eval(store)  # same_date: only tonight's runs and plain `sllm eval` runs
    assert _nightly_eval(store, reuse_evals="always").eval_run_id == night_run
