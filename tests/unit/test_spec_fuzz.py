"""Property-based fuzzing of job-spec and cluster-profile loading (hypothesis).

Every malformed input -- wrong types, unknown keys, missing keys, huge values, unicode, truncated or
corrupted YAML text, malformed `--set` overrides -- must end in a `JobSpecError` whose message names the
file and the field (or the line and column of a YAML syntax error), never in any other exception.

The strategies start from the shipped specs (jobs/*.yaml) and profiles (cluster_configs/*.yaml) and mutate
them, so most examples are "almost valid" and reach deep into validation. All runs are derandomized
(a fixed example sequence per test: a flaky fuzz test would block landing) and keep no example database.
Together the property tests run 1,150 examples. The plain tests at the end are the minimal inputs of the
bugs the fuzzing found.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sllm_lib.errors import JobSpecError, SllmError
from sllm_lib.spec import (
    AsrAdapterStage,
    BootstrapSpec,
    CacheSpec,
    DataSpec,
    DatasetRef,
    EvalDatasetRef,
    EvalStage,
    GenerationSpec,
    JobSpec,
    LocalProfile,
    LoraSpec,
    MergeStage,
    ModelSpec,
    MultitaskStage,
    NightlyEvalStage,
    QuantSpec,
    RayProfile,
    RegisterSpec,
    SlurmProfile,
    SuiteEvalStage,
    SweepSpec,
    TextSftStage,
    TrackingSpec,
    TrainSpec,
    find_cluster_profile,
    load_cluster_profile,
    load_job_spec,
)

REPO = Path(__file__).resolve().parents[2]
SPEC_FILES = ["demo_sllm_tiny.yaml", "sllm_voxtral_3stage.yaml", "nightly_eval.yaml", "sweep_text_lora_tiny.yaml"]
SPEC_TEXTS = {n: (REPO / "jobs" / n).read_bytes() for n in SPEC_FILES}
PROFILE_TEXTS = {p.name: p.read_bytes() for p in sorted((REPO / "cluster_configs").glob("*.yaml"))}
SPEC_RAWS = {n: yaml.safe_load(t) for n, t in SPEC_TEXTS.items()}
PROFILE_RAWS = {n: yaml.safe_load(t) for n, t in PROFILE_TEXTS.items()}

_FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same examples on every run and machine
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)



def fuzz(examples: int) -> settings:
    return settings(_FUZZ, max_examples=examples)


MODELS = [
    JobSpec, ModelSpec, TrackingSpec, CacheSpec, SweepSpec, TextSftStage, AsrAdapterStage, MultitaskStage,
    MergeStage, EvalStage, SuiteEvalStage, NightlyEvalStage, DataSpec, DatasetRef, EvalDatasetRef, LoraSpec,
    QuantSpec, TrainSpec, GenerationSpec, RegisterSpec, BootstrapSpec, LocalProfile, SlurmProfile, RayProfile,
]
FIELD_NAMES = set().union(*(m.model_fields for m in MODELS))
FREE_DICTS = {"grid", "thresholds", "tiers", "additional_parameters", "runtime_env", "resources_per_worker", "env"}
ANY_VALUED = {"grid", "additional_parameters", "runtime_env"}  # dict[str, Any] / list[Any]: any value is valid
MAX_PROBLEM_LINE = 1100


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "스펙 dir"  # a path with a space and Hangul in every message
    (folder / "cluster_configs").mkdir(parents=True)
    return folder


# ------------------------------------------------------------------------------------------ the property


def check_error(msg: str, path: Path, *, overrides: bool = False) -> None:
    """The message of a JobSpecError names the file and, per problem, the field; or line/column for bad YAML."""
    if overrides and msg.startswith("--set "):  # a malformed --set item names the item, not the file
        assert "\n" not in msg, msg
        assert len(msg) < MAX_PROBLEM_LINE, msg[:300]
        return
    head, _, rest = msg.partition("\n")
    prefix = f"{path}: "
    assert head.startswith(prefix), f"message does not start with the file path: {msg[:300]!r}"
    what = head[len(prefix):]
    counted = re.fullmatch(r"(\d+) problems?", what)
    if counted:
        lines = rest.split("\n")
        assert len(lines) == int(counted[1]) >= 1, f"problem count != problem lines: {msg[:600]!r}"
        for line in lines:
            assert re.match(r"  \S[^\n]*?: \S", line), f"problem line without 'field: what': {line[:300]!r}"
            assert len(line) < MAX_PROBLEM_LINE, f"problem line too long ({len(line)}): {line[:200]!r}"
            assert line.isprintable(), f"unprintable character in problem line: {line[:300]!r}"
        return
    assert not rest, f"a one-line error spans lines: {msg[:300]!r}"
    assert len(msg) < MAX_PROBLEM_LINE, msg[:300]
    if what.startswith(("not valid YAML", "not UTF-8 text")):
        assert re.search(r"at line \d+, column \d+", what), f"YAML error without line/column: {msg!r}"
        return
    if what.startswith("too large"):
        return
    pytest.fail(f"unexpected error form: {msg[:300]!r}")


def outcome(load: Callable[[], Any], path: Path, *, overrides: bool = False) -> str | None:
    """None if `load` succeeded, else the checked message. Any exception but SllmError propagates (= a bug)."""
    try:
        load()
    except SllmError as exc:
        assert isinstance(exc, JobSpecError), f"{type(exc).__name__}: {exc}"
        msg = str(exc)
        check_error(msg, path, overrides=overrides)
        return msg
    return None


def write(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path


def dump(raw: Any) -> str:
    """YAML text of a mutated tree (libyaml's emitter when present: the pure-Python one dominates the runtime)."""
    try:
        return yaml.dump(raw, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), allow_unicode=True,
                         sort_keys=False, width=100)
    except (yaml.YAMLError, UnicodeEncodeError):  # libyaml refuses what the Python emitter escapes (lone surrogates)
        return yaml.safe_dump(raw, allow_unicode=True, sort_keys=False, width=100)


