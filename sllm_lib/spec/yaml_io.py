"""Reading a spec's YAML safely: bounded depth and size (no 'billion laughs'), duplicate keys refused, errors
with line and column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sllm_lib.errors import JobSpecError
from sllm_lib.spec.problems import _clip, _printable, _show


_MAX_DEPTH = 100  # nesting levels (real specs use < 10); deeper input is refused before anything recurses into it
_MAX_VALUES = 1_000_000  # values once YAML aliases are expanded (a "billion laughs" file is tiny on disk)
_YAML_TYPES = {
    "tag:yaml.org,2002:int": "an integer", "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:timestamp": "a date", "tag:yaml.org,2002:bool": "a boolean",
}


class _TooLarge(ValueError):
    """Parsed YAML that is too large or too deep once its aliases are expanded."""


class _SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader that reports, at a line and column, what would otherwise escape as a RecursionError, a bare
    ValueError or a self-containing value: nesting deeper than _MAX_DEPTH, an alias inside its own anchor
    (`&a [*a]`), and a scalar it cannot build (`2026-02-30`, `!!int abc`, a 5,000-digit number)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open: dict[str, bool] = {}  # anchor -> its (latest) node is still being composed

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if self._depth >= _MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested more than {_MAX_DEPTH} levels deep", event.start_mark)
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.AliasEvent):
            if self._open.get(anchor):
                raise yaml.composer.ComposerError(
                    None, None, f"alias *{anchor} is inside its own anchor &{anchor} (a value cannot contain itself)",
                    event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if anchor is not None:
            self._open[anchor] = True
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open[anchor] = False

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError, TypeError, KeyError, AttributeError, IndexError) as exc:
            # PyYAML's own constructors fail like this on an explicit tag with a bad value (`!!bool maybe`)
            what = _YAML_TYPES.get(node.tag, node.tag)
            reason = "" if not isinstance(exc, (ValueError, OverflowError)) else (
                ": too many digits" if "digits" in str(exc) else f": {exc}")
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {_show(node.value, 40)} as {what}{reason}", node.start_mark) from exc

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """A key written twice in one mapping is an error naming both lines (PyYAML keeps the last silently: a
        stage's `lr` written twice would train with the second value without a word)."""
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults`: its keys may be overridden on purpose
                try:
                    key = self.construct_object(key_node, deep=True)
                    hash(key)
                except (TypeError, yaml.YAMLError):
                    continue  # an unhashable key: the base class reports it
                if key in seen:
                    first = seen[key]
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {_show(key, 40)} appears twice in one mapping (first at line "
                                    f"{first.line + 1}, column {first.column + 1}); keep one", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        value = super().construct_yaml_int(node)
        if value.bit_length() > 14_000:  # ~4,300 decimal digits, as for a decimal literal (hex ones have no limit)
            raise ValueError("too many digits")
        return value


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)


def _too_large(data: Any) -> str | None:
    """Why `data` is too large or deep once YAML aliases are expanded (None if fine); iterative, cycles count once."""
    done: dict[int, tuple[int, int]] = {}  # id -> (values, depth) of a finished list/dict
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, finished = stack.pop()
        children = list(node.values()) if isinstance(node, dict) else node
        if finished:
            on_path.discard(id(node))
            size, depth = 1, 1
            for c in children:
                csize, cdepth = done.get(id(c), (0, 0)) if isinstance(c, (dict, list)) else (1, 0)
                size, depth = size + csize, max(depth, cdepth + 1)
            if size > _MAX_VALUES:
                return f"YAML aliases expand to more than {_MAX_VALUES:,} values"
            if depth > _MAX_DEPTH:
                return f"YAML aliases nest values more than {_MAX_DEPTH} levels deep"
            done[id(node)] = (size, depth)
        elif isinstance(node, (dict, list)) and id(node) not in done and id(node) not in on_path:
            on_path.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if isinstance(c, (dict, list)))
    return None


def _parse_yaml(text: str) -> Any:
    """Parse YAML text (raises yaml.YAMLError for bad YAML, _TooLarge for an alias bomb)."""
    loader = _SpecLoader(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    problem = _too_large(data)
    if problem:
        raise _TooLarge(problem)
    return data


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """' at line L, column C: what is wrong' for a YAML error in `text`."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML forbids; it knows only the offset
        pos = exc.position
        line, column = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        return (f" at line {line}, column {column}: character U+{char:04X} is not allowed in YAML "
                f"(write it as \\u{char:04x} in a double-quoted string)")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if getattr(exc, "problem", None) and context and cmark and cmark is not mark:
        problem += f" ({context} that starts at line {cmark.line + 1}, column {cmark.column + 1})"
    return f"{where}: {_clip(_printable(problem), 300)}"


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the OS, an embedded NUL
        return False


def _expanduser(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:  # ~nosuchuser
        return path


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a missing, unreadable, non-UTF-8, malformed or oversized file becomes a JobSpecError
    naming the file (and the line and column of a syntax error)."""
    if not _is_file(path):
        raise JobSpecError(f"{path}: file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JobSpecError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text() did
    except UnicodeDecodeError as exc:
        line, column = data.count(b"\n", 0, exc.start) + 1, exc.start - data.rfind(b"\n", 0, exc.start)
        raise JobSpecError(f"{path}: not UTF-8 text at line {line}, column {column} "
                           f"(byte 0x{data[exc.start]:02x}); save the file as UTF-8") from exc
    try:
        return _parse_yaml(text)
    except yaml.YAMLError as exc:
        raise JobSpecError(f"{path}: not valid YAML{_yaml_problem(exc, text)}") from exc
    except _TooLarge as exc:
        raise JobSpecError(f"{path}: too large: {exc}") from exc
