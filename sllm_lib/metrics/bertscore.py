"""BERTScore (Zhang et al., 2020) from a local encoder checkpoint, equal to the ``bert-score`` package.

Each sentence is encoded by a transformer encoder (a Korean or multilingual
BERT-style model, loaded from a local folder only: evaluation nodes have no
hub access); every hypothesis token is matched to its most similar reference
token by cosine similarity of the contextual embeddings (precision) and vice
versa (recall).

The numbers equal those of ``bert_score.score`` (PyPI ``bert-score`` 0.3.13)
given the same folder as ``model_type`` and ``num_layers=layer``: equality
to 1e-5 per sample, with idf on and off, two layers, baseline rescaling, and
a BERT and a RoBERTa tokenizer, on Korean and English sentences, is tested in
``tests/component/metrics/test_bertscore.py``. Its semantics, which we follow:

* Tokens are the model tokenizer's ``encode`` of the stripped sentence, with
  its special tokens, truncated to the model's maximum length; an empty
  sentence is the special tokens alone. Byte-level BPE tokenizers (GPT-2,
  RoBERTa) get a leading space, as bert-score asks for.
* ``[CLS]``/``[SEP]`` (``<s>``/``</s>``) take part in the greedy matching
  (a token may best match the other side's ``[SEP]``) but weigh 0.
* ``layer`` indexes the model's hidden states (bert-score's ``num_layers``:
  the output of the first ``layer`` layers; 0 = embeddings). For post-LN
  encoders (BERT, RoBERTa, XLM-R, ELECTRA) the two are the same tensor.
* idf is ``log((M + 1) / (df + 1))`` over the ``M`` references, each token
  counted once per reference; a token absent from them gets ``log(M + 1)``;
  special tokens occur in every reference, so they weigh 0.
* A pair with an empty side scores P = R = F = 0; F = 2PR / (P + R). (Under
  transformers 5, bert-score 0.3.13 itself fails on an empty sentence: it
  calls ``build_inputs_with_special_tokens``, which transformers 5 dropped.)
* Rescaling: ``(x - b) / (1 - b)`` for P, R and F, each with its own baseline
  ``b`` (from a baseline file's row ``layer``, or three numbers).

Defaults and deliberate differences: ``layer=None`` is the last layer
(bert-score needs ``num_layers`` for a local folder; its defaults for hub
names are tuned layers, e.g. 9 for ``bert-base-multilingual-cased``, its model
for ``lang="ko"``, and 17 for ``roberta-large``, its model for ``lang="en"``:
set ``layer`` to compare with such numbers). idf and rescaling are off, as in
bert-score. Texts are NFC-normalised first (bert-score does nothing; the same
for NFC text). Where idf gives a non-empty sentence all-zero weights (every
one of its tokens is in every reference, e.g. a single reference), bert-score
returns NaN for that side and F = 0; we weigh its tokens uniformly (warned).
bert-score batches pairs with zero-filled similarities at padded positions, so
a token whose best cosine is negative can score 0 there; we keep the cosine.

torch and transformers are imported inside functions, so importing this
module is cheap.
"""

from __future__ import annotations

import csv
import logging
import math
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sllm_lib.metrics.text import MetricResult, _check_lengths

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BERTSCORE_NAMES: tuple[str, str, str] = ("bertscore_p", "bertscore_r", "bertscore_f1")

Baseline = tuple[float, float, float]
"""Baselines for P, R and F."""


def _check_model_path(model_path: str | Path) -> Path:
    path = Path(model_path).expanduser()
    if not path.exists():
        raise ValueError(f"bertscore model_path {str(path)!r} does not exist (a local model folder is required)")
    if not path.is_dir():
        raise ValueError(f"bertscore model_path {str(path)!r} is not a directory (a local model folder is required)")
    return path


def _baseline_numbers(baseline: Any) -> Baseline:
    """Three baseline numbers, each finite and below 1 (the rescaling divides by ``1 - b``)."""
    values = list(baseline) if isinstance(baseline, Sequence) else []
    ok = len(values) == 3 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v < 1 for v in values
    )
    if not ok:
        raise ValueError(
            f"bertscore baseline must be three numbers below 1 (P, R, F) or the path of a baseline file, "
            f"got {baseline!r}"
        )
    return float(values[0]), float(values[1]), float(values[2])


