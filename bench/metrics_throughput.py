"""Throughput of the Korean text metrics on synthetic (reference, hypothesis) pairs.

Generates N Korean medical-style sentence pairs deterministically (a small vocabulary of
clinical nouns, particles and predicates; each hypothesis is its reference with random word
substitutions, deletions, insertions, character typos and spacing changes), then times each
metric on them in one process and prints pairs/s. Each metric is warmed up on a few pairs
first (imports, Kiwi model load), so the figures are steady-state.

    python bench/metrics_throughput.py [--n 100000] [--morph-n N] [--seed 0]

Morpheme ROUGE-L (Kiwi analysis of every text, then a pure-Python LCS) is the slowest metric
(about 100 s for 100k pairs on one core); --morph-n times it on the first N pairs only. The
table shows the pair count each metric ran on.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

SUBJECTS = ["환자는", "보호자는", "아이는", "어머니는", "산모는", "노인은", "남편은", "학생은"]
NOUNS = [
    "두통", "발열", "기침", "가래", "복통", "설사", "구토", "어지럼증", "흉통", "호흡곤란",
    "혈압", "혈당", "체온", "맥박", "산소포화도", "불면증", "우울감", "불안감", "피로감", "부종",
    "관절통", "요통", "발진", "가려움", "소화불량", "식욕부진", "체중감소", "두근거림", "오한", "근육통",
]  # fmt: skip
# (after a final consonant, after a vowel)
PARTICLES = [("이", "가"), ("을", "를"), ("과", "와"), ("은", "는"), ("으로", "로"), ("도", "도")]
ADVERBS = ["어제부터", "사흘째", "오늘 아침", "밤마다", "갑자기", "조금씩", "계속", "자주", "가끔", "심하게"]
PREDICATES = [
    "있습니다", "심합니다", "호소합니다", "나아졌습니다", "악화되었습니다", "지속됩니다",
    "측정되었습니다", "정상입니다", "높습니다", "낮습니다", "없습니다", "반복됩니다",
]  # fmt: skip
NUMBERS = ["38.5도", "37.2도", "120/80", "95%", "110회", "140mg/dL", "2주", "3일"]
TYPO_CHARS = "가나다라마바사아자차카타파하혈압체온두통발열기침"


def _with_particle(noun: str, rng: random.Random) -> str:
    after_consonant, after_vowel = rng.choice(PARTICLES)
    has_final = (ord(noun[-1]) - 0xAC00) % 28 != 0  # Hangul syllable with a final consonant (받침)
    return noun + (after_consonant if has_final else after_vowel)


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(SUBJECTS)]
    for _ in range(rng.randint(2, 5)):
        words.append(_with_particle(rng.choice(NOUNS), rng))
        if rng.random() < 0.3:
            words.append(rng.choice(ADVERBS))
        if rng.random() < 0.15:
            words.append(rng.choice(NUMBERS))
    words.append(rng.choice(PREDICATES))
    return " ".join(words) + rng.choice([".", ".", "", "요."])


def _corrupt(ref: str, rng: random.Random) -> str:
    words = ref.split()
    out: list[str] = []
    for w in words:
        r = rng.random()
        if r < 0.05:
            continue  # deletion
        if r < 0.12:
            w = _with_particle(rng.choice(NOUNS), rng)  # substitution
        elif r < 0.18 and len(w) > 1:
            i = rng.randrange(len(w))
            w = w[:i] + rng.choice(TYPO_CHARS) + w[i + 1 :]  # character typo
        out.append(w)
        if rng.random() < 0.04:
            out.append(rng.choice(ADVERBS))  # insertion
    text = ""
    for i, w in enumerate(out):
        # spacing (띄어쓰기) varies: sometimes words run together
        text += w if i == 0 or rng.random() < 0.15 else " " + w
    return text


def make_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` deterministic (reference, hypothesis) pairs."""
    rng = random.Random(seed)
    refs = [_sentence(rng) for _ in range(n)]
    hyps = [_corrupt(r, rng) for r in refs]
    return refs, hyps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="pairs for every metric (default 100000)")
    parser.add_argument("--morph-n", type=int, default=None, help="pairs for morpheme ROUGE-L (default: --n)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    morph_n = args.n if args.morph_n is None else min(args.morph_n, args.n)

    from rich.console import Console
    from rich.table import Table

    from sllm_lib.metrics.text import bleu, cer, distinct_n, rouge_l, wer

    console = Console()
    t0 = time.perf_counter()
    refs, hyps = make_pairs(args.n, args.seed)
    console.print(f"generated {args.n:,} pairs in {time.perf_counter() - t0:.1f} s (seed {args.seed}); e.g.")
    console.print(f"  ref: {refs[0]}\n  hyp: {hyps[0]}")

    runs: list[tuple[str, int, Callable[[list[str], list[str]], object]]] = [
        ("CER", args.n, lambda r, h: cer(r, h)),
        ("WER", args.n, lambda r, h: wer(r, h)),
        ("ROUGE-L (char)", args.n, lambda r, h: rouge_l(r, h, tokenizer="char")),
        ("ROUGE-L (morph)", morph_n, lambda r, h: rouge_l(r, h, tokenizer="morph")),
        ("BLEU (char)", args.n, lambda r, h: bleu(r, h, tokenize="char")),
        ("Distinct-2 (space)", args.n, lambda r, h: distinct_n(h, n=2)),
    ]
    table = Table(title="Korean metric throughput (one process, steady state)")
    table.add_column("metric")
    table.add_column("pairs", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("pairs/s", justify="right")
    table.add_column("score", justify="right")
    for name, n, fn in runs:
        fn(refs[:100], hyps[:100])  # warm-up: imports, Kiwi model load
        start = time.perf_counter()
        result = fn(refs[:n], hyps[:n])
        seconds = time.perf_counter() - start
        score = getattr(result, "score", float("nan"))
        table.add_row(name, f"{n:,}", f"{seconds:.2f}", f"{n / seconds:,.0f}", f"{score:.4f}")
        console.print(f"  {name}: {n / seconds:,.0f} pairs/s")
    console.print(table)
    if morph_n < args.n:
        console.print(f"ROUGE-L (morph) ran on the first {morph_n:,} pairs only (--morph-n).")


if __name__ == "__main__":
    main()
