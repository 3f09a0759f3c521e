"""BERTScore on tiny random encoders saved locally (no hub access), checked against the bert-score package."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from sllm_lib.metrics.bertscore import BERTSCORE_NAMES, bertscore

SENTS = ["환자는 두통을 호소합니다", "혈압이 정상 범위입니다", "커피 한 잔 주세요"]

# The case set shared with bert_score.score: Korean and English, a duplicated reference, an identical pair,
# reordered and partial hypotheses, surrounding spaces. No empty sentence: bert-score 0.3.13 fails on one
# under transformers 5 (it calls tokenizer.build_inputs_with_special_tokens, which transformers 5 dropped).
REFS = [
    "환자는 두통을 호소합니다",
    "혈압이 정상 범위입니다",
    "혈압이 정상 범위입니다",
    "The patient reports a headache.",
    "Blood pressure is within the normal range.",
    "커피 한 잔 주세요",
]
HYPS = [
    "두통을 환자는 호소합니다",
    "혈압이 정상입니다",
    "  혈압이 정상 범위입니다 ",
    "The patient has a severe headache.",
    "Blood pressure is normal.",
    "커피 두 잔 주세요",
]
# a made-up bert-score baseline file (LAYER,P,R,F; one row per hidden-state index)
BASELINE_ROWS = [(0.61, 0.62, 0.60), (0.70, 0.72, 0.71), (0.80, 0.79, 0.78)]


def _tiny_config(config_cls: type, vocab_size: int, **extra):
    """A 2-layer, 32-wide encoder config."""
    return config_cls(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **extra
    )


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BERT and a character WordPiece vocabulary for SENTS, REFS and HYPS."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    path = tmp_path_factory.mktemp("tiny_bert")
    chars = sorted({ch for s in SENTS + REFS + HYPS for ch in s if not ch.isspace()})
    # each word is split into "first char" + "##next char" pieces (punctuation is its own word)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{ch}" for ch in chars)]
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5: `vocab` takes the vocab.txt path (the v4 `vocab_file=` keyword is ignored); bert-score
    # truncates to model_max_length, so it must be set
    tokenizer = transformers.BertTokenizerFast(vocab=str(vocab_file), do_lower_case=False, model_max_length=64)
    tokenizer.save_pretrained(str(path))

    torch.manual_seed(0)
    config = _tiny_config(transformers.BertConfig, len(vocab), max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-layer random RoBERTa with a byte-level BPE trained on REFS + HYPS, saved twice: with the
    tokenizer's add_prefix_space on (how bert-score tokenises) and off (the usual hub setting)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")

    bpe_dir = tmp_path_factory.mktemp("tiny_bpe")
    bpe = tokenizers.ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(REFS + HYPS, vocab_size=400, min_frequency=1, special_tokens=specials, show_progress=False)
    bpe.save_model(str(bpe_dir))
    torch.manual_seed(0)
    folders = []
    for prefix in (True, False):
        path = tmp_path_factory.mktemp(f"tiny_roberta_prefix_{prefix}")
        tok = transformers.RobertaTokenizer.from_pretrained(str(bpe_dir), add_prefix_space=prefix, model_max_length=64)
        tok.save_pretrained(str(path))
        if prefix:
            config = _tiny_config(transformers.RobertaConfig, len(tok), max_position_embeddings=66,
                                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id)
            model = transformers.RobertaModel(config)
        model.save_pretrained(str(path))
        folders.append(path)
    return folders[0], folders[1]


def _package_scores(folder: Path, **kwargs) -> dict[str, list[float]]:
    """bert_score.score on the shared cases (candidates first), per sample."""
    bert_score = pytest.importorskip("bert_score")
    with warnings.catch_warnings():  # its baseline loading warns about a read-only numpy array
        warnings.simplefilter("ignore", UserWarning)
        p, r, f = bert_score.score(HYPS, REFS, model_type=str(folder), lang="ko", nthreads=0, batch_size=4, **kwargs)
    return dict(zip(BERTSCORE_NAMES, (p.tolist(), r.tolist(), f.tolist())))


def _baseline_file(folder: Path) -> Path:
    """BASELINE_ROWS as a bert-score baseline file (CSV despite the .tsv name, as bert-score ships them)."""
    path = folder / "baseline.tsv"
    rows = "".join(f"{i},{p},{r},{f}\n" for i, (p, r, f) in enumerate(BASELINE_ROWS))
    path.write_text("LAYER,P,R,F\n" + rows, encoding="utf-8")
    return path


def _assert_equal(ours: dict, theirs: dict[str, list[float]]) -> None:
    for name in BERTSCORE_NAMES:
        assert ours[name].per_sample == pytest.approx(theirs[name], abs=1e-5), name
        assert ours[name].score == pytest.approx(sum(theirs[name]) / len(theirs[name]), abs=1e-5), name


@pytest.mark.parametrize(("layer", "idf"), [(1, False), (2, False), (1, True), (2, True)])
def test_equals_the_bert_score_package(tiny_bert, layer, idf):
    ours = bertscore(REFS, HYPS, model_path=tiny_bert, layer=layer, idf=idf, batch_size=3)
    theirs = _package_scores(tiny_bert, num_layers=layer, idf=idf)
    _assert_equal(ours, theirs)
    assert theirs["bertscore_f1"][0] < 0.999  # the cases are not trivial


def test_rescaled_equals_the_bert_score_package(tiny_bert, tmp_path):
    baseline_file = _baseline_file(tmp_path)
    theirs = _package_scores(tiny_bert, num_layers=1, idf=True, rescale_with_baseline=True,
                             baseline_path=str(baseline_file))
    from_file = bertscore(REFS, HYPS, model_path=tiny_bert, layer=1, idf=True, rescale_with_baseline=True,
                          baseline=baseline_file)
    _assert_equal(from_file, theirs)
    # three numbers instead of the file; layer -2 is hidden state 1 of this 2-layer model
    numbers = bertscore(REFS, HYPS, model_path=tiny_bert, layer=-2, idf=True, rescale_with_baseline=True,
                        baseline=list(BASELINE_ROWS[1]))
    _assert_equal(numbers, theirs)
    raw = bertscore(REFS, HYPS, model_path=tiny_bert, layer=1, idf=True)["bertscore_f1"].per_sample
    b = BASELINE_ROWS[1][2]
    assert from_file["bertscore_f1"].per_sample == pytest.approx([(x - b) / (1 - b) for x in raw], abs=1e-6)


def test_default_layer_is_the_last(tiny_bert):
    ours = bertscore(REFS, HYPS, model_path=tiny_bert)
    _assert_equal(ours, _package_scores(tiny_bert, num_layers=2))


def test_roberta_byte_level_bpe_equals_the_package(tiny_roberta):
    with_prefix, without_prefix = tiny_roberta
    theirs = _package_scores(with_prefix, num_layers=2, idf=True)
    _assert_equal(bertscore(REFS, HYPS, model_path=with_prefix, layer=2, idf=True), theirs)
    # bert-score adds the leading space itself (under transformers 4; transformers 5 drops its encode()
    # argument), so the tokenizer folder's own add_prefix_space setting does not change our numbers
    _assert_equal(bertscore(REFS, HYPS, model_path=without_prefix, layer=2, idf=True), theirs)


def test_tokenizer_covers_the_test_sentences(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert), local_files_only=True)
    ids = tok(SENTS[0])["input_ids"]
    assert tok.unk_token_id not in ids
    assert len(ids) == len(SENTS[0].replace(" ", "")) + 2  # one piece per character + [CLS]/[SEP]
    assert all(tok.unk_token_id not in tok(s)["input_ids"] for s in REFS + HYPS)


def test_identical_sentences_score_one(tiny_bert):
    out = bertscore(SENTS, SENTS, model_path=tiny_bert, batch_size=2)
    assert list(out) == ["bertscore_p", "bertscore_r", "bertscore_f1"]
    for name, res in out.items():
        assert res.name == name
        assert res.per_sample == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
        assert res.score == pytest.approx(1.0, abs=1e-5)


def test_different_sentences_score_below_one(tiny_bert):
    refs = [SENTS[0], SENTS[1]]
    hyps = [SENTS[2], "혈압이 정상입니다"]
    out = bertscore(refs, hyps, model_path=tiny_bert)
    f1 = out["bertscore_f1"].per_sample
    assert all(v < 0.999 for v in f1)
    # F1 is the harmonic mean of P and R, per sample
    for p, r, f in zip(out["bertscore_p"].per_sample, out["bertscore_r"].per_sample, f1):
        assert f == pytest.approx(2 * p * r / (p + r))
    # a hypothesis that is a prefix of the reference: every hypothesis token has a close match
    partial = bertscore(["혈압이 정상 범위입니다"], ["혈압이 정상"], model_path=tiny_bert)
    assert partial["bertscore_f1"].score < 0.999


def test_batching_layer_idf_and_empty(tiny_bert):
    refs, hyps = [SENTS[0], SENTS[1], SENTS[2]], [SENTS[1], SENTS[1], SENTS[0]]
    one = bertscore(refs, hyps, model_path=tiny_bert, batch_size=1)
    many = bertscore(refs, hyps, model_path=tiny_bert, batch_size=16)
    assert one["bertscore_f1"].per_sample == pytest.approx(many["bertscore_f1"].per_sample, abs=1e-5)
    layer1 = bertscore(refs, hyps, model_path=tiny_bert, layer=1)
    assert layer1["bertscore_f1"].per_sample != pytest.approx(many["bertscore_f1"].per_sample)
    assert bertscore(refs, hyps, model_path=tiny_bert, layer=-1)["bertscore_f1"].per_sample == pytest.approx(
        many["bertscore_f1"].per_sample, abs=1e-5
    )
    idf = bertscore(refs, refs, model_path=tiny_bert, idf=True)
    assert idf["bertscore_f1"].per_sample == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    # bert-score's rule (with transformers 4): an empty side, whitespace included, scores 0 for P, R and F
    empty = bertscore(["", " ", SENTS[0]], ["", SENTS[0], ""], model_path=tiny_bert)
    for name in BERTSCORE_NAMES:
        assert empty[name].per_sample == [0.0, 0.0, 0.0]
    none = bertscore([], [], model_path=tiny_bert)
    assert none["bertscore_f1"].score == 0.0 and none["bertscore_f1"].per_sample == []


def test_idf_with_one_reference_weighs_uniformly(tiny_bert, caplog):
    # every reference token is in every (the only) reference, so idf weighs them all 0
    out = bertscore([SENTS[1]], ["혈압이 정상입니다"], model_path=tiny_bert, idf=True)
    assert 0.0 < out["bertscore_r"].score < 1.0
    assert "weighing their tokens uniformly" in caplog.text


def test_errors(tiny_bert, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        bertscore(["가"], ["가"], model_path=tmp_path / "missing")
    not_dir = tmp_path / "model.bin"
    not_dir.write_bytes(b"")
    with pytest.raises(ValueError, match="is not a directory"):
        bertscore(["가"], ["가"], model_path=not_dir)
    with pytest.raises(ValueError, match=r"2 references vs 1 hypotheses"):
        bertscore(["가", "나"], ["가"], model_path=tiny_bert)
    with pytest.raises(ValueError, match="layer"):
        bertscore(["가"], ["가"], model_path=tiny_bert, layer=3)
    with pytest.raises(ValueError, match="batch_size"):
        bertscore(["가"], ["가"], model_path=tiny_bert, batch_size=0)
    with pytest.raises(ValueError, match="'idf' must be true or false"):
        bertscore(["가"], ["가"], model_path=tiny_bert, idf="yes")


def test_rescale_errors(tiny_bert, tmp_path):
    def run(**kwargs):
        return bertscore(["가"], ["가"], model_path=tiny_bert, **kwargs)

    with pytest.raises(ValueError, match="rescale_with_baseline needs a baseline for a local model: three numbers"):
        run(rescale_with_baseline=True)
    with pytest.raises(ValueError, match="baseline is set but rescale_with_baseline is false"):
        run(baseline=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"three numbers below 1 \(P, R, F\)"):
        run(rescale_with_baseline=True, baseline=[0.5, 0.5])
    with pytest.raises(ValueError, match="three numbers below 1"):
        run(rescale_with_baseline=True, baseline=[0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="baseline file .* does not exist"):
        run(rescale_with_baseline=True, baseline=tmp_path / "missing.tsv")
    short = tmp_path / "short.tsv"
    short.write_text("LAYER,P,R,F\n0,0.5,0.5,0.5\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has 1 layer rows; layer 2 has none"):
        run(rescale_with_baseline=True, baseline=short)


def test_import_is_cheap():
    code = (
        "import sys, sllm_lib.metrics.bertscore; "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_through_the_registry(tiny_bert, tmp_path):
    from sllm_lib.metrics import compute_metrics

    out = compute_metrics(
        ["bertscore_f1", "cer"], SENTS, SENTS, options={"bertscore_f1": {"model_path": str(tiny_bert), "batch_size": 2}}
    )
    assert out["bertscore_f1"].name == "bertscore_f1"
    assert out["bertscore_f1"].score == pytest.approx(1.0, abs=1e-5)
    assert out["cer"].score == 0.0
    opts = {"model_path": str(tiny_bert), "layer": 1, "idf": True, "rescale_with_baseline": True,
            "baseline": list(BASELINE_ROWS[1])}
    rescaled = compute_metrics(["bertscore_f1"], REFS, HYPS, options={"bertscore_f1": opts})["bertscore_f1"]
    assert rescaled.per_sample == pytest.approx(
        _package_scores(tiny_bert, num_layers=1, idf=True, rescale_with_baseline=True,
                        baseline_path=str(_baseline_file(tmp_path)))["bertscore_f1"], abs=1e-5)
