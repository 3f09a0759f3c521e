"""Problem reporting: every problem of a file at once, one line each, with the dotted key, the bad value and
what is allowed (close-match hints for unknown keys). Public: `validation_problems`, `raise_problems`."""

from __future__ import annotations

import difflib
import typing
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, ValidationError

from sllm_lib.errors import JobSpecError
from sllm_lib.spec.profiles import LocalProfile, RayProfile, SlurmProfile
from sllm_lib.spec.stages import STAGE_TYPES


_PROFILE_ROOT: ContextVar[bool] = ContextVar("_PROFILE_ROOT", default=False)
_TAG_MODELS: dict[str, type[BaseModel]] = {**STAGE_TYPES, "local": LocalProfile, "slurm": SlurmProfile,
                                            "ray": RayProfile}


def _is_tag(loc: tuple[Any, ...], i: int) -> bool:
    """Discriminated unions put the tag into an error location: after `stages[i]`, or first for a profile."""
    part = loc[i]
    if not (isinstance(part, str) and part in _TAG_MODELS):
        return False
    if i == 0:
        return part in {"local", "slurm", "ray"} and _PROFILE_ROOT.get()
    return i == 2 and loc[0] == "stages" and isinstance(loc[1], int)


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class reached by walking an error location from `root` (None if it leaves models)."""
    current: Any = root
    for i, part in enumerate(loc):
        if isinstance(part, int):
            continue
        if _is_tag(loc, i):
            current = _TAG_MODELS[part]
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _unwrap_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    """The BaseModel class inside an annotation such as list[X] / X | None, if any (unions: the first)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


# The names other trainers give a field -> ours: an unknown key that is one of these gets the right name as its
# hint (difflib alone answers `learning_rate` with 'logging_steps').
_SYNONYMS: dict[str, str] = {
    "learning_rate": "lr", "learningrate": "lr", "batch_size": "per_device_bsz",
    "per_device_train_batch_size": "per_device_bsz", "train_batch_size": "per_device_bsz",
    "micro_batch_size": "per_device_bsz", "bsz": "per_device_bsz", "num_train_epochs": "epochs",
    "num_epochs": "epochs", "epoch": "epochs", "gradient_accumulation_steps": "grad_accum",
    "gradient_accumulation": "grad_accum", "accumulation_steps": "grad_accum", "warmup": "warmup_steps",
    "num_warmup_steps": "warmup_steps", "max_length": "max_seq_len", "max_seq_length": "max_seq_len",
    "seq_len": "max_seq_len", "cutoff_len": "max_seq_len", "steps": "max_steps", "num_steps": "max_steps",
    "lora_r": "r", "rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "targets",
    "lr_scheduler_type": "lr_scheduler", "scheduler": "lr_scheduler", "grad_clip": "max_grad_norm",
    "clip_grad_norm": "max_grad_norm", "fp16": "precision", "bf16": "precision", "dtype": "precision",
    "model_name_or_path": "base", "model_name": "base", "model_id": "base", "checkpointing": "gradient_checkpointing",
}


def _tags_of(ctx: dict[str, Any]) -> list[str]:
    """The expected tags of a discriminated union error, as a list."""
    text = str(ctx.get("expected_tags", ""))
    return [t.strip().strip("'") for t in text.split(",") if t.strip()] or list(STAGE_TYPES)  # (not-found: none)


_SHOW_MAX = 80  # characters of a bad value quoted in a message
_LINE_MAX = 1000  # characters of one problem line


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _show(value: Any, limit: int = _SHOW_MAX) -> str:
    """repr() of a bad value for a message: printable, one line, clipped (a 100k-character string shows its length)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's int-to-text digit limit
        return f"<{type(value).__name__} too large to show>"
    if len(text) <= limit:
        return text
    size = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return text[:limit] + "…" + size


def _printable(text: str) -> str:
    """`text` with every unprintable character (newline, tab, control, lone surrogate) escaped: one clean line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _key_text(key: str) -> str:
    """A mapping key inside a dotted field path: as written, or quoted when empty, blank-edged, unprintable or long."""
    if key and key.isprintable() and key.strip() == key and len(key) <= 60:
        return key
    return _show(key, 40)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _key_text(str(part))
    return out or "<root>"


def _format_error(err: dict[str, Any], root: type[BaseModel]) -> str:
    """One line: dotted field, what went wrong, the bad value, and what is allowed."""
    raw_loc = tuple(err["loc"])
    loc = tuple(p for i, p in enumerate(raw_loc) if not _is_tag(raw_loc, i))
    where = _dotted(loc)
    typ = err["type"]
    ctx = err.get("ctx") or {}
    if typ == "extra_forbidden":
        key = str(raw_loc[-1])
        parent = _model_at(root, raw_loc[:-1])
        hint = ""
        if parent is not None:
            fields = list(parent.model_fields)
            usual = _SYNONYMS.get(key.strip().lower().replace("-", "_"))
            close = [usual] if usual in fields else difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed keys: {', '.join(fields)}"
        return f"{where}: unknown key{hint}"
    if typ == "bool_for_number":
        return f"{_dotted((*loc, ctx.get('field', '?')))}: expected a number, not a boolean (got {ctx.get('value')})"
    if typ == "invalid_key":  # YAML reads `1:`, `null:`, `2024-01-01:` or `true:` as a non-text key
        return f"{_dotted(loc[:-1])}: key {_show(err.get('input'))} is not text; quote it"
    if typ in ("union_tag_invalid", "union_tag_not_found"):
        disc = str(ctx.get("discriminator", "'kind'")).strip("'")
        data = err.get("input")
        kinds = _tags_of(ctx)
        listed = ", ".join(kinds)
        if typ == "union_tag_not_found" or not isinstance(data, dict) or disc not in data:
            near = [k for k in data if isinstance(k, str) and k.strip().lower() == disc] if isinstance(data, dict) \
                else []
            found = f"; found {_show(near[0])}, did you mean {disc!r}?" if near else ""
            return f"{where}: {disc!r} is required (one of: {listed}){found}"
        tag = data.get(disc)
        close = difflib.get_close_matches(tag, kinds, n=1, cutoff=0.6) if isinstance(tag, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{_dotted((*loc, disc))}: unknown {disc} {_show(tag)}{hint} (one of: {listed})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    got = err.get("input")
    got_text = "" if typ == "missing" or isinstance(got, (dict, list)) else f" (got {_show(got)})"
    return f"{where}: {_clip(msg, 300)}{got_text}"


def validation_problems(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    return [_format_error(e, root) for e in exc.errors()]


def raise_problems(source: str, problems: list[str]) -> None:
    problems = [_clip(_printable(p), _LINE_MAX) for p in problems]  # one problem, one line
    n = len(problems)
    lines = "\n".join(f"  {p}" for p in problems)
    raise JobSpecError(f"{source}: {n} problem{'s' if n != 1 else ''}\n{lines}")
