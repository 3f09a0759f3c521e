"""Imports flow one way: launch -> eval -> sllm_lib.

`lint-imports` (pyproject's contracts, run by `make test`) checks import statements. This test walks the AST of
every module for what import-linter cannot see: modules named in strings — `importlib.import_module("...")`,
`__import__("...")`, `python -m MODULE` argument lists, and Python scripts held in strings (run with
`python -c`) — plus every import statement again, so the rule holds even where lint-imports is not installed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RANK = {"sllm_lib": 0, "eval": 1, "launch": 2}
_SCRIPT_IMPORT = re.compile(r"^\s*(?:from|import)\s+(sllm_lib|eval|launch)\b[\w.]*", re.M)
_DASH_M = re.compile(r"-m\s+((?:sllm_lib|eval|launch)(?:\.\w+)*)")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The module a `from ... import` names; a relative one stays inside its own top-level package."""
    if node.level:
        return module.split(".")[0]
    return node.module or ""


def referenced_modules(source: str, module: str) -> list[tuple[str, int, str]]:
    """(module referenced, line, how) for every import and every module named in a string in `source`."""
    found: list[tuple[str, int, str]] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, "import") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((_resolve(module, node), node.lineno, "import"))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("import_module", "__import__"):
                found.append((node.args[0].value, node.lineno, f"{name}()"))
        if isinstance(node, (ast.List, ast.Tuple)):  # [python, "-m", "launch.worker", ...]
            items = node.elts
            for a, b in zip(items, items[1:]):
                if isinstance(a, ast.Constant) and a.value == "-m" and isinstance(b, ast.Constant) \
                        and isinstance(b.value, str):
                    found.append((b.value, node.lineno, "-m argument"))
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [(m.group(0).split()[-1], node.lineno, "script in a string")
                      for m in _SCRIPT_IMPORT.finditer(node.value)]
            found += [(m.group(1), node.lineno, "python -m in a string") for m in _DASH_M.finditer(node.value)]
    return found


def upward_references(source: str, module: str) -> list[str]:
    """Each reference from `module` to a higher layer, as 'module:line -> target (how)'."""
    own = RANK.get(module.split(".")[0])
    out = []
    for target, line, how in referenced_modules(source, module):
        rank = RANK.get(target.split(".")[0])
        if own is not None and rank is not None and rank > own:
            out.append(f"{module}:{line} -> {target} ({how})")
    return out


def _modules() -> list[Path]:
    return sorted(p for pkg in RANK for p in (REPO / pkg).rglob("*.py"))


def test_no_module_reaches_up_a_layer() -> None:
    problems = [p for path in _modules() for p in upward_references(path.read_text(encoding="utf-8"), _module_name(path))]
    assert not problems, "imports must flow launch -> eval -> sllm_lib; these reach up:\n" + "\n".join(problems)


@pytest.mark.parametrize("source,how", [
    ("from launch.export import measure_cpu\n", "import"),
    ("def f():\n    import eval.stage\n", "import"),
    ("import importlib\nm = importlib.import_module('launch.cli')\n", "import_module()"),
    ("mod = __import__('eval.nightly')\n", "__import__()"),
    ("cmd = [sys.executable, '-m', 'launch.worker', path]\n", "-m argument"),
    ("SCRIPT = '''\nimport json\nfrom eval.scoring import score_task\n'''\n", "script in a string"),
    ("CMD = 'python -m launch.ray_driver req.json'\n", "python -m in a string"),
])
def test_the_walk_sees_every_way_up(source: str, how: str) -> None:
    found = upward_references(source, "sllm_lib.training.example")
    assert len(found) == 1 and found[0].endswith(f"({how})"), found


def test_same_and_lower_layers_are_allowed() -> None:
    source = ("from sllm_lib.spec import JobSpec\nfrom . import runner\nimport importlib\n"
              "importlib.import_module('sllm_lib.models.refs')\ncmd = ['python', '-m', 'eval.scoring']\n")
    assert upward_references(source, "eval.stage") == []
    assert upward_references(source, "launch.cli") == []