# ------------------------------------------------------------------------------------------ tree helpers


def all_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += all_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += all_paths(v, (*prefix, i))
    return out


def get_at(node: Any, path: tuple) -> Any:
    for p in path:
        node = node[p]
    return node


def set_at(root: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    get_at(root, path[:-1])[path[-1]] = value
    return root


def dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out or "<root>"


def is_model_dict(raw: Any, path: tuple) -> bool:
    """A mapping validated by a model (unknown keys forbidden), not a free dict such as thresholds."""
    return isinstance(get_at(raw, path), dict) and not any(isinstance(p, str) and p in FREE_DICTS for p in path)


# ------------------------------------------------------------------------------------------ strategies

UNICODE_SAMPLES = [
    "한국어", "의료 음성", "🚀🔥", "名前", "ключ", "مرحبا", "e\u0301", "\u200b", "\u202eevil", "\ufeff", "\x00",
    "\x1b[31m", "a\nb", "\t", "\r\n", "\u2028", "\ud800", "\udfff", "\U0010ffff", "😀" * 50, "ß", "İ",
]
HUGE = [10**30, -(10**30), 2**63, -(2**63) - 1, 10**300, 1e308, -1e308, 5e-324]

scalars = st.one_of(
    st.integers(),
    st.sampled_from(HUGE),
    st.floats(),  # nan, inf, -0.0 included
    st.booleans(),
    st.none(),
    st.text(max_size=20),
    st.text(st.characters(codec=None, categories=["Cc", "Cs", "Zl", "Zp", "Cf", "Lo", "So"]), max_size=10),
    st.sampled_from(UNICODE_SAMPLES),
    st.sampled_from(["x" * 100_000, "한" * 20_000]),
    st.dates(),
    st.datetimes(),
    st.binary(max_size=12),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
weird_keys = st.one_of(
    st.text(min_size=1, max_size=12),
    st.sampled_from(UNICODE_SAMPLES + ["", "k" * 5000, "kind", "stages", "__class__", "model_config", "a.b", "[0]"]),
    st.integers(),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.dates(),
)


def _op_replace(draw, raw):
    path = draw(st.sampled_from(all_paths(raw)))
    return set_at(raw, path, draw(values))


def _op_insert_key(draw, raw):
    dicts = [p for p in all_paths(raw) if isinstance(get_at(raw, p), dict)]
    if dicts:
        get_at(raw, draw(st.sampled_from(dicts)))[draw(weird_keys)] = draw(values)
    return raw


def _op_delete_key(draw, raw):
    keyed = [p for p in all_paths(raw) if p and isinstance(get_at(raw, p[:-1]), dict)]
    if keyed:
        path = draw(st.sampled_from(keyed))
        del get_at(raw, path[:-1])[path[-1]]
    return raw


def _op_huge(draw, raw):
    path = draw(st.sampled_from(all_paths(raw)))
    big = draw(st.sampled_from([10**30, -(10**30), float("inf"), float("nan"), "x" * 100_000, ["a"] * 2_000,
                                {f"k{i}": i for i in range(500)}]))
    return set_at(raw, path, big)


def _op_deepen(draw, raw):
    path = draw(st.sampled_from(all_paths(raw)))
    node = get_at(raw, path)
    for _ in range(draw(st.integers(1, 130))):  # crosses the loader's nesting limit (100)
        node = [node] if draw(st.booleans()) else {"d": node}
    return set_at(raw, path, node)


def _op_list(draw, raw):
    lists = [p for p in all_paths(raw) if isinstance(get_at(raw, p), list)]
    if lists:
        items = get_at(raw, draw(st.sampled_from(lists)))
        how = draw(st.sampled_from(["clear", "dup", "append", "reverse"]))
        if how == "clear":
            items.clear()
        elif how == "dup" and items:
            items.append(copy.deepcopy(items[draw(st.integers(0, len(items) - 1))]))
        elif how == "append":
            items.append(draw(values))
        else:
            items.reverse()
    return raw


def _op_typo(draw, raw):
    keyed = [p for p in all_paths(raw) if p and isinstance(p[-1], str) and len(p[-1]) > 1]
    if keyed:
        path = draw(st.sampled_from(keyed))
        parent, key = get_at(raw, path[:-1]), path[-1]
        i = draw(st.integers(0, len(key) - 1))
        parent[key[:i] + key[i + 1:]] = parent.pop(key)
    return raw


TREE_OPS = [_op_replace, _op_insert_key, _op_delete_key, _op_huge, _op_deepen, _op_list, _op_typo]


@st.composite
def mutated_trees(draw, sources: dict[str, Any]) -> str:
    raw = copy.deepcopy(sources[draw(st.sampled_from(sorted(sources)))])
    for _ in range(draw(st.integers(1, 4))):
        raw = draw(st.sampled_from(TREE_OPS))(draw, raw)
    return dump(raw)


TOKENS = [
    b"\t", b"[", b"]", b"{", b"}", b": ", b":", b"- ", b",", b"&a ", b"*a", b"*undefined ", b"? ", b"|", b">", b"'",
    b'"', b"#", b"%YAML 1.1\n", b"%TAG ! tag:x\n", b"---\n", b"...\n", b"<<: *a\n", b"<<: 5\n", b"!custom ",
    b"!!python/object/apply:os.system ['true'] ", b"!!int abc", b"!!float x", b"!!binary @@@", b"!!bool maybe",
    b"!!timestamp 2020-13-45", b"!!set {a, b}", b"!!omap [1]", b"2026-02-30", b"2026-13-01 25:61:61", b"0x" + b"f" * 5000,
    b"9" * 5000, b"-0b" + b"1" * 20_000, b"1.0e+999", b".nan", b"-.inf", b'"\\ud800"', b'"\\x00"', b'"\\U0010ffff"',
    b"\x00", b"\x01", b"\x1b", b"\x7f", b"\x85", b"\xff\xfe", b"\xc3", b"\xe2\x80", b"\xef\xbb\xbf", b"\r", b"\r\n",
    "\u2028".encode(), "한국어: 값\n".encode(), "🚀".encode(), "\ufeff".encode(), b"\n" * 3, b" " * 7,
]
VALUE_TOKENS = [  # scalars in a value position: they reach the YAML constructor and then validation
    b"2026-02-30", b"2026-13-01", b"2026-01-01 25:61:61", b"!!int abc", b"!!float x", b"!!bool maybe", b"!!binary @@@",
    b"!!timestamp x", b"!!python/name:os.system", b"!!set {a, b}", b"!!omap [1]", b"!!map [1]", b"!!str", b"!!null x",
    b"0x" + b"f" * 5000, b"9" * 5000, b"-0b" + b"1" * 20_000, b"0o" + b"7" * 6000, b"1" * 4300, b"1.0e+999", b".nan",
    b"-.inf", b"1_000_000", b"0b102", b"[" * 5000, b"{a: " * 1000, b"&a [*a]", b"*undefined", b"&x", b"[a, &b c, *b]",
    b'"\\ud800"', b'"\\x00"', b'"\\U0010ffff"', b"\x00", b"\x1b", b"\xff", b"~", b"", b"'", b'"', b"|", b">-",
    "한국어 🚀".encode(), b"x" * 100_000, b"[" + b"1, " * 3000 + b"1]", b"{" + b", ".join(b"k%d: 1" % i for i in range(500)) + b"}",
]
WHOLE = [
    b"", b"\n", b"---\n", b"...\n", b"~\n", b"null\n", b"42\n", b"3.5\n", b"true\n", b"just a string\n", b"- a\n- b\n",
    b"[1, 2]\n", b"!!binary aGk=\n", b"a: 1\n---\nb: 2\n", b"\xef\xbb\xbfname: x\n", "name: 스펙\n".encode("utf-16"),
    "name: 한국어\n".encode("euc-kr"), b"&x [*x]\n", b"&x {a: *x}\n", b"name: &n [*n]\nstages: *n\n",
]


def alias_bomb(levels: int, fanout: int, where: str) -> bytes:
    lines = [f"b0: &b0 [{', '.join(['lol'] * fanout)}]"]
    for i in range(1, levels + 1):
        lines.append(f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * fanout)}]")
    lines.append(f"{where}*b{levels}")
    return ("\n".join(lines) + "\n").encode()


