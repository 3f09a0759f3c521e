"""`sllm data validate | stats | convert-aihub`: JSONL datasets checked, described and converted."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from launch.cli.common import KindOpt, console, data_app
from sllm_lib.errors import SllmError


@data_app.command("validate")
def data_validate(path: Path, kind: str = KindOpt,
                  labels: Optional[str] = typer.Option(None, help="classification: the label set, comma-separated.")
                  ) -> None:
    """Check every record of a JSONL file; list bad lines (exit 2 if any)."""
    from sllm_lib.data.records import validate_dataset

    label_set = [x.strip() for x in labels.split(",")] if labels else None
    res = validate_dataset(path, kind, labels=label_set)  # type: ignore[arg-type]
    console.print(f"{path}: {len(res.records)} good records, {len(res.skipped)} bad, "
                  f"{res.duplicates_removed} duplicates removed, digest {res.digest()[:12]}")
    if res.skipped:
        raise SllmError("\n".join(str(b) for b in res.skipped[:50]))


@data_app.command("convert-aihub")
def data_convert_aihub(root: Path = typer.Argument(..., help="An AI-Hub TL folder (1.질문 + 2.답변), or a folder of them."),
                       output: Path = typer.Option(..., "-o", "--output", help="The text_qa JSONL to write."),
                       strict: bool = typer.Option(False, "--strict", help="Any unreadable or unmatched file is an error."),
                       report_file: Optional[Path] = typer.Option(None, "--report", help="Also write the report as JSON.")
                       ) -> None:
    """AI-Hub question/answer trees -> {instruction, output} JSONL, with a report of what was skipped."""
    from sllm_lib.data.aihub import convert_aihub
    from sllm_lib.files import write_json_atomic

    rep = convert_aihub(root, output, strict=strict)
    table = Table(title=f"{root} -> {output}")
    for col in ("trees", "questions", "answers", "pairs", "unmatched questions", "unmatched answers", "unreadable"):
        table.add_column(col, justify="right")
    table.add_row(*(str(x) for x in (rep.trees, rep.questions, rep.answers, rep.pairs, len(rep.unmatched_questions),
                                     len(rep.unmatched_answers), len(rep.unreadable))))
    console.print(table)
    for path, why in rep.unreadable[:20]:
        console.print(f"  unreadable {path}: {why}", highlight=False, markup=False)
    for path in rep.unmatched_questions[:20]:
        console.print(f"  no answer for {path}", highlight=False, markup=False)
    for path in rep.unmatched_answers[:20]:
        console.print(f"  no question for {path}", highlight=False, markup=False)
    if rep.problems > 60:
        console.print(f"  ... {rep.problems} problems in all" + (f" (see {report_file})" if report_file else ""))
    if report_file:
        write_json_atomic(report_file, rep.as_dict())


@data_app.command("stats")
def data_stats(path: Path, kind: str = KindOpt,
               model: str = typer.Option("tiny:voxtral", help="Whose tokenizer counts tokens."),
               batch_size: int = typer.Option(8, help="Batch size for the padding-share estimate."),
               labels: Optional[str] = typer.Option(None, help="classification: the label set, comma-separated."),
               trust_remote_code: bool = typer.Option(
                   False, help="Let --model's own tokenizer code run (models such as EXAONE ship one).")
               ) -> None:
    """Token-length percentiles (prompt, target, total) and the padding share with/without length grouping."""
    from sllm_lib.data.records import read_records
    from sllm_lib.data.sampler import length_grouped_batches, padding_share, random_batches
    from sllm_lib.data.stats import dataset_length_stats
    from sllm_lib.models.builders import load_tokenizer_and_features, resolve_model_path
    from sllm_lib.spec import ModelSpec

    label_set = [x.strip() for x in labels.split(",")] if labels else None
    res = read_records(path, kind, on_bad_record="skip", labels=label_set)  # type: ignore[arg-type]
    try:
        tok, extractor = load_tokenizer_and_features(resolve_model_path(ModelSpec(base=model)),
                                                     trust_remote_code=trust_remote_code)
    except SllmError:
        raise
    except Exception as exc:  # transformers' own errors: a missing tokenizer file, remote code not allowed
        hint = "" if trust_remote_code else "; if the model ships its own tokenizer code, add --trust-remote-code"
        raise SllmError(f"--model {model}: its tokenizer could not be loaded ({type(exc).__name__}: "
                        f"{str(exc)[:300]}){hint}") from None
    stats = dataset_length_stats(res, lambda t: len(tok.encode(t, add_special_tokens=False)))
    table = Table(title=f"{path} ({len(res.records)} records, tokens by {model})")
    cols = ["count", "min", "mean", "p50", "p90", "p95", "p99", "max"]
    table.add_column("part")
    for c in cols:
        table.add_column(c, justify="right")
    for part, row in stats.items():
        table.add_row(part, *(f"{row[c]:.0f}" if c != "mean" else f"{row[c]:.1f}" for c in cols))
    console.print(table)
    totals = [int(x) for x in _total_lengths(res, tok, extractor)]
    grouped = padding_share(totals, length_grouped_batches(totals, batch_size, seed=0))
    plain = padding_share(totals, random_batches(totals, batch_size, seed=0))
    console.print(f"padding share at batch size {batch_size}: random {plain:.1%}, length-grouped {grouped:.1%}")


def _total_lengths(res: Any, tok: Any, extractor: Any) -> list[int]:
    """Text tokens plus the audio placeholders the model will see (375 per started 30 s chunk on Voxtral)."""
    import soundfile as sf

    from sllm_lib.audio.features import SAMPLE_RATE, num_chunks, tokens_per_chunk
    from sllm_lib.data.stats import record_text

    out = []
    for r in res.records:
        prompt, target = record_text(r, res.kind)
        n = len(tok.encode(prompt + target, add_special_tokens=False))
        if "audio_path" in r:
            info = sf.info(r["audio_path"])
            n += tokens_per_chunk(extractor) * num_chunks(int(info.duration * SAMPLE_RATE), extractor)
        out.append(n)
    return out
