"""Registry of every named metric: orientation, inputs, options and how to compute it.

:data:`METRIC_SPECS` maps a metric name (as used in eval specs and reports)
to a :class:`MetricSpec`; :func:`compute_metrics` validates a whole request
(names, labels, options) before it computes anything, then computes each
metric with its per-metric options:

.. code-block:: python

    compute_metrics(
        ["cer", "rougeL", "bleu"], refs, hyps,
        options={"rougeL": {"tokenizer": "char"}, "cer": {"remove_whitespace": False}},
    )

Options per metric (all optional unless marked):

* ``cer``, ``wer``: the fields of the request's language's normaliser
  (``compute_metrics(language=...)``, :mod:`sllm_lib.metrics.language`), applied on top of that
  language's CER/WER convention. Korean (default), :class:`KoreanNormalizer`: ``nfc``,
  ``lowercase``, ``remove_punctuation``, ``keep_decimal_points``, ``remove_whitespace``;
  English, :class:`~sllm_lib.metrics.english.EnglishTextNormalizer`: ``remove_whitespace``.
  Their results carry the normaliser's label (:func:`metric_normalizer`).
* ``exact_match``: :class:`KoreanNormalizer` fields (booleans), applied on top
  of that metric's default normaliser.
* ``keyword_match``: ``keywords`` (one list per sample) and normaliser fields.
* ``bleu``: ``tokenize`` (``"char"``, ``"ko-mecab"``, ``"space"``) and
  normaliser fields.
* ``rougeL``, ``rouge1``, ``rouge2``, ``distinct_1``, ``distinct_2``:
  ``tokenizer`` (``"char"``, ``"morph"``, ``"space"``).
* ``accuracy``, ``macro_f1``, ``unparseable_rate``: ``aliases``
  (``{label: [spellings]}``); these need ``labels``.
* ``bertscore_f1``: ``model_path`` (required), ``layer``, ``batch_size``,
  ``idf``, ``rescale_with_baseline``, ``baseline`` (P/R/F numbers or a
  bert-score baseline file; required with rescaling), ``device``; equal to
  the ``bert-score`` package (:mod:`sllm_lib.metrics.bertscore`).

:data:`sllm_lib.metrics.text.METRICS` / ``compute_text_metrics`` remain for
text metrics with default settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sllm_lib.metrics import text as _text
from sllm_lib.metrics.language import DEFAULT_LANGUAGE, check_language, normalizer_for
from sllm_lib.metrics.text import KoreanNormalizer, MetricResult, Normalizer, Unit, normalizer_label

Needs = Literal["text", "labels", "model"]

NORMALIZER_OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(KoreanNormalizer))


@dataclass(frozen=True)
class MetricSpec:
    """How one named metric is computed and read.

    Attributes:
        name: Registry name, e.g. ``"rougeL"``.
        higher_is_better: ``False`` for error rates (CER, WER, unparseable rate).
        needs: ``"text"`` (references and hypotheses), ``"labels"`` (also the
            allowed label set; references are gold labels) or ``"model"``
            (a local model, given as an option).
        compute: ``compute(references, hypotheses, *, labels, **options) -> MetricResult``.
        options: Option keys this metric accepts.
        required_options: Option keys that must be given.
        result_name: The ``MetricResult.name`` it produces (``"rougeL_f1"`` for
            ``"rougeL"``); defaults to ``name``.
        value_range: ``(low, high)`` of its scores; ``high`` is None when there
            is no upper bound (CER/WER count insertions, so they can pass 1).
            Every sllm score is a fraction: BLEU is 0-1 (sacrebleu's 0-100 / 100)
            like ROUGE, CER and Distinct; the reports show it (:attr:`scale`).
        binary_per_sample: Its per-sample values are 0 or 1 and its score is their mean (accuracy, exact
            match): a nightly gate tests it with McNemar's exact test rather than the bootstrap.
        normalizer_unit: ``"char"`` (CER) or ``"word"`` (WER) for a metric whose text normaliser follows the
            request's language; None for the others.
    """

    name: str
    higher_is_better: bool
    needs: Needs
    compute: Callable[..., MetricResult]
    options: tuple[str, ...] = ()
    required_options: tuple[str, ...] = ()
    result_name: str = ""
    value_range: tuple[float, float | None] = (0.0, 1.0)
    binary_per_sample: bool = False
    normalizer_unit: Unit | None = None

    def __post_init__(self) -> None:
        if not self.result_name:
            object.__setattr__(self, "result_name", self.name)

    @property
    def scale(self) -> str:
        """The value range as reports print it: ``"0-1"``, ``"≥0"`` (no upper bound), ``"-1 to 1"``."""
        low, high = self.value_range
        if high is None:
            return f"≥{low:g}"
        return f"{low:g}-{high:g}" if low >= 0 else f"{low:g} to {high:g}"


# --------------------------------------------------------------------------- adapters


def _normalizer(base: Any, opts: Mapping[str, Any]) -> Any:
    fields = {k: v for k, v in opts.items() if k in NORMALIZER_OPTIONS}
    return dataclasses.replace(base, **fields) if fields else base


def _language_normalizer(unit: Unit, language: str, opts: Mapping[str, Any]) -> Normalizer:
    norm: Normalizer = _normalizer(normalizer_for(language, unit), opts)
    return norm


def _cer(refs: list[str], hyps: list[str], *, labels: Any = None, language: str = DEFAULT_LANGUAGE,
         **opts: Any) -> MetricResult:
    return _text.cer(refs, hyps, normalizer=_language_normalizer("char", language, opts))


def _wer(refs: list[str], hyps: list[str], *, labels: Any = None, language: str = DEFAULT_LANGUAGE,
         **opts: Any) -> MetricResult:
    return _text.wer(refs, hyps, normalizer=_language_normalizer("word", language, opts))


def _exact(refs: list[str], hyps: list[str], *, labels: Any = None, **opts: Any) -> MetricResult:
    return _text.exact_match(refs, hyps, normalizer=_normalizer(KoreanNormalizer(), opts))


def _keyword(refs: list[str], hyps: list[str], *, labels: Any = None, **opts: Any) -> MetricResult:
    norm = _normalizer(KoreanNormalizer(remove_whitespace=True), opts)
    return _text.keyword_match(refs, hyps, opts.get("keywords"), normalizer=norm)


def _bleu(refs: list[str], hyps: list[str], *, labels: Any = None, **opts: Any) -> MetricResult:
    norm = _normalizer(KoreanNormalizer(), opts)
    return _text.bleu(refs, hyps, tokenize=opts.get("tokenize", "char"), normalizer=norm)


def _rouge(n: int | None) -> Callable[..., MetricResult]:
    def compute(refs: list[str], hyps: list[str], *, labels: Any = None, **opts: Any) -> MetricResult:
        tokenizer = opts.get("tokenizer", "morph")
        if n is None:
            return _text.rouge_l(refs, hyps, tokenizer=tokenizer)
        return _text.rouge_n(refs, hyps, n=n, tokenizer=tokenizer)

    return compute


def _distinct(n: int) -> Callable[..., MetricResult]:
    def compute(refs: list[str], hyps: list[str], *, labels: Any = None, **opts: Any) -> MetricResult:
        return _text.distinct_n(hyps, n=n, tokenizer=opts.get("tokenizer", "space"))

    return compute


def _classification(key: str) -> Callable[..., MetricResult]:
    def compute(refs: list[str], hyps: list[str], *, labels: Sequence[str] | None = None, **opts: Any) -> MetricResult:
        from sllm_lib.metrics.classification import classification_metrics

        if labels is None:
            raise ValueError(f"metric {key!r} needs labels (the allowed label set)")
        return classification_metrics(refs, hyps, labels, aliases=opts.get("aliases"))[key]

    return compute


def _bertscore_f1(refs: list[str], hyps: list[str], *, labels: Any = None, **opts: Any) -> MetricResult:
    from sllm_lib.metrics.bertscore import bertscore

    return bertscore(refs, hyps, **opts)["bertscore_f1"]


def _embedding_similarity(refs: list[str], hyps: list[str], *, labels: Any = None, **opts: Any) -> MetricResult:
    from sllm_lib.metrics.bertscore import embedding_similarity

    return embedding_similarity(refs, hyps, **opts)


_TOKENIZER_OPT = ("tokenizer",)
_LABEL_OPTS = ("aliases",)
_BERT_OPTS = ("model_path", "layer", "batch_size", "idf", "rescale_with_baseline", "baseline", "device")

METRIC_SPECS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in [
        MetricSpec("cer", False, "text", _cer, NORMALIZER_OPTIONS, value_range=(0.0, None), normalizer_unit="char"),
        MetricSpec("wer", False, "text", _wer, NORMALIZER_OPTIONS, value_range=(0.0, None), normalizer_unit="word"),
        MetricSpec("rougeL", True, "text", _rouge(None), _TOKENIZER_OPT, result_name="rougeL_f1"),
        MetricSpec("rouge1", True, "text", _rouge(1), _TOKENIZER_OPT, result_name="rouge1_f1"),
        MetricSpec("rouge2", True, "text", _rouge(2), _TOKENIZER_OPT, result_name="rouge2_f1"),
        MetricSpec("bleu", True, "text", _bleu, ("tokenize", *NORMALIZER_OPTIONS)),
        MetricSpec("distinct_1", True, "text", _distinct(1), _TOKENIZER_OPT),
        MetricSpec("distinct_2", True, "text", _distinct(2), _TOKENIZER_OPT),
        MetricSpec("exact_match", True, "text", _exact, NORMALIZER_OPTIONS, binary_per_sample=True),
        MetricSpec("keyword_match", True, "text", _keyword, ("keywords", *NORMALIZER_OPTIONS)),
        MetricSpec("accuracy", True, "labels", _classification("accuracy"), _LABEL_OPTS, binary_per_sample=True),
        MetricSpec("macro_f1", True, "labels", _classification("macro_f1"), _LABEL_OPTS),
        MetricSpec("unparseable_rate", False, "labels", _classification("unparseable_rate"), _LABEL_OPTS,
                   binary_per_sample=True),
        MetricSpec("bertscore_f1", True, "model", _bertscore_f1, _BERT_OPTS, required_options=("model_path",),
                   value_range=(-1.0, 1.0)),  # cosine similarities
        MetricSpec("embedding_similarity", True, "model", _embedding_similarity, ("model_path", "batch_size", "device"),
                   required_options=("model_path",), value_range=(-1.0, 1.0)),
    ]
}
"""Every named metric: ``name -> MetricSpec``."""

DEFAULT_METRICS: dict[str, list[str]] = {
    "asr": ["cer", "wer"],
    "speech_qa": ["rougeL", "distinct_1", "distinct_2"],
    "text_qa": ["rougeL", "distinct_1", "distinct_2"],
    "classification": ["accuracy", "macro_f1", "unparseable_rate"],
    "vision": ["bleu", "rouge1", "rouge2", "rougeL"],
}
"""The metrics a dataset (or suite task) of each kind is scored with when it names none."""

# Result names that differ from registry names, plus BERTScore's P/R results.
_ORIENTATION_ALIASES: dict[str, bool] = {
    **{spec.result_name: spec.higher_is_better for spec in METRIC_SPECS.values()},
    "bertscore_p": True,
    "bertscore_r": True,
}


def is_higher_better(name: str) -> bool:
    """Return whether a larger value of metric ``name`` is better.

    Accepts registry names (``"cer"``, ``"rougeL"``) and result names
    (``"rougeL_f1"``, ``"bertscore_p"``).

    Raises:
        ValueError: On an unknown name (lists the valid ones).
    """
    spec = METRIC_SPECS.get(name)
    if spec is not None:
        return spec.higher_is_better
    if name in _ORIENTATION_ALIASES:
        return _ORIENTATION_ALIASES[name]
    raise ValueError(f"unknown metric {name!r}; valid: {', '.join(sorted(METRIC_SPECS))}")


def metric_spec(name: str) -> MetricSpec | None:
    """The registry entry of a registry name (``"rougeL"``) or a result name (``"rougeL_f1"``,
    ``"bertscore_p"``); None for a name that is not a metric (a counter, a runtime)."""
    if name in METRIC_SPECS:
        return METRIC_SPECS[name]
    if name in ("bertscore_p", "bertscore_r"):
        return METRIC_SPECS["bertscore_f1"]
    return next((spec for spec in METRIC_SPECS.values() if spec.result_name == name), None)


def metric_normalizer(name: str, *, language: str = DEFAULT_LANGUAGE,
                      options: Mapping[str, Any] | None = None) -> str | None:
    """The label of the text normaliser behind metric `name` in `language` with these metric `options`
    (``"korean-v1"``, ``"whisper-english-v1"``); None for a metric whose normaliser does not follow the language.

    The same label the computed ``MetricResult.normalizer`` carries, known before anything is scored.

    Raises:
        ValueError: On an unknown language, or an option the language's normaliser lacks.
    """
    check_language(language)
    spec = metric_spec(name)
    if spec is None or spec.normalizer_unit is None:
        return None
    _check_normalizer_options(spec, options or {}, language)
    return normalizer_label(_language_normalizer(spec.normalizer_unit, language, options or {}), spec.normalizer_unit)


def metric_scale(name: str) -> str:
    """The scale reports print beside metric ``name`` (``"0-1"``, ``"≥0"`` for CER/WER); "" when unknown."""
    spec = metric_spec(name)
    return spec.scale if spec is not None else ""


# --------------------------------------------------------------------------- validation


def _check_normalizer_options(spec: MetricSpec, opts: Mapping[str, Any], language: str) -> None:
    """A normaliser option of CER/WER must be a setting of the language's normaliser (English has fewer)."""
    if spec.normalizer_unit is None:
        return
    norm = normalizer_for(language, spec.normalizer_unit)
    own = [f.name for f in dataclasses.fields(norm)] if dataclasses.is_dataclass(norm) else []
    foreign = [k for k in opts if k in NORMALIZER_OPTIONS and k not in own]
    if foreign:
        raise ValueError(
            f"option {foreign[0]!r} of metric {spec.name!r} does not apply to language {language!r} "
            f"(normaliser {norm.name}); valid: {', '.join(own)}"
        )


def _check_option_values(name: str, opts: Mapping[str, Any], language: str) -> None:
    """Cheap up-front checks, so a bad option fails before any metric runs."""
    for key, value in opts.items():
        if key in NORMALIZER_OPTIONS and not isinstance(value, bool):
            raise ValueError(f"option {key!r} of metric {name!r} must be true or false, got {value!r}")
    _check_normalizer_options(METRIC_SPECS[name], opts, language)
    if "tokenizer" in opts and opts["tokenizer"] not in _text.TOKENIZERS:
        raise ValueError(
            f"option 'tokenizer' of metric {name!r} is {opts['tokenizer']!r}; valid: {', '.join(_text.TOKENIZERS)}"
        )
    if "tokenize" in opts:
        if opts["tokenize"] not in _text.BLEU_TOKENIZERS:
            raise ValueError(
                f"option 'tokenize' of metric {name!r} is {opts['tokenize']!r}; "
                f"valid: {', '.join(_text.BLEU_TOKENIZERS)}"
            )
        if opts["tokenize"] == "ko-mecab":
            _text._require_mecab()
    if "model_path" in opts:
        from sllm_lib.metrics.bertscore import _check_model_path, _check_options

        _check_model_path(opts["model_path"])
        if name == "bertscore_f1":
            checked = ("batch_size", "idf", "rescale_with_baseline", "baseline")
            _check_options(**{k: opts[k] for k in checked if k in opts})


def _validate(
    names: Sequence[str],
    labels: Sequence[str] | None,
    options: Mapping[str, Mapping[str, Any]],
    language: str = DEFAULT_LANGUAGE,
) -> None:
    check_language(language)
    if isinstance(names, str):
        raise ValueError(f"names must be a list of metric names, got the string {names!r}")
    unknown = [n for n in names if n not in METRIC_SPECS]
    if unknown:
        raise ValueError(
            f"unknown metric(s) {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(METRIC_SPECS))}"
        )
    if not isinstance(options, Mapping):
        raise ValueError(f"options must be a dict of {{metric: {{option: value}}}}, got {type(options).__name__}")
    stray = [n for n in options if n not in METRIC_SPECS]
    if stray:
        raise ValueError(
            f"options given for unknown metric(s) {', '.join(map(repr, stray))}; "
            f"valid: {', '.join(sorted(METRIC_SPECS))}"
        )
    for name, opts in options.items():
        spec = METRIC_SPECS[name]
        if not isinstance(opts, Mapping):
            raise ValueError(f"options for metric {name!r} must be a dict, got {type(opts).__name__}")
        for key in opts:
            if key not in spec.options:
                valid = ", ".join(spec.options) if spec.options else "none"
                raise ValueError(f"unknown option {key!r} for metric {name!r}; valid: {valid}")
    for name in dict.fromkeys(names):
        spec = METRIC_SPECS[name]
        opts = options.get(name, {})
        if spec.needs == "labels" and labels is None:
            raise ValueError(f"metric {name!r} needs labels (the allowed label set); pass labels=[...]")
        missing = [k for k in spec.required_options if k not in opts]
        if missing:
            raise ValueError(
                f"metric {name!r} needs option(s) {', '.join(map(repr, missing))}, "
                f"e.g. options={{{name!r}: {{{missing[0]!r}: ...}}}}"
            )
        _check_option_values(name, opts, language)


def compute_metrics(
    names: Sequence[str],
    references: list[str],
    hypotheses: list[str],
    *,
    labels: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    language: str = DEFAULT_LANGUAGE,
) -> dict[str, MetricResult]:
    """Compute several registry metrics, each with its own options.

    The whole request is validated before any metric runs: metric names,
    option keys (per metric), option values that can be checked cheaply
    (booleans, tokenizer names, BERTScore ``model_path`` being a folder,
    ko-mecab being installed), ``labels`` for label metrics, and the input
    lengths.

    Args:
        names: Keys of :data:`METRIC_SPECS`, e.g. ``["cer", "bleu", "macro_f1"]``.
        references: Reference texts (gold labels for label metrics).
        hypotheses: Model outputs, same length as ``references``.
        labels: The allowed label set; required by ``accuracy``,
            ``macro_f1`` and ``unparseable_rate``, ignored by the others.
        options: ``{metric_name: {option: value}}``; see the module docstring.
            Options for a valid metric that is not requested are ignored.
        language: ``"ko"`` (default) or ``"en"``: CER and WER use that language's
            normaliser (:mod:`sllm_lib.metrics.language`) and their results name it.

    Returns:
        ``{requested_name: MetricResult}`` in the order of ``names`` (the
        result's ``.name`` may differ, e.g. ``"rougeL"`` -> ``"rougeL_f1"``).

    Raises:
        ValueError: On an unknown metric name (lists the valid ones), an
            unknown option key (names the metric and key), a bad option
            value, a label metric without ``labels``, ``bertscore_f1`` without
            ``options["bertscore_f1"]["model_path"]``, an unknown language, a
            normaliser option the language's normaliser lacks, or a length mismatch.
        ImportError: For BLEU ``tokenize="ko-mecab"`` without mecab-ko.
    """
    opts_by_metric: Mapping[str, Mapping[str, Any]] = options if options is not None else {}
    _validate(names, labels, opts_by_metric, language)
    _text._check_lengths(references, hypotheses)
    out: dict[str, MetricResult] = {}
    for name in names:
        spec = METRIC_SPECS[name]
        extra = {"language": language} if spec.normalizer_unit is not None else {}
        out[name] = spec.compute(references, hypotheses, labels=labels, **extra, **opts_by_metric.get(name, {}))
    return out