@st.composite
def mutated_texts(draw, sources: dict[str, bytes]) -> bytes:
    data = sources[draw(st.sampled_from(sorted(sources)))]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "insert", "value", "value", "delete", "line", "whole", "deep", "bomb",
                                   "tab"]))
        pos = draw(st.integers(0, len(data)))
        if op == "truncate":
            data = data[:pos]
        elif op == "insert":
            data = data[:pos] + draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=8)) + data[pos:]
        elif op == "value":
            lines = data.split(b"\n")
            keyed = [i for i, line in enumerate(lines) if b": " in line and not line.lstrip().startswith(b"#")]
            if keyed:
                i = draw(st.sampled_from(keyed))
                lines[i] = lines[i].split(b": ", 1)[0] + b": " + draw(st.sampled_from(VALUE_TOKENS))
                data = b"\n".join(lines)
        elif op == "delete":
            data = data[:pos] + data[pos + draw(st.integers(1, 40)):]
        elif op == "line":
            lines = data.split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            if draw(st.booleans()):
                lines.insert(i, lines[i])  # duplicate keys
            else:
                del lines[i]
            data = b"\n".join(lines)
        elif op == "whole":
            data = draw(st.sampled_from(WHOLE))
        elif op == "deep":
            k = draw(st.sampled_from([2, 99, 100, 101, 150, 1_000, 5_000]))
            opener, closer = draw(st.sampled_from([(b"[", b"]"), (b"{a: ", b"}"), (b"- ", b"")]))
            body = opener * k + (closer * k if draw(st.booleans()) else b"")
            data = data + b"\nzz_deep: " + body + b"\n" if opener != b"- " else data + b"\nzz: \n" + b"".join(
                b"  " * j + b"- \n" for j in range(min(k, 400)))
        elif op == "bomb":
            data = alias_bomb(draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.sampled_from(
                ["name: ", "description: ", "stages: ", "zz: ", "runtime_env: {x: ", "sweep: {grid: {train.lr: "])))
            data = data.rstrip(b"\n") + b"}" * data.count(b"{") + b"\n"
        else:
            lines = data.split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = lines[i].replace(b"  ", b"\t", 1)
            data = b"\n".join(lines)
    return data


