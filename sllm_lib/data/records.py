"""Reading and validating the JSONL record files that feed every training stage.

Four record kinds exist:

* ``text_qa``: ``{instruction, input (optional, default ""), output}``
* ``asr``: ``{audio_path, transcript, language (optional, default "ko")}``
* ``speech_qa``: ``{instruction, input (optional, default ""), audio_path, output}``
* ``classification``: ``{text, label}``; the label must be one of the dataset's label set (given by the spec)
* ``vision``: ``{images: [paths], output, persona (optional object), context (optional), instruction (optional)}``

Every problem is reported as ``path:LINE: field 'x': what was expected (got ...)``
so a user can jump straight to the offending line. This module must not import torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, get_args

import soundfile

from sllm_lib.errors import DataError

log = logging.getLogger(__name__)

RecordKind = Literal["text_qa", "asr", "speech_qa", "classification", "vision"]
OnBadRecord = Literal["fail", "skip"]

RECORD_KINDS: tuple[str, ...] = get_args(RecordKind)

REQUIRED_FIELDS: dict[RecordKind, tuple[str, ...]] = {
    "text_qa": ("instruction", "output"),
    "asr": ("audio_path", "transcript"),
    "speech_qa": ("instruction", "audio_path", "output"),
    "classification": ("text", "label"),
    "vision": ("output",),
}
"""Fields that must be present (and be strings) in each record kind."""

OPTIONAL_FIELDS: dict[RecordKind, dict[str, str]] = {
    "text_qa": {"input": ""},
    "asr": {"language": "ko"},
    "speech_qa": {"input": ""},
    "classification": {},
    "vision": {"context": "", "instruction": ""},
}
"""Optional string fields and the default used when the key is missing or null."""

TEXT_FIELDS: frozenset[str] = frozenset({"instruction", "input", "output", "transcript", "text"})
"""Fields whose value is normalised with :func:`normalize_text`."""

NON_EMPTY_FIELDS: frozenset[str] = frozenset({"instruction", "output", "transcript", "language", "text", "label"})
"""Fields that must not be empty after normalisation (``input`` may be empty)."""

AUDIO_FIELD = "audio_path"
MAX_LISTED_PROBLEMS = 20
_WARN_EXAMPLES = 3
_PREVIEW_CHARS = 40
_WHITESPACE_RE = re.compile(r"\s+")


@dataclass(frozen=True)
class BadRecord:
    """One rejected line of a record file.

    Attributes:
        path: The record file.
        line: 1-based line number.
        reason: What is wrong, e.g. ``"field 'transcript': expected non-empty text (got '')"``.
    """

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class ReadResult:
    """The outcome of reading one record file.

    Attributes:
        path: Absolute path of the file that was read.
        kind: The record kind the file was read as.
        records: Kept records, normalised, in file order; ``audio_path`` is absolute.
        skipped: Lines rejected in ``on_bad_record="skip"`` mode.
        duplicates_removed: Number of exact duplicates dropped (after normalisation).
    """

    path: Path
    kind: RecordKind
    records: list[dict[str, Any]]
    skipped: list[BadRecord] = field(default_factory=list)
    duplicates_removed: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def digest(self) -> str:
        """Return a stable SHA-256 hex digest of the kept records.

        Each record is serialised as canonical JSON (sorted keys, no extra whitespace,
        UTF-8). ``audio_path`` is expressed relative to the record file's directory,
        so the digest does not change when a checkout is moved.

        Returns:
            The 64-character hex digest (used as the MLflow dataset digest).
        """
        hasher = hashlib.sha256()
        for record in self.records:
            hasher.update(_canonical_json(self._portable(record)).encode("utf-8"))
            hasher.update(b"\n")
        return hasher.hexdigest()

    def _portable(self, record: dict[str, Any]) -> dict[str, Any]:
        images = record.get("images")
        if isinstance(images, list):
            record = {**record, "images": [os.path.relpath(x, self.path.parent).replace(os.sep, "/")
                                           for x in images if isinstance(x, str)]}
        audio = record.get(AUDIO_FIELD)
        if not isinstance(audio, str) or not os.path.isabs(audio):
            return record
        rel = os.path.relpath(audio, self.path.parent).replace(os.sep, "/")
        return {**record, AUDIO_FIELD: rel}


def classification_as_text_qa(res: ReadResult, instruction: Any, task: str) -> ReadResult:
    """Classification records as instruction -> label text_qa records (what instruction tuning trains on):
    `instruction(record)` renders the prompt; the task name is kept on each record."""
    rows = [{"instruction": instruction(r), "input": "", "output": r["label"], "task": task} for r in res.records]
    return ReadResult(path=res.path, kind="text_qa", records=rows, skipped=res.skipped,
                      duplicates_removed=res.duplicates_removed)


def normalize_text(text: str) -> str:
    """Normalise text for training and comparison.

    Applies Unicode NFC (so decomposed Hangul jamo compose into syllables), collapses
    every whitespace run (including newlines and tabs) to one space and strips the ends.

    Args:
        text: Raw text.

    Returns:
        The normalised text.
    """
    return _WHITESPACE_RE.sub(" ", unicodedata.normalize("NFC", text)).strip()


MAX_TEXT_CHARS = 32_768  # default longest text field of a record (DatasetRef.max_text_chars)


def read_records(
    path: str | Path,
    kind: RecordKind,
    *,
    on_bad_record: OnBadRecord = "fail",
    dedup: bool = True,
    check_audio: bool = True,
    labels: Sequence[str] | None = None,
    max_text_chars: int = MAX_TEXT_CHARS,
) -> ReadResult:
    """Read, validate and normalise a JSONL record file.

    Blank lines are ignored. Text fields are normalised with :func:`normalize_text`,
    missing optional fields get their defaults, relative ``audio_path`` values are
    resolved against the file's directory and stored as absolute paths, and unknown
    extra keys are kept unchanged.

    Args:
        path: The JSONL file.
        kind: Which record kind the file holds.
        on_bad_record: ``"fail"`` raises on any bad line; ``"skip"`` drops bad lines,
            logs a warning and lists them in ``ReadResult.skipped``.
        dedup: Drop exact duplicate records (after normalisation), keeping the first.
        check_audio: Check that each audio file exists and is readable by soundfile.
        labels: ``classification``: the allowed labels; a record with another label is a bad line.

    Returns:
        The kept records and what was skipped or deduplicated.

    Raises:
        DataError: The file is missing or unreadable, ``kind`` is unknown, a line is bad
            and ``on_bad_record="fail"``, or no valid record remains.
    """
    _check_kind(kind)
    if on_bad_record not in ("fail", "skip"):
        raise DataError(f"on_bad_record must be 'fail' or 'skip' (got {on_bad_record!r})")
    file = _existing_file(path)
    if kind == "classification" and not labels:
        raise DataError(f"{file}: classification records need the dataset's label set (labels: in the spec)")
    validator = _RecordValidator(file, kind, check_audio=check_audio, labels=labels, max_text_chars=max_text_chars)
    records: list[dict[str, Any]] = []
    bad: list[BadRecord] = []
    n_lines = 0
    for lineno, raw in _iter_lines(file):
        n_lines += 1
        record, reasons = validator.validate_line(raw)
        if reasons:
            bad.append(BadRecord(str(file), lineno, "; ".join(reasons)))
        elif record is not None:
            records.append(record)
    if bad and on_bad_record == "fail":
        raise DataError(_format_problems(file, bad))
    if bad and records:  # (every line bad: the reasons are the error below, not a warning before it)
        _warn_skipped(file, bad)
    duplicates = 0
    if dedup:
        records, duplicates = _deduplicate(records)
        if duplicates:
            log.info("%s: removed %d duplicate records", file, duplicates)
    if not records:
        if bad:
            listed = "\n".join(f"  {problem}" for problem in bad[:MAX_LISTED_PROBLEMS])
            more = f"\n  ... and {len(bad) - MAX_LISTED_PROBLEMS} more" if len(bad) > MAX_LISTED_PROBLEMS else ""
            raise DataError(f"{file}: no valid records ({n_lines} lines read, all bad):\n{listed}{more}")
        raise DataError(f"{file}: no valid records ({n_lines} lines read)")
    log.debug("%s: read %d %s records", file, len(records), kind)
    return ReadResult(file, kind, records, bad, duplicates)


def validate_dataset(path: str | Path, kind: RecordKind, labels: Sequence[str] | None = None) -> ReadResult:
    """Read a record file collecting every problem instead of stopping at the first.

    Args:
        path: The JSONL file.
        kind: Which record kind the file holds.

    Returns:
        The result; ``skipped`` lists every bad line.

    Raises:
        DataError: The file is missing or has no valid record at all.
    """
    return read_records(path, kind, on_bad_record="skip", labels=labels)


# --------------------------------------------------------------------------- helpers


def _check_kind(kind: str) -> None:
    if kind not in REQUIRED_FIELDS:
        raise DataError(f"unknown record kind {kind!r} (expected one of {', '.join(RECORD_KINDS)})")


def _existing_file(path: str | Path) -> Path:
    file = Path(path).expanduser()
    if not file.exists():
        raise DataError(f"{path}: file not found")
    if not file.is_file():
        raise DataError(f"{path}: not a regular file")
    return file.resolve()


def _iter_lines(file: Path) -> list[tuple[int, str | bytes]]:
    """Return ``(lineno, text)`` for non-blank lines; undecodable lines stay bytes."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise DataError(f"{file}: cannot read file ({exc.strerror or exc})") from exc
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    out: list[tuple[int, str | bytes]] = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            out.append((lineno, raw.decode("utf-8")))
        except UnicodeDecodeError:
            out.append((lineno, raw))
    return out


