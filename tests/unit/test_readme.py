"""The README cannot go stale: every job spec and cluster profile is listed in it, every file it names exists,
and every `sllm ...` command it shows is a real command with real options.

Commands are checked against the Typer app itself (`launch.cli.app`, which imports no torch), not a copy of
its names: a renamed or removed command or option fails here until the README follows.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
FOLDERS = ("jobs", "cluster_configs")

# names the README uses as stand-ins for the reader's own files, never shipped
PLACEHOLDER_FILES = {"jobs/x.yaml", "cluster_configs/y.yaml", "jobs/my_medqa.yaml"}
PLACEHOLDER_PROFILES = {"X", "x", "y", "slurm_x", "NAME", "..."}
# other YAML files the README names that live outside jobs/ and cluster_configs/
OTHER_YAML = {"spec.resolved.yaml"}

_FENCE_RE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE_RE = re.compile(r"`(sllm [^`\n]+)`")
_ROW_RE = re.compile(r"^\| `(jobs|cluster_configs)/([^`|]+)` \|", re.MULTILINE)
_PATH_RE = re.compile(r"(?<![\w/.<>-])(?:(jobs|cluster_configs)/)?([A-Za-z0-9_.-]+\.ya?ml)\b")
# where one command ends and the next may begin on a shell line
_SEGMENT_RE = re.compile(r"&&|\|\||;|\s\|\s|\$\(")
_GLOBAL_OPTIONS = {"--debug": False, "--log-level": True, "--help": False}  # option -> takes a value


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _shipped(folder: str) -> set[str]:
    root = REPO / folder
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.suffix in {".yaml", ".yml"}}


def _code_lines(text: str) -> list[str]:
    """Lines of fenced code blocks plus inline `sllm ...` spans, comments removed."""
    lines = []
    for block in _FENCE_RE.findall(text):
        for line in block.splitlines():
            code = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
            if code.strip():
                lines.append(code)
    lines += _INLINE_RE.findall(text)
    return lines


def _invocations(text: str) -> list[tuple[str, list[str]]]:
    """(the source line, tokens after `sllm`) for every sllm command shown in the README."""
    found = []
    for line in _code_lines(text):
        for segment in _SEGMENT_RE.split(line):
            tokens = segment.split()
            while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):  # VAR=value before the command
                tokens.pop(0)
            if tokens and PurePosixPath(tokens[0]).name == "sllm":
                found.append((line.strip(), tokens[1:]))
    return found


def _cli() -> Any:
    import typer.main

    from launch.cli import app

    return typer.main.get_command(app)


def _option_name(token: str) -> str | None:
    """'[--set' -> '--set', '--kind=asr' -> '--kind', '[-f]' -> '-f'; None for a token that is no option."""
    tok = token.lstrip("[(")
    if not re.match(r"--?[A-Za-z]", tok):
        return None
    return re.split(r"[=\])|,`]", tok, maxsplit=1)[0]


def _command_problems(line: str, args: list[str], root: Any) -> list[str]:
    """What is wrong with one `sllm ARGS` line: unknown command, subcommand or option, or unknown profile."""
    args = list(args)
    while args and args[0] in _GLOBAL_OPTIONS:
        takes_value = _GLOBAL_OPTIONS[args.pop(0)]
        if takes_value and args:
            args.pop(0)
    if not args or args[0].startswith("-"):
        return []  # `sllm --help`
    problems = []
    commands = [root]
    while args and hasattr(commands[0], "commands"):  # descend through groups: data, cache, tracking
        word = args.pop(0).strip("`")
        names = word.split("|")  # `sllm cache stats|verify|gc`: alternatives
        unknown = [n for n in names if n not in commands[0].commands]
        if unknown:
            known = ", ".join(sorted(commands[0].commands))
            return [f"{line!r}: no command {' '.join(unknown)!r} (commands: {known})"]
        commands = [commands[0].commands[n] for n in names]
    for cmd in commands:
        if hasattr(cmd, "commands"):
            continue  # a group named without a subcommand (`sllm data --help`)
        options = {"--help"}
        for param in cmd.params:
            options.update(getattr(param, "opts", []) if param.param_type_name == "option" else [])
            options.update(getattr(param, "secondary_opts", []))
        for i, token in enumerate(args):
            name = _option_name(token)
            if name is not None and name not in options:
                problems.append(f"{line!r}: `sllm {cmd.name}` has no option {name} (options: {sorted(options)})")
            if name == "--cluster" and i + 1 < len(args):
                profile = args[i + 1].strip("[]`")
                if profile not in PLACEHOLDER_PROFILES and not profile.startswith("<") and profile != "local" \
                        and not (REPO / "cluster_configs" / f"{profile}.yaml").is_file():
                    problems.append(f"{line!r}: no cluster profile {profile!r} in cluster_configs/")
    return problems


@pytest.mark.parametrize("folder", FOLDERS)
def test_listing_table_matches_folder(folder: str) -> None:
    """Each file of jobs/ and cluster_configs/ has exactly one row in the README's tables, and no row names a
    file that is gone."""
    rows = [name for where, name in _ROW_RE.findall(_readme()) if where == folder]
    shipped = _shipped(folder)
    assert shipped, f"no YAML files found under {folder}/"
    missing = sorted(shipped - set(rows))
    stale = sorted(set(rows) - shipped)
    twice = sorted({r for r in rows if rows.count(r) > 1})
    assert not missing, f"README lists no row for {[f'{folder}/{m}' for m in missing]}: add one line each"
    assert not stale, f"README lists {[f'{folder}/{s}' for s in stale]}, which do not exist"
    assert not twice, f"README lists {twice} more than once"


def test_every_yaml_file_named_exists() -> None:
    """`jobs/X.yaml`, `cluster_configs/Y.yaml` or a bare `Z.yaml` anywhere in the README is a shipped file."""
    shipped = {folder: _shipped(folder) for folder in FOLDERS}
    anywhere = shipped["jobs"] | shipped["cluster_configs"] | OTHER_YAML
    problems = []
    for folder, name in set(_PATH_RE.findall(_readme())):
        if folder:
            if f"{folder}/{name}" not in PLACEHOLDER_FILES and name not in shipped[folder]:
                problems.append(f"{folder}/{name}")
        elif name not in anywhere and not any(p.endswith("/" + name) for p in PLACEHOLDER_FILES):
            problems.append(name)
    assert not problems, f"README names files that do not exist: {sorted(problems)}"


def test_readme_shows_sllm_commands() -> None:
    """The parser finds the commands (so the next test cannot pass by finding nothing)."""
    seen = {tuple(a[:1]) for _, a in _invocations(_readme())}
    for command in ("validate", "plan", "submit", "data", "status"):
        assert (command,) in seen, f"no `sllm {command}` found in the README's code"


def test_every_sllm_command_in_readme_exists() -> None:
    """Every `sllm <command> [<subcommand>] --option` in a code block or inline span is real, and every
    `--cluster NAME` names a shipped profile."""
    root = _cli()
    problems = [p for line, args in _invocations(_readme()) for p in _command_problems(line, args, root)]
    assert not problems, "README shows commands the CLI does not have:\n" + "\n".join(problems)


def test_checker_catches_a_wrong_command() -> None:
    """The checker itself: an unknown command, subcommand, option or profile is reported."""
    root = _cli()
    bad = {
        "sllm sumbit jobs/demo_sllm_tiny.yaml": "no command",
        "sllm data convert jobs/x.jsonl": "no command",
        "sllm plan jobs/demo_sllm_tiny.yaml --gpu-memory": "has no option --gpu-memory",
        "sllm submit jobs/demo_sllm_tiny.yaml --cluster slurm_h100": "no cluster profile",
    }
    for line, expected in bad.items():
        (_, args), = _invocations(f"```bash\n{line}\n```\n")
        problems = _command_problems(line, args, root)
        assert problems and expected in problems[0], (line, problems)
    good = "eval \"$(scripts/slurm_local.sh start /tmp/s)\" && sllm cache stats|verify|gc SPEC | sllm logs R S [-f]"
    invs = _invocations(f"```bash\n{good}\n```\n")
    assert [a[:1] for _, a in invs] == [["cache"], ["logs"]]
    assert all(not _command_problems(line, args, root) for line, args in invs)


def test_quick_start_commands_unchanged() -> None:
    """The two set-up commands at the top stay as they are (and are the first code a reader meets)."""
    first_block = _FENCE_RE.findall(_readme())[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)