# ------------------------------------------------------------------------------------------ property tests


@fuzz(300)
@given(text=mutated_trees(SPEC_RAWS))
def test_fuzz_spec_structure(fuzz_dir: Path, text: str) -> None:
    path = write(fuzz_dir / "spec.yaml", text)
    outcome(lambda: load_job_spec(path), path)


@fuzz(300)
@given(data=mutated_texts(SPEC_TEXTS))
def test_fuzz_spec_raw_text(fuzz_dir: Path, data: bytes) -> None:
    path = write(fuzz_dir / "spec.yaml", data)
    msg = outcome(lambda: load_job_spec(path), path)
    if data.strip() and b"\n" not in data.strip() and msg is not None:
        assert "expected a mapping" in msg or "not valid YAML" in msg or "not UTF-8" in msg or "problem" in msg


@fuzz(200)
@given(content=mutated_trees(PROFILE_RAWS) | mutated_texts(PROFILE_TEXTS))
def test_fuzz_cluster_profiles(fuzz_dir: Path, content: str | bytes) -> None:
    path = write(fuzz_dir / "cluster_configs" / "prof.yaml", content)
    outcome(lambda: load_cluster_profile(path), path)


override_values = st.one_of(
    st.sampled_from([
        "abc", "", "[abc", "{a: ", "]", ": :", "- a\n- b", "!!int x", "!!float y", "2026-02-30", "*nope", "&a [*a]",
        "\t", "\x00", "\x1b", "1e999", ".nan", "0x" + "f" * 5000, "9" * 5000, "[" * 3000, "{a: " * 3000, "null",
        "[1, [2, [3]]]", "'unterminated", '"\\ud800"', "한국어", "🚀", "x" * 100_000, "a=b=c", "%YAML",
    ]),
    st.text(max_size=15),
    values.map(lambda v: yaml.safe_dump(v, allow_unicode=True, default_flow_style=True).strip()),
)


@st.composite
def override_items(draw, raw: dict[str, Any]) -> str:
    kind = draw(st.sampled_from(["real", "real", "extend", "index", "literal", "text"]))
    if kind == "literal":
        return draw(st.sampled_from([
            "stages[99].x=1", "a..b=2", "=3", "stages[0].train.lr=abc", ".a=1", "a.=1", "a[=1", "a]=1", "a[x]=1",
            "stages[0]].x=1", "stages[-1].x=1", "stages[0][0]=1", "stages[" + "9" * 5000 + "].x=1", "name", "",
            "tracking[0]=1", "stages.zz.train.lr=1", "name.x.y=1", "한국어=1", "🚀=1", "a" + ".a" * 500 + "=1",
            "stages[0].train=[", "description=\x00", "stages[0].name=x\ny", "sweep.grid.train.lr=" + "[" * 200,
        ]))
    if kind == "text":
        return draw(st.text(max_size=30))
    paths = [p for p in all_paths(raw) if p]
    path = list(draw(st.sampled_from(paths)))
    if kind == "extend":
        path.append(draw(st.sampled_from(["zz", "한국어", "x" * 300, "kind", "name"])))
    if kind == "index":
        path.append(draw(st.sampled_from([0, 1, 99, 10**12])))
    key = ""
    for p in path:
        key += f"[{p}]" if isinstance(p, int) else ("." if key else "") + str(p)
    return f"{key}={draw(override_values)}"


@st.composite
def spec_with_overrides(draw) -> tuple[str, list[str]]:
    name = draw(st.sampled_from(SPEC_FILES))
    return name, draw(st.lists(override_items(SPEC_RAWS[name]), min_size=1, max_size=3))


@fuzz(100)
@given(case=spec_with_overrides())
def test_fuzz_overrides(fuzz_dir: Path, case: tuple[str, list[str]]) -> None:
    name, overrides = case
    path = write(fuzz_dir / name, SPEC_TEXTS[name])
    outcome(lambda: load_job_spec(path, overrides=overrides), path, overrides=True)