def _preview(value: Any) -> str:
    if isinstance(value, str):
        shown = value if len(value) <= _PREVIEW_CHARS else value[:_PREVIEW_CHARS] + "..."
        return repr(shown)
    if value is None:
        return "null"
    return type(value).__name__


class _RecordValidator:
    """Validates and normalises single lines of one record file."""

    def __init__(self, file: Path, kind: RecordKind, *, check_audio: bool,
                 labels: Sequence[str] | None = None, max_text_chars: int = MAX_TEXT_CHARS) -> None:
        self.labels = list(labels) if labels else None
        self.max_text_chars = max_text_chars
        self.base_dir = file.parent
        self.kind = kind
        self.required = REQUIRED_FIELDS[kind]
        self.optional = OPTIONAL_FIELDS[kind]
        self.check_audio = check_audio
        self._audio_cache: dict[str, str | None] = {}

    def validate_line(self, raw: str | bytes) -> tuple[dict[str, Any] | None, list[str]]:
        """Return ``(record, [])`` for a good line or ``(None, reasons)`` for a bad one."""
        if isinstance(raw, bytes):
            return None, ["invalid UTF-8 text"]
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            return None, [f"invalid JSON: {exc.msg} (column {exc.colno})"]
        if not isinstance(obj, dict):
            return None, [f"expected a JSON object (got {type(obj).__name__})"]
        record = dict(obj)
        reasons: list[str] = []
        for name in self.required:
            reasons.extend(self._check_field(record, name, required=True))
        for name, default in self.optional.items():
            if record.get(name) is None:
                record[name] = default
            else:
                reasons.extend(self._check_field(record, name, required=False))
        if self.kind == "vision":
            reasons.extend(self._check_vision(record))
        if self.labels is not None and not reasons and record["label"] not in self.labels:
            reasons.append(f"field 'label': expected one of {self.labels} (got {_preview(record['label'])})")
        return (None, reasons) if reasons else (record, [])

    def _check_field(self, record: dict[str, Any], name: str, *, required: bool) -> list[str]:
        if name not in record:
            return [f"field '{name}': required field is missing"]
        value = record[name]
        if not isinstance(value, str):
            return [f"field '{name}': expected a string (got {_preview(value)})"]
        if name == AUDIO_FIELD:
            return self._check_audio(record, value)
        if len(value) > self.max_text_chars:
            return [f"field '{name}': {len(value):,} characters, more than max_text_chars ({self.max_text_chars:,}); "
                    f"fix the record, or raise the dataset's max_text_chars"]
        normalised = normalize_text(value) if name in TEXT_FIELDS else value.strip()
        if name in NON_EMPTY_FIELDS and not normalised:
            return [f"field '{name}': expected non-empty text (got {_preview(value)})"]
        record[name] = normalised
        return []

    def _check_vision(self, record: dict[str, Any]) -> list[str]:
        """images: a non-empty list of readable image files (made absolute); persona: an object of short texts."""
        images = record.get("images")
        if not isinstance(images, list) or not images or not all(isinstance(x, str) and x.strip() for x in images):
            return [f"field 'images': expected a non-empty list of image paths (got {_preview(images)})"]
        out, reasons = [], []
        for value in images:
            resolved = Path(value).expanduser()
            absolute = os.path.normpath(resolved if resolved.is_absolute() else self.base_dir / resolved)
            out.append(absolute)
            if self.check_audio:  # the same switch: check media files exist and decode
                if absolute not in self._audio_cache:
                    self._audio_cache[absolute] = _probe_image(absolute)
                if self._audio_cache[absolute] is not None:
                    reasons.append(f"field 'images': expected a readable image (got {value!r}: "
                                   f"{self._audio_cache[absolute]})")
        record["images"] = out
        persona = record.get("persona")
        if persona is None:
            record["persona"] = {}
        elif not isinstance(persona, dict) or not all(isinstance(v, (str, int, float)) for v in persona.values()):
            reasons.append(f"field 'persona': expected an object of short texts, e.g. {{\"age\": \"7\"}} "
                           f"(got {_preview(persona)})")
        else:
            record["persona"] = {str(k): str(v).strip() for k, v in persona.items()}
        return reasons

    def _check_audio(self, record: dict[str, Any], value: str) -> list[str]:
        if not value.strip():
            return [f"field '{AUDIO_FIELD}': expected a path to an audio file (got {_preview(value)})"]
        resolved = Path(value).expanduser()
        if not resolved.is_absolute():
            resolved = self.base_dir / resolved
        absolute = os.path.normpath(resolved)
        record[AUDIO_FIELD] = absolute
        if not self.check_audio:
            return []
        problem = self._audio_problem(absolute)
        if problem is None:
            return []
        return [f"field '{AUDIO_FIELD}': expected a readable audio file (got {value!r}: {problem})"]

    def _audio_problem(self, absolute: str) -> str | None:
        if absolute not in self._audio_cache:
            self._audio_cache[absolute] = _probe_audio(absolute)
        return self._audio_cache[absolute]


