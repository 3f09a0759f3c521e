"""`--set key.path[i]=value` overrides applied to the raw spec before validation."""

from __future__ import annotations

import re
from typing import Any

import yaml

from sllm_lib.errors import JobSpecError
from sllm_lib.spec.problems import _dotted, _show
from sllm_lib.spec.yaml_io import _MAX_DEPTH, _TooLarge, _parse_yaml, _yaml_problem


_OVERRIDE = re.compile(r"^(?P<key>[A-Za-z_][\w.\[\]-]*)=(?P<value>.*)$", re.S)
_KEY_PATH = re.compile(r"[A-Za-z_][\w-]*(?:\.[\w-]+|\[\d{1,9}\])*")
_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path[0].field=value` overrides (values parsed as YAML) to a raw spec dict.

    A stage may be addressed by index (`stages[1].train.lr=1e-4`) or by name (`stages.asr.train.lr=1e-4`).

    Raises:
        JobSpecError: for a malformed override (key or YAML value) or a path that does not exist.
    """
    import copy

    data = copy.deepcopy(raw)
    for item in overrides:
        m = _OVERRIDE.match(item)
        if not m:
            raise JobSpecError(f"--set {_show(item)}: expected KEY=VALUE, e.g. stages[0].train.lr=2e-4")
        if not _KEY_PATH.fullmatch(m["key"]):
            raise JobSpecError(f"--set {_show(item)}: malformed key {_show(m['key'])}; use dotted names and [index], "
                               f"e.g. stages[0].train.lr=2e-4")
        tokens = [t[0] or int(t[1]) for t in _TOKEN.findall(m["key"])]
        if len(tokens) > _MAX_DEPTH:
            raise JobSpecError(f"--set {_show(item)}: key nests more than {_MAX_DEPTH} levels deep")
        try:
            value = _parse_yaml(m["value"]) if m["value"] else ""
        except yaml.YAMLError as exc:
            raise JobSpecError(f"--set {_show(item)}: value is not valid YAML{_yaml_problem(exc, m['value'])}") from exc
        except _TooLarge as exc:
            raise JobSpecError(f"--set {_show(item)}: value too large: {exc}") from exc
        node: Any = data
        for i, tok in enumerate(tokens):
            last = i == len(tokens) - 1
            if isinstance(node, list) and isinstance(tok, str):
                matches = [k for k, s in enumerate(node) if isinstance(s, dict) and s.get("name") == tok]
                if not matches:
                    raise JobSpecError(f"--set {_show(item)}: no list element named {tok!r}")
                tok = matches[0]
            if isinstance(node, list):
                if not isinstance(tok, int) or tok >= len(node):
                    raise JobSpecError(f"--set {_show(item)}: index {tok} out of range (list has {len(node)} items)")
            elif isinstance(tok, int):
                raise JobSpecError(f"--set {_show(item)}: {_dotted(tuple(tokens[:i]))} is not a list")
            elif not isinstance(node, dict):
                raise JobSpecError(f"--set {_show(item)}: {_dotted(tuple(tokens[:i]))} is not a mapping")
            if last:
                node[tok] = value
            else:
                if isinstance(node, dict) and tok not in node:
                    node[tok] = {}
                node = node[tok]
    return data