@fuzz(100)
@given(name=st.one_of(
    st.text(max_size=20),
    st.sampled_from(["x" * 5000, "~nosuchuser_zz/p.yaml", "~nosuchuser_zz", "a\x00b", "x" * 300 + ".yaml", "/",
                     "../jobs/demo_sllm_tiny", "cluster_configs/local.yaml", "local", "slurm_local", "한국어", ""]),
))
def test_fuzz_find_cluster_profile(name: str) -> None:
    try:
        find_cluster_profile(name)
    except JobSpecError as exc:
        msg = str(exc)
        if not msg.startswith("cluster profile "):
            path = msg.split(": ", 1)[0]
            check_error(msg, Path(path))
        assert len(msg) < 2000, msg[:300]


@st.composite
def single_mutation(draw) -> tuple[bool, str, str]:
    """One targeted mutation of a shipped file and the problem line it must produce."""
    is_spec = draw(st.booleans())
    sources = SPEC_RAWS if is_spec else PROFILE_RAWS
    raw = copy.deepcopy(sources[draw(st.sampled_from(sorted(sources)))])
    how = draw(st.sampled_from(["unknown", "typo", "wrong_type"]))
    paths = all_paths(raw)
    if how == "unknown":
        path = draw(st.sampled_from([p for p in paths if is_model_dict(raw, p)]))
        key = "zz_" + draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8))
        get_at(raw, path)[key] = draw(values)
        expected = f"{dotted((*path, key))}: unknown key"
    elif how == "typo":
        keyed = [p for p in paths if p and isinstance(p[-1], str) and len(p[-1]) >= 5 and is_model_dict(raw, p[:-1])
                 and not (p[-1] == "kind" and len(p) in (1, 3))]
        path = draw(st.sampled_from(keyed))
        parent, key = get_at(raw, path[:-1]), path[-1]
        i = draw(st.integers(0, len(key) - 1))
        typo = key[:i] + key[i + 1:]
        assume(typo not in FIELD_NAMES)
        parent[typo] = parent.pop(key)
        expected = f"{dotted((*path[:-1], typo))}: unknown key; did you mean {key!r}?"
    else:
        leaves = [p for p in paths if p and not isinstance(get_at(raw, p), (dict, list))
                  and not any(isinstance(x, str) and x in ANY_VALUED for x in p)
                  and not (p[-1] == "kind" and len(p) in (1, 3))]
        path = draw(st.sampled_from(leaves))
        set_at(raw, path, {"zz": [1]})
        expected = f"{dotted(path)}: "
    return is_spec, dump(raw), expected


@fuzz(150)
@given(case=single_mutation())
def test_fuzz_single_mutation_names_the_field(fuzz_dir: Path, case: tuple[bool, str, str]) -> None:
    is_spec, text, expected = case
    if is_spec:
        path = write(fuzz_dir / "spec.yaml", text)
        msg = outcome(lambda: load_job_spec(path), path)
    else:
        path = write(fuzz_dir / "cluster_configs" / "prof.yaml", text)
        msg = outcome(lambda: load_cluster_profile(path), path)
    assert msg is not None, f"mutation was accepted: {expected}"
    assert any(line.startswith(f"  {expected}") for line in msg.splitlines()[1:]), (expected, msg)


# ------------------------------------------------------------------------------------------ regressions
# The minimal inputs of what the fuzzing found; before the fix each one escaped as another exception
# (or, for the message-format ones, broke the "one problem, one line, names the field" contract).


def spec_error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(JobSpecError) as info:
        load_job_spec(path, overrides)
    return str(info.value)


def profile_error(path: Path) -> str:
    with pytest.raises(JobSpecError) as info:
        load_cluster_profile(path)
    return str(info.value)


def demo_with(tmp_path: Path, old: str, new: str) -> Path:
    text = SPEC_TEXTS["demo_sllm_tiny.yaml"].decode()
    assert old in text
    return write(tmp_path / "spec.yaml", text.replace(old, new, 1))


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-02-30", "cannot read '2026-02-30' as a date: day is out of range for month"),  # was ValueError
    ("2026-13-01", "cannot read '2026-13-01' as a date: month must be in 1..12"),
    ("!!int abc", "cannot read 'abc' as an integer: invalid literal for int() with base 10: 'abc'"),
    ("!!float abc", "cannot read 'abc' as a number: could not convert string to float: 'abc'"),
    ("!!bool maybe", "cannot read 'maybe' as a boolean"),  # was KeyError
    ("!!timestamp x", "cannot read 'x' as a date"),  # was AttributeError
])
def test_scalar_yaml_cannot_build_is_a_yaml_error_with_line_and_column(tmp_path: Path, value: str, expected: str) -> None:
    path = write(tmp_path / "spec.yaml", f"name: x\ndate: {value}\n")
    assert spec_error(path) == f"{path}: not valid YAML at line 2, column 7: {expected}"