def _probe_audio(path: str) -> str | None:
    """Return why ``path`` is not a readable audio file, or None when it is."""
    if not os.path.exists(path):
        return "file not found"
    if not os.path.isfile(path):
        return "not a regular file"
    try:
        info = soundfile.info(path)
    except (RuntimeError, OSError, ValueError) as exc:  # LibsndfileError is a RuntimeError
        return f"not readable as audio: {exc}"
    if info.frames <= 0:
        return "audio file has no samples"
    return None


def _probe_image(path: str) -> str | None:
    """Return why ``path`` is not a readable image, or None when it is (decoded, not just sniffed)."""
    if not os.path.isfile(path):
        return "file not found" if not os.path.exists(path) else "not a regular file"
    try:
        from PIL import Image

        with Image.open(path) as img:
            img.load()
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        return f"not readable as an image: {type(exc).__name__}"
    return None


def _canonical_json(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _deduplicate(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    seen: set[str] = set()
    kept: list[dict[str, Any]] = []
    for record in records:
        key = _canonical_json(record)
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept, len(records) - len(kept)


def _format_problems(file: Path, bad: list[BadRecord]) -> str:
    lines = [f"{file}: {len(bad)} bad record{'s' if len(bad) != 1 else ''}"]
    lines.extend(f"  {problem}" for problem in bad[:MAX_LISTED_PROBLEMS])
    if len(bad) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(bad) - MAX_LISTED_PROBLEMS} more")
    return "\n".join(lines)


def _warn_skipped(file: Path, bad: list[BadRecord]) -> None:
    examples = "; ".join(str(problem) for problem in bad[:_WARN_EXAMPLES])
    more = f" (and {len(bad) - _WARN_EXAMPLES} more)" if len(bad) > _WARN_EXAMPLES else ""
    log.warning("%s: skipped %d bad records: %s%s", file, len(bad), examples, more)
