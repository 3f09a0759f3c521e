"""BERTScore (Zhang et al., 2020) from a local encoder checkpoint.

Each sentence is encoded by a transformer encoder (a Korean or multilingual
BERT-style model, loaded from a local folder only: evaluation nodes have no
hub access); every hypothesis token is matched to its most similar reference
token by cosine similarity of the contextual embeddings (precision) and vice
versa (recall). Special tokens (``[CLS]``, ``[SEP]``, padding) are left out.

This is a small re-implementation, not the ``bert_score`` package: no
baseline rescaling, and the layer is chosen by the caller (default: last).
Scores from different models or layers are not comparable.

torch and transformers are imported inside functions, so importing this
module is cheap.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sllm_lib.metrics.text import MetricResult, _check_lengths

if TYPE_CHECKING:
    import torch

BERTSCORE_NAMES: tuple[str, str, str] = ("bertscore_p", "bertscore_r", "bertscore_f1")


def _check_model_path(model_path: str | Path) -> Path:
    path = Path(model_path).expanduser()
    if not path.exists():
        raise ValueError(f"bertscore model_path {str(path)!r} does not exist (a local model folder is required)")
    if not path.is_dir():
        raise ValueError(f"bertscore model_path {str(path)!r} is not a directory (a local model folder is required)")
    return path


def _max_length(tokenizer: Any, model: Any) -> int:
    limits = [getattr(tokenizer, "model_max_length", None), getattr(model.config, "max_position_embeddings", None)]
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(usable) if usable else 512


def _embed(
    texts: list[str],
    *,
    tokenizer: Any,
    model: Any,
    layer: int | None,
    batch_size: int,
    device: str,
) -> list[tuple[torch.Tensor, list[int]]]:
    """Per text: L2-normalised embeddings of its non-special tokens (CPU) and their ids."""
    import torch

    max_length = _max_length(tokenizer, model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
    out: list[tuple[torch.Tensor, list[int]] | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        special = enc.pop("special_tokens_mask").bool()
        keep = enc["attention_mask"].bool() & ~special
        inputs = {k: v.to(device) for k, v in enc.items()}
        with torch.inference_mode():
            result = model(**inputs, output_hidden_states=layer is not None)
        hidden = result.last_hidden_state if layer is None else result.hidden_states[layer]
        hidden = torch.nn.functional.normalize(hidden.float(), dim=-1).cpu()
        for row, i in enumerate(idx):
            mask = keep[row]
            out[i] = (hidden[row][mask], enc["input_ids"][row][mask].tolist())
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


def _weights(ids: list[int], idf: dict[int, float] | None, default_idf: float) -> torch.Tensor:
    import torch

    if idf is None:
        return torch.ones(len(ids))
    w = torch.tensor([idf.get(t, default_idf) for t in ids], dtype=torch.float32)
    # a sentence made only of tokens found in every reference has all-zero idf
    return w if float(w.sum()) > 0 else torch.ones(len(ids))


def bertscore(
    references: list[str],
    hypotheses: list[str],
    *,
    model_path: str | Path,
    layer: int | None = None,
    batch_size: int = 16,
    idf: bool = False,
    device: str | None = None,
) -> dict[str, MetricResult]:
    """BERTScore precision, recall and F1 with greedy cosine token matching.

    For a pair with hypothesis tokens ``h`` and reference tokens ``r``
    (contextual embeddings, L2-normalised, special tokens excluded):
    precision = weighted mean over ``h`` of the best cosine with any ``r``;
    recall = weighted mean over ``r`` of the best cosine with any ``h``;
    F1 = their harmonic mean. Weights are 1, or with ``idf=True`` the inverse
    document frequency over the references, ``log((M + 1) / (df + 1))`` for
    ``M`` references (a sentence whose weights are all zero falls back to
    uniform weights). A pair where both sides have no tokens scores 1.0; one
    empty side scores 0.0. Corpus scores are means of the per-sample values.
    Texts are NFC-normalised; inputs longer than the model's maximum length
    are truncated.

    Args:
        references: Reference texts.
        hypotheses: Model outputs, same length as ``references``.
        model_path: Local folder with an encoder checkpoint and its tokenizer
            (loaded with ``local_files_only=True``; nothing is downloaded).
        layer: Index into the model's hidden states (0 = embeddings, -1 =
            last, negative indices allowed); ``None`` uses the last layer.
        batch_size: Sentences per forward pass.
        idf: Weight tokens by inverse document frequency over the references.
        device: torch device; default ``"cuda"`` when available, else ``"cpu"``.

    Returns:
        ``{"bertscore_p", "bertscore_r", "bertscore_f1"}`` -> ``MetricResult``.

    Raises:
        ValueError: On length mismatch, a missing or non-directory
            ``model_path``, ``batch_size < 1`` or a ``layer`` out of range.
    """
    _check_lengths(references, hypotheses)
    path = _check_model_path(model_path)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not references:
        return {name: MetricResult(name, 0.0, []) for name in BERTSCORE_NAMES}

    tokenizer, model, dev = _load_encoder(path, device)
    if layer is not None:
        n_states = int(model.config.num_hidden_layers) + 1
        if not isinstance(layer, int) or isinstance(layer, bool) or not -n_states <= layer < n_states:
            raise ValueError(f"layer must be an integer in [{-n_states}, {n_states - 1}] for this model, got {layer!r}")

    refs, hyps, unique = _nfc_texts(references, hypotheses)
    embedded = _embed(unique, tokenizer=tokenizer, model=model, layer=layer, batch_size=batch_size, device=dev)
    by_text = dict(zip(unique, embedded))

    idf_map: dict[int, float] | None = None
    default_idf = 0.0
    if idf:
        df = Counter(t for r in refs for t in set(by_text[r][1]))
        m = len(refs)
        idf_map = {t: math.log((m + 1) / (c + 1)) for t, c in df.items()}
        default_idf = math.log(m + 1)

    ps: list[float] = []
    rs: list[float] = []
    fs: list[float] = []
    for ref, hyp in zip(refs, hyps):
        r_emb, r_ids = by_text[ref]
        h_emb, h_ids = by_text[hyp]
        if not r_ids or not h_ids:
            value = 1.0 if not r_ids and not h_ids else 0.0
            ps.append(value)
            rs.append(value)
            fs.append(value)
            continue
        sim = h_emb @ r_emb.T  # (hyp tokens, ref tokens)
        w_h = _weights(h_ids, idf_map, default_idf)
        w_r = _weights(r_ids, idf_map, default_idf)
        p = float((sim.max(dim=1).values * w_h).sum() / w_h.sum())
        r = float((sim.max(dim=0).values * w_r).sum() / w_r.sum())
        ps.append(p)
        rs.append(r)
        fs.append(2 * p * r / (p + r) if p + r > 0 else 0.0)

    def result(name: str, values: Sequence[float]) -> MetricResult:
        return MetricResult(name, sum(values) / len(values), list(values))

    return {
        "bertscore_p": result("bertscore_p", ps),
        "bertscore_r": result("bertscore_r", rs),
        "bertscore_f1": result("bertscore_f1", fs),
    }


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
    embedded = _embed(unique, tokenizer=tokenizer, model=model, layer=None, batch_size=batch_size, device=dev)
    sentence = {}
    for text, (tokens, _) in zip(unique, embedded):
        sentence[text] = torch.nn.functional.normalize(tokens.mean(0), dim=0) if len(tokens) else None
    values = []
    for r, h in zip(refs, hyps):
        a, b = sentence[r], sentence[h]
        values.append(float(a @ b) if a is not None and b is not None else float(a is None and b is None))
    return MetricResult("embedding_similarity", sum(values) / len(values), values)