def test_invalid_nightly_date_in_a_spec_names_line_and_column(tmp_path: Path) -> None:
    text = SPEC_TEXTS["nightly_eval.yaml"].decode().replace("    promote: false\n", "    date: 2026-02-30\n")
    path = write(tmp_path / "nightly.yaml", text)
    msg = spec_error(path)
    assert re.fullmatch(rf"{re.escape(str(path))}: not valid YAML at line \d+, column 11: cannot read '2026-02-30' "
                        r"as a date: day is out of range for month", msg)


@pytest.mark.parametrize("number", ["9" * 5000, "0x" + "f" * 5000, "-0b" + "1" * 20_000])
def test_integer_with_too_many_digits(tmp_path: Path, number: str) -> None:
    # decimal: ValueError from int(); hex/binary: built, then ValueError from repr() in the message
    path = demo_with(tmp_path, "lr: 1.0e-2", f"lr: {number}")
    msg = spec_error(path)
    assert msg.startswith(f"{path}: not valid YAML at line 18, column 66: cannot read '")
    assert msg.endswith("as an integer: too many digits")
    assert len(msg) < 300


def test_integer_with_too_many_digits_in_a_profile(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "kind: slurm\nname: x\nnodes: 0x" + "f" * 5000 + "\n")
    assert profile_error(path).startswith(f"{path}: not valid YAML at line 3, column 8: cannot read '0xfff")


@pytest.mark.parametrize("nesting", ["[" * 5000, "[" * 5000 + "]" * 5000, "{a: " * 3000 + "1" + "}" * 3000])
def test_deep_nesting_is_refused_at_its_line_and_column(tmp_path: Path, nesting: str) -> None:
    path = write(tmp_path / "spec.yaml", f"name: x\nstages: {nesting}\n")  # was RecursionError
    msg = spec_error(path)
    assert re.fullmatch(rf"{re.escape(str(path))}: not valid YAML at line 2, column \d+: nested more than 100 "
                        r"levels deep", msg)


def test_nesting_within_the_limit_is_validated_normally(tmp_path: Path) -> None:
    path = write(tmp_path / "spec.yaml", "name: x\nstages: " + "[" * 60 + "]" * 60 + "\n")
    assert problem_lines(spec_error(path)) == ["stages[0]: Input should be a valid dictionary or object to extract "
                                               "fields from"]


def problem_lines(msg: str) -> list[str]:
    return [line[2:] for line in msg.splitlines()[1:]]