def _check_options(
    *,
    batch_size: Any = 16,
    idf: Any = False,
    rescale_with_baseline: Any = False,
    baseline: Any = None,
) -> None:
    """Checks that need no model: types, and a baseline exactly when rescaling."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    for key, value in (("idf", idf), ("rescale_with_baseline", rescale_with_baseline)):
        if not isinstance(value, bool):
            raise ValueError(f"bertscore option {key!r} must be true or false, got {value!r}")
    if rescale_with_baseline and baseline is None:
        raise ValueError(
            "bertscore rescale_with_baseline needs a baseline for a local model: three numbers (P, R, F) or the "
            "path of a bert-score baseline file (CSV with columns LAYER,P,R,F, one row per layer; bert-score ships "
            "them for hub models as bert_score/rescale_baseline/<lang>/<model>.tsv)"
        )
    if baseline is None:
        return
    if not rescale_with_baseline:
        raise ValueError(
            "bertscore baseline is set but rescale_with_baseline is false; set rescale_with_baseline to true "
            "or drop baseline"
        )
    if isinstance(baseline, str | Path):
        if not Path(baseline).expanduser().is_file():
            raise ValueError(f"bertscore baseline file {str(baseline)!r} does not exist")
    else:
        _baseline_numbers(baseline)


def _read_baseline(baseline: str | Path | Sequence[float], layer: int) -> Baseline:
    """The P/R/F baselines: the given numbers, or row ``layer`` (0-based, after the header) of a baseline file."""
    if not isinstance(baseline, str | Path):
        return _baseline_numbers(baseline)
    path = Path(baseline).expanduser()
    with path.open(newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row][1:]  # the header is LAYER,P,R,F
    if layer >= len(rows):
        raise ValueError(f"bertscore baseline file {str(path)!r} has {len(rows)} layer rows; layer {layer} has none")
    try:
        return _baseline_numbers([float(x) for x in rows[layer][1:]])
    except ValueError as err:
        raise ValueError(f"bertscore baseline file {str(path)!r}, row for layer {layer}: {err}") from None


def _max_length(tokenizer: Any, model: Any) -> int:
    limits = [getattr(tokenizer, "model_max_length", None), getattr(model.config, "max_position_embeddings", None)]
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(usable) if usable else 512


def _byte_level_bpe(tokenizer: Any) -> bool:
    """A GPT-2/RoBERTa tokenizer, to which bert-score passes ``add_prefix_space=True``."""
    import transformers

    names = ("GPT2Tokenizer", "GPT2TokenizerFast", "RobertaTokenizer", "RobertaTokenizerFast")
    classes = tuple(c for c in (getattr(transformers, n, None) for n in names) if isinstance(c, type))
    return isinstance(tokenizer, classes)


def _token_ids(text: str, *, tokenizer: Any, max_length: int, prefix_space: bool) -> list[int]:
    """bert-score's ``sent_encode``: the stripped text with special tokens, truncated."""
    text = text.strip()
    if text and prefix_space:
        # bert-score passes add_prefix_space=True, which the slow tokenizers of transformers 4 implement as
        # this leading space (transformers 5 ignores the argument in encode())
        text = " " + text
    return list(tokenizer.encode(text, add_special_tokens=True, truncation=True, max_length=max_length))


