"""Secrets never reach MLflow (params, tags, artifacts) or the logs: they show as ***.

What counts as secret:

* any spec or profile field, `env:` entry or environment variable whose *name* looks like a key,
  secret, token or password (HF_TOKEN, AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD, api_key, ...);
* names listed in the spec's `tracking.redact`;
* the password part of a URI (`https://user:pass@host`).

The values found this way are registered process-wide; `redact_text` and the logging filter replace
every occurrence of them, wherever they appear (a token pasted into a description included).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
_SECRET_WORDS = frozenset({"password", "passwd", "pwd", "passphrase", "secret", "token", "apikey", "credential",
                           "credentials", "signature", "privatekey", "accesskey", "authkey", "sessionkey"})
_KEY_PREFIXES = frozenset({"api", "access", "private", "auth", "session", "secret", "signing", "encryption"})
_NAME_SPLIT_RE = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
_URI_PASSWORD_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_MIN_SECRET_LEN = 6  # shorter values would mask ordinary text
# values that are settings, not secrets (HF_HUB_DISABLE_IMPLICIT_TOKEN=true must not mask every "true")
_NOT_A_SECRET_RE = re.compile(r"^(true|false|yes|no|on|off|none|null|[0-9.]+)$", re.IGNORECASE)

# the shell's working directories: "pwd" here is "print working directory", and masking the cwd hid every path
_NOT_SECRET_NAMES = frozenset({"PWD", "OLDPWD"})

_lock = threading.Lock()
_values: set[str] = set()
_extra_names: set[str] = set()


def is_secret_name(name: str) -> bool:
    """A name that marks its value secret: a word like token/secret/password, an api/access/... key, or a
    name listed in tracking.redact. Words, not substrings: `tokenizer` and `max_new_tokens` are not secret."""
    if name in _extra_names or name.lower() in _extra_names:
        return True
    if name in _NOT_SECRET_NAMES:
        return False
    words = [w.lower() for w in _NAME_SPLIT_RE.split(name) if w]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(a in _KEY_PREFIXES and b == "key" for a, b in zip(words, words[1:]))


def register_names(names: Iterable[str]) -> None:
    """Extra names (spec keys, env vars) whose values are secret."""
    with _lock:
        _extra_names.update(n for n in names if n)
        _extra_names.update(n.lower() for n in names if n)


def register_values(values: Iterable[str | None]) -> None:
    with _lock:
        _values.update(v for v in values if isinstance(v, str) and len(v) >= _MIN_SECRET_LEN
                       and not _NOT_A_SECRET_RE.match(v) and not _is_reference(v))


def register_environment(environ: Mapping[str, str] | None = None) -> None:
    """Register the values of every secret-looking environment variable."""
    env = os.environ if environ is None else environ
    register_values(v for k, v in env.items() if is_secret_name(k))


def register_from(data: Any) -> None:
    """Register secret values found in a spec/profile tree: values under secret names, URI passwords."""
    for key, value in _walk(data):
        if isinstance(value, str):
            if key is not None and is_secret_name(key):
                register_values([value])
            for m in _URI_PASSWORD_RE.finditer(value):
                register_values([m.group("pw")])


def _walk(data: Any, key: str | None = None) -> Iterable[tuple[str | None, Any]]:
    if isinstance(data, Mapping):
        for k, v in data.items():
            yield from _walk(v, str(k))
    elif isinstance(data, (list, tuple)):
        for v in data:
            yield from _walk(v, key)
    else:
        yield key, data


def known_values() -> set[str]:
    with _lock:
        return set(_values)


def export_registry() -> dict[str, list[str]]:
    """What this process knows to mask, for a helper process it starts (sent over a pipe, never argv or env)."""
    with _lock:
        return {"values": sorted(_values), "names": sorted(_extra_names)}


def import_registry(registry: Mapping[str, Iterable[str]]) -> None:
    """Mask what another process registered (the other half of `export_registry`)."""
    with _lock:
        _values.update(registry.get("values", ()))
        _extra_names.update(registry.get("names", ()))


def redact_text(text: str) -> str:
    """Mask URI passwords and every registered secret value in `text`."""
    if not text:
        return text
    text = _URI_PASSWORD_RE.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", text)
    for v in sorted(known_values(), key=len, reverse=True):  # longest first: a secret may contain another
        if v in text:
            text = text.replace(v, MASK)
    return text


def redact(data: Any, key: str | None = None) -> Any:
    """A copy of a spec/param/tag tree with secret-named values and known secret values masked."""
    if isinstance(data, Mapping):
        return {k: redact(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v, key) for v in data]
    if isinstance(data, tuple):
        return tuple(redact(v, key) for v in data)
    if isinstance(data, str):
        if key is not None and is_secret_name(key) and data and not _is_reference(data):
            return MASK
        return redact_text(data)
    return data


def _is_reference(value: str) -> bool:
    """'${VAR}' names a variable; it is not the secret itself."""
    return bool(re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", value))


def contains_secret(text: str) -> bool:
    return any(v in text for v in known_values()) or bool(_URI_PASSWORD_RE.search(text))


class RedactingFilter(logging.Filter):
    """Masks secrets in every log record that passes through a handler (message and arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logger's problem, not ours
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def install_log_filter(logger: logging.Logger | None = None) -> None:
    """Add the redacting filter to every handler of `logger` (the root logger by default)."""
    target = logger or logging.getLogger()
    for h in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())


def resolve_env(env: Mapping[str, str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The spec's `env:` with '${VAR}' references read from the environment (missing -> KeyError message)."""
    src = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for k, v in env.items():
        m = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", v)
        if m:
            if m.group(1) not in src:
                raise KeyError(f"env.{k}: ${{{m.group(1)}}} is not set in the launcher's environment")
            out[k] = src[m.group(1)]
        else:
            out[k] = v
    return out


def protect_job(spec: Any) -> dict[str, str]:
    """Everything a launcher or worker process does first with a job spec: register the secrets it may see
    (environment, spec values under secret names, `tracking.redact`), mask them in every log line, and
    return the spec's `env:` with '${VAR}' references resolved (KeyError naming the entry when one is unset).
    """
    from sllm_lib.spec import spec_to_dict

    register_names(spec.tracking.redact)
    register_environment()
    register_from(spec_to_dict(spec))
    env = resolve_env(spec.env)
    register_values(v for k, v in env.items() if is_secret_name(k))
    install_log_filter()
    return env