@pytest.mark.parametrize(("old", "new", "expected"), [  # all were TypeError: 'int' object is not iterable
    ("stages:\n  - name: text_lora", "stages: 5\nzz:\n  - name: text_lora", "stages: Input should be a valid list (got 5)"),
    ("stages:\n  - name: text_lora", "stages: true\nzz:\n  - name: text_lora",
     "stages: Input should be a valid list (got True)"),
    ("train: [{kind: text_qa, path: ../data/sample/text_qa_train.jsonl}]", "train: 7",
     "stages[0].data.train: Input should be a valid list (got 7)"),
    ("    datasets:\n", "    datasets: 3\n    zz:\n", "stages[4].datasets: Input should be a valid list (got 3)"),
])
def test_wrong_container_type_before_path_resolution(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert expected in problem_lines(spec_error(demo_with(tmp_path, old, new)))


@pytest.mark.parametrize(("old", "new", "expected"), [  # were RuntimeError: Could not determine home directory
    ("../data/sample/text_qa_train.jsonl", "~nosuchuser_sllm/x.jsonl",
     "stages[0].data.train[0].path: cannot expand '~nosuchuser_sllm': no such user (got '~nosuchuser_sllm/x.jsonl')"),
    ("base: tiny:voxtral", "base: ~nosuchuser_sllm/model",
     "model.base: cannot expand '~nosuchuser_sllm': no such user (got '~nosuchuser_sllm/model')"),
    # was ValueError: embedded null byte (a relative path); an absolute one was accepted as is
    ("../data/sample/text_qa_train.jsonl", '"a\\0b"',
     "stages[0].data.train[0].path: not a usable path: contains a NUL character (got 'a\\x00b')"),
    ("../data/sample/text_qa_train.jsonl", '"/abs/a\\0b"',
     "stages[0].data.train[0].path: not a usable path: contains a NUL character (got '/abs/a\\x00b')"),
])
def test_unusable_paths_are_problems_naming_the_field(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert problem_lines(spec_error(demo_with(tmp_path, old, new))) == [expected]


def test_unusable_suite_path_names_the_field(tmp_path: Path) -> None:
    text = SPEC_TEXTS["nightly_eval.yaml"].decode().replace("../eval/suites/medical_speech.yaml", "~nosuchuser_sllm/s")
    msg = spec_error(write(tmp_path / "n.yaml", text))
    assert problem_lines(msg) == ["stages[0].suite: cannot expand '~nosuchuser_sllm': no such user "
                                  "(got '~nosuchuser_sllm/s')"]


@pytest.mark.parametrize(("item", "expected"), [  # were yaml ParserError / ScannerError / ReaderError tracebacks
    ("stages[0].train.lr=[abc", "--set 'stages[0].train.lr=[abc': value is not valid YAML at line 1, column 5: "
     "expected ',' or ']', but got '<stream end>' (while parsing a flow sequence that starts at line 1, column 1)"),
    ("description=\x00", "--set 'description=\\x00': value is not valid YAML at line 1, column 1: character U+0000 "
     "is not allowed in YAML (write it as \\u0000 in a double-quoted string)"),
    ("description=%YAML", "--set 'description=%YAML': value is not valid YAML at line 1, column 6: expected a "
     "digit, but found '\\x00' (while scanning a directive that starts at line 1, column 1)"),
    ("x=2026-02-30", "--set 'x=2026-02-30': value is not valid YAML at line 1, column 1: cannot read '2026-02-30' as "
     "a date: day is out of range for month"),  # was ValueError
])
def test_override_value_that_is_not_yaml(item: str, expected: str) -> None:
    assert spec_error(REPO / "jobs" / "demo_sllm_tiny.yaml", [item]) == expected


def test_override_value_nested_too_deep() -> None:  # was RecursionError
    msg = spec_error(REPO / "jobs" / "demo_sllm_tiny.yaml", ["x=" + "[" * 5000])
    assert msg.startswith("--set 'x=[[[[")
    assert msg.endswith("value is not valid YAML at line 1, column 101: nested more than 100 levels deep")
    assert len(msg) < 300


@pytest.mark.parametrize("item", [  # a 5000-digit index was ValueError; the others were silently reinterpreted
    "a..b=2", "a.=1", "a[x]=1", "stages[0]].train.lr=1", "stages[-1].train.lr=1", "stages[" + "9" * 5000 + "].x=1",
])
def test_override_malformed_key(item: str) -> None:
    msg = spec_error(REPO / "jobs" / "demo_sllm_tiny.yaml", [item])
    assert msg.startswith("--set '")
    assert "malformed key" in msg and "e.g. stages[0].train.lr=2e-4" in msg
    assert len(msg) < 400


def test_override_index_into_a_mapping() -> None:  # created a non-text key (reported as 'tracking[0]')
    assert spec_error(REPO / "jobs" / "demo_sllm_tiny.yaml", ["tracking[0]=1"]) == \
        "--set 'tracking[0]=1': tracking is not a list"


@pytest.mark.parametrize("name", ["x" * 5000, "x" * 300 + ".yaml", "~nosuchuser_sllm/p.yaml", "~nosuchuser_sllm"])
def test_find_cluster_profile_with_unusable_names(tmp_path: Path, monkeypatch, name: str) -> None:
    monkeypatch.chdir(tmp_path)  # were OSError (File name too long) and RuntimeError (no home directory)
    with pytest.raises(JobSpecError) as info:
        find_cluster_profile(name)
    msg = str(info.value)
    assert msg.startswith("cluster profile '") and " not found (looked in " in msg
    assert len(msg) < 1000


def test_spec_path_too_long_is_not_found(tmp_path: Path) -> None:  # was OSError: File name too long
    path = tmp_path / ("x" * 5000 + ".yaml")
    assert spec_error(path) == f"{path}: file not found"


def test_long_chain_of_stages_needs_no_deep_recursion(tmp_path: Path) -> None:
    n = 1200  # each stage starts from the next one: the cycle search went one Python frame per stage
    stages = [{"name": f"s{i}", "kind": "text_sft", "data": {"train": [{"kind": "text_qa", "path": "/d.jsonl"}]},
               "train": {"max_steps": 2}, "lora": {"r": 4}, **({"from_stage": f"s{i + 1}"} if i < n - 1 else {})}
              for i in range(n)]
    raw = {"name": "chain", "model": {"base": "tiny:voxtral"}, "stages": stages}
    assert len(load_job_spec(write(tmp_path / "chain.yaml", dump(raw))).stages) == n  # was RecursionError
    stages[-1]["from_stage"] = "s0"
    (line,) = problem_lines(spec_error(write(tmp_path / "cycle.yaml", dump(raw))))
    assert line.startswith("stages: dependency cycle: s0 needs s1 needs s2 needs ")
    assert line.endswith("…")  # a 1,200-stage cycle is clipped, not printed in full


@pytest.mark.parametrize(("key", "shown"), [("a\\nb", "'a\\nb'"), (" ", "' '"), ("", "''"), ("\\t", "'\\t'")])
def test_odd_keys_keep_one_problem_per_line(tmp_path: Path, key: str, shown: str) -> None:
    path = demo_with(tmp_path, "kind: merge", f'kind: merge\n    "{key}": 1')  # a newline split the problem line
    assert problem_lines(spec_error(path)) == [f"stages[3].{shown}: unknown key; allowed keys: name, from_stage, "
                                               "depends_on, kind, dtype, register_as"]


def test_unprintable_key_is_escaped_so_the_message_can_be_printed(tmp_path: Path) -> None:
    path = demo_with(tmp_path, "  experiment: sllm-demo", '  experiment: sllm-demo\n  "\\U0010ffff\\x1b": 1')
    msg = spec_error(path)
    assert problem_lines(msg) == ["tracking.'\\U0010ffff\\x1b': unknown key; allowed keys: uri, experiment, strict, "
                                  + ", ".join(list(TrackingSpec.model_fields)[3:])]
    msg.encode("utf-8")  # no lone surrogate or raw control character reaches the terminal


def test_unknown_stage_kind_with_a_newline_stays_on_one_line(tmp_path: Path) -> None:
    (line,) = problem_lines(spec_error(demo_with(tmp_path, "kind: merge", 'kind: "me\\nrge"')))
    assert line.startswith("stages[3].kind: unknown kind 'me\\nrge'; did you mean 'merge'? (one of: text_sft, ")


def test_huge_bad_value_is_clipped_with_its_length(tmp_path: Path) -> None:
    (line,) = problem_lines(spec_error(demo_with(tmp_path, "lr: 1.0e-2", "lr: " + "x" * 100_000)))
    assert line.startswith("stages[0].train.lr: Input should be a valid number, unable to parse string as a number "
                           "(got 'xxxxx")
    assert line.endswith("… (100,000 characters))")
    assert len(line) < 250


def test_huge_numbers_are_validated_and_shown(tmp_path: Path) -> None:
    path = demo_with(tmp_path, "lora: {r: 16,", "lora: {r: 1000000000000000000000000000000,")
    assert problem_lines(spec_error(path)) == ["stages[0].lora.r: Input should be less than or equal to 1024 "
                                               "(got 1000000000000000000000000000000)"]


@pytest.mark.parametrize(("key", "shown"), [("1", "1"), ("null", "None"), ("2024-01-01", "datetime.date(2024, 1, 1)"),
                                            ("true", "True")])
def test_non_text_keys_are_named(tmp_path: Path, key: str, shown: str) -> None:
    path = write(tmp_path / "spec.yaml", f"{key}: x\nname: x\nstages: [{{name: m, kind: merge, from_stage: m}}]\n")
    assert f"<root>: key {shown} is not text; quote it" in problem_lines(spec_error(path))  # was '[1]: Keys should…'


def test_control_character_gets_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "spec.yaml", "name: x\ndescription: a\x01b\n")  # was a two-line message, no line
    assert spec_error(path) == (f"{path}: not valid YAML at line 2, column 15: character U+0001 is not allowed in "
                                "YAML (write it as \\u0001 in a double-quoted string)")


def test_non_utf8_file_gets_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "spec.yaml", b"name: x\ndescription: caf\xe9\n")  # Latin-1
    assert spec_error(path) == f"{path}: not UTF-8 text at line 2, column 17 (byte 0xe9); save the file as UTF-8"


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    # 9**8 = 43 million values from a 700-byte file: loaded as a profile before (runtime_env takes any value),
    # to explode in whatever serialized the profile later
    path = write(tmp_path / "p.yaml", b"kind: ray\nname: r\n" + alias_bomb(8, 9, "runtime_env: {x: ").rstrip() + b"}\n")
    assert profile_error(path) == f"{path}: too large: YAML aliases expand to more than 1,000,000 values"