def _hidden_states(
    ids: list[list[int]],
    *,
    model: Any,
    layer: int,
    pad_id: int,
    batch_size: int,
    device: str,
) -> list[torch.Tensor]:
    """Per id list: the L2-normalised vectors of ``hidden_states[layer]``, one row per token (CPU)."""
    import torch

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # less padding per batch
    out: list[torch.Tensor | None] = [None] * len(ids)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(ids[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
            mask[row, : len(ids[i])] = 1
        with torch.inference_mode():
            result = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        hidden = torch.nn.functional.normalize(result.hidden_states[layer].float(), dim=-1).cpu()
        for row, i in enumerate(idx):
            out[i] = hidden[row, : len(ids[i])]
    return [x for x in out if x is not None]


def _load_encoder(path: Path, device: str | None) -> tuple[Any, Any, str]:
    """Tokenizer, model (eval mode, on the device) and device of a local encoder folder."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev).eval()
    return tokenizer, model, dev


def _nfc_texts(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """NFC-normalised references, hypotheses and their unique texts (each embedded once)."""
    refs = [unicodedata.normalize("NFC", t) for t in references]
    hyps = [unicodedata.normalize("NFC", t) for t in hypotheses]
    return refs, hyps, list(dict.fromkeys(refs + hyps))


def _layer_index(layer: int | None, model: Any) -> int:
    """``layer`` as a non-negative hidden-states index (``None``: the last layer)."""
    n_states = int(model.config.num_hidden_layers) + 1
    if layer is None:
        return n_states - 1
    if not isinstance(layer, int) or isinstance(layer, bool) or not -n_states <= layer < n_states:
        raise ValueError(f"layer must be an integer in [{-n_states}, {n_states - 1}] for this model, got {layer!r}")
    return layer % n_states


def _idf(ref_ids: list[list[int]]) -> tuple[dict[int, float], float]:
    """Inverse document frequency of each token over the references, and the value for unseen tokens."""
    df = Counter(t for ids in ref_ids for t in set(ids))
    m = len(ref_ids)
    return {t: math.log((m + 1) / (c + 1)) for t, c in df.items()}, math.log(m + 1)


def _weights(ids: list[int], idf: tuple[dict[int, float], float] | None, specials: set[int]) -> torch.Tensor:
    import torch

    unit = torch.tensor([0.0 if t in specials else 1.0 for t in ids])
    if idf is None:
        return unit
    table, unseen = idf
    w = torch.tensor([table.get(t, unseen) for t in ids], dtype=torch.float32)
    return w if float(w.sum()) > 0 else unit  # see the module docstring: bert-score gives NaN here


def _pair(h: torch.Tensor, w_h: torch.Tensor, r: torch.Tensor, w_r: torch.Tensor) -> tuple[float, float, float]:
    """Greedy-matching P, R, F of one pair of normalised token matrices and their weights."""
    sim = h @ r.T  # (hyp tokens, ref tokens)
    p = float((sim.max(dim=1).values * w_h).sum() / w_h.sum())
    rec = float((sim.max(dim=0).values * w_r).sum() / w_r.sum())
    return p, rec, (2 * p * rec / (p + rec) if p + rec != 0 else 0.0)


def _rescale(score: tuple[float, float, float], base: Baseline) -> tuple[float, float, float]:
    p, r, f = ((x - b) / (1 - b) for x, b in zip(score, base))
    return p, r, f


def bertscore(
    references: list[str],
    hypotheses: list[str],
    *,
    model_path: str | Path,
    layer: int | None = None,
    batch_size: int = 16,
    idf: bool = False,
    rescale_with_baseline: bool = False,
    baseline: str | Path | Sequence[float] | None = None,
    device: str | None = None,
) -> dict[str, MetricResult]:
    """BERTScore precision, recall and F1, equal to ``bert_score.score`` (bert-score 0.3.13).

    For a pair with hypothesis tokens ``h`` and reference tokens ``r``
    (contextual embeddings, L2-normalised, ``[CLS]``/``[SEP]`` included):
    precision = weighted mean over ``h`` of the best cosine with any ``r``;
    recall = weighted mean over ``r`` of the best cosine with any ``h``;
    F1 = their harmonic mean. Weights are 1 (0 for ``[CLS]``/``[SEP]``), or
    with ``idf=True`` ``log((M + 1) / (df + 1))`` over the ``M`` references.
    A pair with an empty side scores 0. Corpus scores are means of the
    per-sample values. The module docstring lists the semantics in full.

    Args:
        references: Reference texts.
        hypotheses: Model outputs, same length as ``references``.
        model_path: Local folder with an encoder checkpoint and its tokenizer
            (loaded with ``local_files_only=True``; nothing is downloaded).
        layer: Index into the model's hidden states (0 = embeddings, -1 =
            last, negative indices allowed); bert-score's ``num_layers``.
            ``None`` uses the last layer.
        batch_size: Sentences per forward pass.
        idf: Weight tokens by inverse document frequency over the references.
        rescale_with_baseline: Report ``(x - b) / (1 - b)`` for each of P, R, F.
        baseline: Required with rescaling: ``(P, R, F)`` baselines, or the path
            of a bert-score baseline file (CSV ``LAYER,P,R,F``, row ``layer``
            is used), e.g. ``bert_score/rescale_baseline/ko/...`` from that package.
        device: torch device; default ``"cuda"`` when available, else ``"cpu"``.

    Returns:
        ``{"bertscore_p", "bertscore_r", "bertscore_f1"}`` -> ``MetricResult``.

    Raises:
        ValueError: On length mismatch, a missing or non-directory
            ``model_path``, ``batch_size < 1``, a ``layer`` out of range,
            rescaling without a baseline (or a baseline without rescaling), or
            a malformed baseline.

    Example:
        >>> bertscore(["혈압이 정상입니다"], ["혈압 정상"], model_path="/models/klue-bert", layer=9)["bertscore_f1"].score
    """
    _check_lengths(references, hypotheses)
    path = _check_model_path(model_path)
    _check_options(batch_size=batch_size, idf=idf, rescale_with_baseline=rescale_with_baseline, baseline=baseline)
    if not references:
        return {name: MetricResult(name, 0.0, []) for name in BERTSCORE_NAMES}

    tokenizer, model, dev = _load_encoder(path, device)
    index = _layer_index(layer, model)
    base = _read_baseline(baseline, index) if rescale_with_baseline and baseline is not None else None
    refs, hyps, unique = _nfc_texts(references, hypotheses)
    max_length, prefix = _max_length(tokenizer, model), _byte_level_bpe(tokenizer)
    ids = {t: _token_ids(t, tokenizer=tokenizer, max_length=max_length, prefix_space=prefix) for t in unique}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    vectors = _hidden_states(
        [ids[t] for t in unique], model=model, layer=index, pad_id=pad_id, batch_size=batch_size, device=dev
    )
    emb = dict(zip(unique, vectors))

    specials = {t for t in (tokenizer.cls_token_id, tokenizer.sep_token_id) if t is not None}
    n_special = len(tokenizer.encode("", add_special_tokens=True))  # an empty sentence's tokens
    idf_table = _idf([ids[r] for r in refs]) if idf else None
    weights = {t: _weights(ids[t], idf_table, specials) for t in unique}
    if idf_table is not None:
        flat = [t for t in unique if len(ids[t]) > n_special and not any(idf_table[0].get(i, 1.0) for i in ids[t])]
        if flat:
            log.warning("bertscore idf: %d sentence(s) have only tokens found in every reference; "
                        "weighing their tokens uniformly (bert-score gives NaN)", len(flat))

    scores: list[tuple[float, float, float]] = []
    for ref, hyp in zip(refs, hyps):
        if len(ids[ref]) <= n_special or len(ids[hyp]) <= n_special:
            scores.append((0.0, 0.0, 0.0))
        else:
            scores.append(_pair(emb[hyp], weights[hyp], emb[ref], weights[ref]))
    if base is not None:
        scores = [_rescale(s, base) for s in scores]

    def result(name: str, values: list[float]) -> MetricResult:
        return MetricResult(name, sum(values) / len(values), values)

    return {name: result(name, [s[k] for s in scores]) for k, name in enumerate(BERTSCORE_NAMES)}


def embedding_similarity(
    references: Sequence[str],
    hypotheses: Sequence[str],
    *,
    model_path: str | Path,
    batch_size: int = 16,
    device: str | None = None,
) -> MetricResult:
    """Cosine similarity of sentence embeddings (mean of the encoder's last-layer token vectors, non-special
    tokens) from a local sentence-embedding model folder; one value per pair, the corpus score is their mean."""
    path = _check_model_path(model_path)
    if not references:
        return MetricResult("embedding_similarity", 0.0, [])
    import torch

    tokenizer, model, dev = _load_encoder(path, device)
    refs, hyps, unique = _nfc_texts(references, hypotheses)
    enc = [
        tokenizer(t, truncation=True, max_length=_max_length(tokenizer, model), return_special_tokens_mask=True)
        for t in unique
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    vectors = _hidden_states(
        [list(e["input_ids"]) for e in enc], model=model, layer=-1, pad_id=pad_id, batch_size=batch_size, device=dev
    )
    sentence = {}
    for text, e, tokens in zip(unique, enc, vectors):
        tokens = tokens[torch.tensor(e["special_tokens_mask"]) == 0]
        sentence[text] = torch.nn.functional.normalize(tokens.mean(0), dim=0) if len(tokens) else None
    values = []
    for r, h in zip(refs, hyps):
        a, b = sentence[r], sentence[h]
        values.append(float(a @ b) if a is not None and b is not None else float(a is None and b is None))
    return MetricResult("embedding_similarity", sum(values) / len(values), values)
