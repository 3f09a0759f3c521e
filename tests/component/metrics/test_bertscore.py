"""BERTScore on a tiny random BERT saved locally (no hub access)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sllm_lib.metrics.bertscore import bertscore

SENTS = ["환자는 두통을 호소합니다", "혈압이 정상 범위입니다", "커피 한 잔 주세요"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BERT and a character WordPiece vocabulary for SENTS."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    path = tmp_path_factory.mktemp("tiny_bert")
    chars = sorted({ch for s in SENTS for ch in s if not ch.isspace()})
    # each Hangul word is split into "first char" + "##next char" pieces
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{ch}" for ch in chars)]
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5: `vocab` takes the vocab.txt path (the v4 `vocab_file=` keyword is ignored)
    tokenizer = transformers.BertTokenizerFast(vocab=str(vocab_file), do_lower_case=False)
    tokenizer.save_pretrained(str(path))

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(str(path))
    return path


def test_tokenizer_covers_the_test_sentences(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert), local_files_only=True)
    ids = tok(SENTS[0])["input_ids"]
    assert tok.unk_token_id not in ids
    assert len(ids) == len(SENTS[0].replace(" ", "")) + 2  # one piece per character + [CLS]/[SEP]


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
    empty = bertscore(["", "", SENTS[0]], ["", SENTS[0], ""], model_path=tiny_bert)
    assert empty["bertscore_f1"].per_sample == [1.0, 0.0, 0.0]
    none = bertscore([], [], model_path=tiny_bert)
    assert none["bertscore_f1"].score == 0.0 and none["bertscore_f1"].per_sample == []


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


def test_import_is_cheap():
    code = (
        "import sys, sllm_lib.metrics.bertscore; "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_through_the_registry(tiny_bert):
    from sllm_lib.metrics import compute_metrics

    out = compute_metrics(
        ["bertscore_f1", "cer"], SENTS, SENTS, options={"bertscore_f1": {"model_path": str(tiny_bert), "batch_size": 2}}
    )
    assert out["bertscore_f1"].name == "bertscore_f1"
    assert out["bertscore_f1"].score == pytest.approx(1.0, abs=1e-5)
    assert out["cer"].score == 0.0