def test_shared_anchors_still_load(tmp_path: Path) -> None:
    text = SPEC_TEXTS["demo_sllm_tiny.yaml"].decode()
    text = text.replace("lora: {r: 16, alpha: 32, dropout: 0.0,", "lora: &lora {r: 16, alpha: 32, dropout: 0.0,", 1)
    text = text.replace("    lora: {r: 16, alpha: 32, dropout: 0.0, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, "
                        "up_proj, down_proj]}\n    trainable: [projector, lora]", "    lora: *lora\n"
                        "    trainable: [projector, lora]")
    assert "*lora" in text
    spec = load_job_spec(write(tmp_path / "spec.yaml", text))
    assert spec.stages[2].lora == spec.stages[0].lora


@pytest.mark.parametrize(("text", "line", "column"), [
    ("kind: ray\nname: r\nruntime_env: &e {x: *e}\n", 3, 21),  # was accepted: a dict that contains itself
    ("kind: slurm\nname: r\nsetup: &s [a, *s]\n", 3, 15),
])
def test_alias_inside_its_own_anchor(tmp_path: Path, text: str, line: int, column: int) -> None:
    path = write(tmp_path / "p.yaml", text)
    anchor = text.split("&")[1][0]
    assert profile_error(path) == (f"{path}: not valid YAML at line {line}, column {column}: alias *{anchor} is "
                                   f"inside its own anchor &{anchor} (a value cannot contain itself)")


def test_truncated_yaml_names_line_and_column(tmp_path: Path) -> None:
    data = SPEC_TEXTS["demo_sllm_tiny.yaml"]
    cut = data.index(b"lora: {r: 16") + 12  # inside a flow mapping
    msg = spec_error(write(tmp_path / "spec.yaml", data[:cut]))
    assert msg == (f"{tmp_path / 'spec.yaml'}: not valid YAML at line 20, column 17: expected ',' or '}}', but got "
                   "'<stream end>' (while parsing a flow mapping that starts at line 20, column 11)")
    msg = spec_error(write(tmp_path / "spec.yaml", data[:cut - 2]))
    assert msg == (f"{tmp_path / 'spec.yaml'}: not valid YAML at line 20, column 15: expected the node content, but "
                   "found '<stream end>'")
