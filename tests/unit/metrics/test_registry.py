"""Metric registry: specs, validation before computing, per-metric options."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sllm_lib.metrics import (
    METRIC_SPECS,
    METRICS,
    MetricResult,
    compute_metrics,
    compute_text_metrics,
    is_higher_better,
)
from sllm_lib.metrics.registry import MetricSpec

ALL_NAMES = [
    "cer", "wer", "rougeL", "rouge1", "rouge2", "bleu", "distinct_1", "distinct_2",
    "exact_match", "keyword_match", "accuracy", "macro_f1", "unparseable_rate", "bertscore_f1", "embedding_similarity",
]  # fmt: skip
TEXT_NAMES = [n for n in ALL_NAMES if METRIC_SPECS[n].needs == "text"]
LABELS = ["우울", "불안", "정상"]


def test_every_metric_has_a_spec():
    assert sorted(METRIC_SPECS) == sorted(ALL_NAMES)
    for name, spec in METRIC_SPECS.items():
        assert isinstance(spec, MetricSpec)
        assert spec.name == name
        assert spec.needs in ("text", "labels", "model")
        assert callable(spec.compute)
    assert {n for n, s in METRIC_SPECS.items() if s.needs == "labels"} == {"accuracy", "macro_f1", "unparseable_rate"}
    assert METRIC_SPECS["bertscore_f1"].needs == "model"
    assert {"layer", "idf", "rescale_with_baseline", "baseline"} <= set(METRIC_SPECS["bertscore_f1"].options)
    # every default text metric of the older registry is here too
    assert set(METRICS) <= set(METRIC_SPECS)


def test_is_higher_better():
    lower = {"cer", "wer", "unparseable_rate"}
    for name in ALL_NAMES:
        assert is_higher_better(name) is (name not in lower), name
    assert is_higher_better("rougeL_f1") is True  # result names work too
    assert is_higher_better("bertscore_p") is True
    with pytest.raises(ValueError, match="unknown metric 'meteor'; valid: accuracy"):
        is_higher_better("meteor")


def test_text_metrics_match_the_plain_registry():
    refs = ["혈압이 높습니다", "두통이 있습니다"]
    hyps = ["혈압이 높습니다", "두통이 없습니다"]
    ours = compute_metrics(TEXT_NAMES, refs, hyps)
    plain = compute_text_metrics(TEXT_NAMES, refs, hyps)
    assert list(ours) == TEXT_NAMES
    for name in TEXT_NAMES:
        assert ours[name] == plain[name], name
        assert ours[name].name == METRIC_SPECS[name].result_name


def test_every_score_lies_on_its_declared_scale_and_bleu_is_0_to_1():
    """The registry declares each metric's scale; the computed corpus and per-sample scores keep to it (BLEU was
    sacrebleu's 0-100 beside ROUGE's 0-1)."""
    refs = ["혈압이 정상 범위입니다", "두통이 있습니다", "우울", "정상"]
    hyps = ["혈압이 정상 범위 입니다", "두퉁이 있어요 있어요 있어요", "우울", "잘 모르겠어요"]
    opts = {"keyword_match": {"keywords": [["혈압"], ["두통"], ["우울"], ["정상"]]}}
    out = compute_metrics(TEXT_NAMES, refs, hyps, options=opts)
    label_names = [n for n in ALL_NAMES if METRIC_SPECS[n].needs == "labels"]
    out |= compute_metrics(label_names, ["우울", "정상", "불안"], ["우울", "잘 모르겠어요", "정상"], labels=LABELS)
    for name, res in out.items():
        low, high = METRIC_SPECS[name].value_range
        for v in [res.score, *res.per_sample]:
            assert v >= low and (high is None or v <= high), (name, v, METRIC_SPECS[name].value_range)
    assert METRIC_SPECS["bleu"].value_range == (0.0, 1.0) and 0.1 < out["bleu"].score < 1.0
    assert out["wer"].per_sample[1] > 1.0  # why CER/WER declare no upper bound
    assert METRIC_SPECS["wer"].scale == "≥0" and METRIC_SPECS["bleu"].scale == "0-1"
    assert METRIC_SPECS["embedding_similarity"].scale == "-1 to 1"


def test_scale_by_registry_or_result_name_and_none_for_counters():
    from sllm_lib.metrics.registry import metric_scale, metric_spec

    assert metric_scale("bleu") == "0-1" and metric_scale("rougeL_f1") == "0-1" and metric_scale("cer") == "≥0"
    assert metric_scale("bertscore_p") == "-1 to 1"
    assert metric_spec("rougeL_f1") is METRIC_SPECS["rougeL"]
    assert metric_spec("bytes_read") is None and metric_scale("samples_per_s") == ""


def test_options_change_the_computation():
    refs, hyps = ["혈압이 높습니다"], ["혈압이높습니다"]
    assert compute_metrics(["cer"], refs, hyps)["cer"].score == 0.0
    kept = compute_metrics(["cer"], refs, hyps, options={"cer": {"remove_whitespace": False}})
    assert kept["cer"].score == pytest.approx(1 / 8)
    out = compute_metrics(
        ["rougeL", "bleu", "distinct_1"],
        ["혈압이 높습니다"],
        ["혈압이 낮습니다"],
        options={
            "rougeL": {"tokenizer": "char"},
            "bleu": {"tokenize": "space"},
            "distinct_1": {"tokenizer": "char"},
        },
    )
    assert out["rougeL"].score == pytest.approx(6 / 7)
    assert out["distinct_1"].score == pytest.approx(7 / 7)
    assert 0 < out["bleu"].per_sample[0] < 1
    kw = compute_metrics(
        ["keyword_match"], ["무시됨"], ["두통이 있습니다"], options={"keyword_match": {"keywords": [["두통", "발열"]]}}
    )
    assert kw["keyword_match"].score == pytest.approx(0.5)
    # options for a valid metric that was not requested are ignored
    assert compute_metrics(["wer"], ["가 나"], ["가 나"], options={"cer": {"nfc": False}})["wer"].score == 0.0


def test_label_metrics():
    refs = ["우울", "불안", "정상"]
    hyps = ["우울입니다", "모르겠어요", "normal"]
    out = compute_metrics(
        ["accuracy", "macro_f1", "unparseable_rate", "exact_match"],
        refs,
        hyps,
        labels=LABELS,
        options={"accuracy": {"aliases": {"정상": ["normal"]}}},
    )
    assert out["accuracy"].score == pytest.approx(2 / 3)  # with the alias
    assert out["unparseable_rate"].score == pytest.approx(2 / 3)  # without it
    assert out["macro_f1"].per_sample == [1.0, 0.0, 0.0]
    assert out["exact_match"].score == 0.0


def _opts(metric: str, **options) -> dict:
    return {"names": [metric], "options": {metric: options}}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"names": ["cer", "meteor", "chrf"]}, r"unknown metric\(s\) 'meteor', 'chrf'; valid: accuracy, bertscore_f1"),
        ({"names": ["accuracy"]}, r"metric 'accuracy' needs labels"),
        ({"names": ["bertscore_f1"]}, r"metric 'bertscore_f1' needs option\(s\) 'model_path'"),
        (_opts("cer", tokenizer="char"), r"unknown option 'tokenizer' for metric 'cer'"),
        (_opts("rougeL", tokenize="char"), r"unknown option 'tokenize' for metric 'rougeL'; valid: tokenizer"),
        ({"names": ["cer"], "options": {"meteor": {}}}, r"options given for unknown metric\(s\) 'meteor'"),
        (_opts("cer", nfc="yes"), r"option 'nfc' of metric 'cer' must be true or false"),
        (_opts("rougeL", tokenizer="bpe"), r"option 'tokenizer' of metric 'rougeL' is 'bpe'"),
        (_opts("bleu", tokenize="13a"), r"option 'tokenize' of metric 'bleu' is '13a'"),
        (_opts("bertscore_f1", model_path="/nonexistent/bert"), "does not exist"),
        (_opts("bertscore_f1", model_path=".", rescale_with_baseline=True), "rescale_with_baseline needs a baseline"),
        (_opts("bertscore_f1", model_path=".", baseline=[0.8, 0.8, 0.8]), "rescale_with_baseline is false"),
        (_opts("bertscore_f1", model_path=".", idf="yes"), "option 'idf' must be true or false"),
        ({"names": "cer"}, "list of metric names"),
    ],
)
def test_validation_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(references=["가"], hypotheses=["가"], **kwargs)


def test_everything_is_validated_before_any_metric_runs(monkeypatch):
    calls: list[str] = []

    def spy(refs: list[str], hyps: list[str], *, labels=None, **opts) -> MetricResult:
        calls.append("cer")
        return MetricResult("cer", 0.0, [0.0] * len(refs))

    monkeypatch.setitem(METRIC_SPECS, "cer", MetricSpec("cer", False, "text", spy))
    with pytest.raises(ValueError, match="needs labels"):
        compute_metrics(["cer", "macro_f1"], ["가"], ["가"])
    with pytest.raises(ValueError, match=r"2 references vs 1 hypotheses"):
        compute_metrics(["cer"], ["가", "나"], ["가"])
    assert calls == []
    compute_metrics(["cer"], ["가"], ["가"])
    assert calls == ["cer"]


def test_empty_inputs():
    out = compute_metrics([n for n in ALL_NAMES if METRIC_SPECS[n].needs != "model"], [], [], labels=LABELS)
    for res in out.values():
        assert res.score == 0.0
        assert res.per_sample == []


def test_import_is_cheap():
    code = (
        "import sys, sllm_lib.metrics; "
        "heavy = [m for m in ('jiwer', 'rouge_score', 'kiwipiepy', 'sacrebleu', 'numpy', 'torch', 'transformers') "
        "if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_embedding_similarity_from_a_local_model_folder(tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    from sllm_lib.metrics.registry import compute_metrics
    from sllm_lib.models.builders import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    refs = ["물을 마시고 싶어요", "밖에 나가고 싶어요"]
    hyps = ["물을 마시고 싶어요", "배가 아파요"]
    res = compute_metrics(["embedding_similarity"], refs, hyps,
                          options={"embedding_similarity": {"model_path": str(tmp_path)}})["embedding_similarity"]
    assert res.per_sample[0] == pytest.approx(1.0, abs=1e-5)  # identical sentences
    assert res.per_sample[1] < res.per_sample[0]
    assert res.score == pytest.approx(sum(res.per_sample) / 2)
    with pytest.raises(ValueError, match="model_path"):
        compute_metrics(["embedding_similarity"], refs, hyps)
