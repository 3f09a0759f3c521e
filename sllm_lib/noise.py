"""Library noise, filtered at the source and in one place.

`quiet_libraries()` is called first thing by the CLI's and the stage worker's logging set-up. It drops only the
messages listed here, each by its logger or warning category and its text, with the reason it is safe to drop;
anything else the same libraries say (their real errors and other warnings) still reaches the user. A new
message belongs here, with its reason, not in a filter next to the code that triggers it.

It imports nothing heavy: `sllm --help` and `sllm validate` stay free of torch.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class LogNoise:
    logger: str  # the exact logger that emits it (a logger's filters see only its own records, not its children's)
    message: str  # regex, searched in the formatted message
    why: str


@dataclass(frozen=True)
class WarningNoise:
    category: type[Warning]
    message: str  # regex, matched at the start of the warning text (as `warnings.filterwarnings` does)
    why: str


LOG_NOISE: tuple[LogNoise, ...] = (
    LogNoise("bitsandbytes.backends.cpu.ops", r"^Failed to load CPU gemm_4bit_forward from kernels-community",
             "bitsandbytes 0.50 tries the optional hub kernel package `kernels` on CPUs with AVX512-BF16 and falls "
             "back to its own CPU 4-bit path, which is the one sllm uses and tests"),
)

WARNING_NOISE: tuple[WarningNoise, ...] = (
    WarningNoise(UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor "
                              r"creation functions",
                 "torch 2.13 deprecates eager quantized tensors in favour of torchao (not a dependency); the quantize "
                 "stage's dynamic int8 models are built with them and load back exactly (tested)"),
    WarningNoise(DeprecationWarning, r"torch\.ao\.quantization is deprecated",
                 "the same deprecation, from torch.ao.quantization.quantize_dynamic"),
    WarningNoise(DeprecationWarning, r"`torch\.jit\.script_method` is deprecated",
                 "torch's own quantized modules use script_method; nothing of sllm's is scripted"),
    WarningNoise(UserWarning, r"TypedStorage is deprecated",
                 "raised inside torch.save of quantized packed params, not by sllm's code"),
    WarningNoise(FutureWarning, r".*is_gradient_checkpointing",
                 "PEFT 0.21 still calls transformers' deprecated `is_gradient_checkpointing` (once per model)"),
    WarningNoise(FutureWarning, r".*torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor).* is deprecated",
                 "DeepSpeed 0.19 still calls them: one warning per step and rank otherwise"),
)

# third-party loggers whose INFO lines are not the user's business (their warnings and errors still show)
LOGGER_LEVELS: dict[str, int] = {name: logging.WARNING for name in ("alembic", "mlflow", "urllib3", "httpx",
                                                                     "filelock")}


class _DropListed(logging.Filter):
    """Drops the records of one logger whose message matches one of its listed patterns."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):  # a malformed record is not noise we know: let logging report it
            return True
        return not any(p.search(text) for p in self.patterns)


def quiet_libraries() -> None:
    """Install the warning filters and logger filters and levels above (idempotent: repeated calls add nothing)."""
    for w in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=w.message, category=w.category)  # an identical filter is replaced
    by_logger: dict[str, list[str]] = {}
    for n in LOG_NOISE:
        by_logger.setdefault(n.logger, []).append(n.message)
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, _DropListed)]:
            logger.removeFilter(f)
        logger.addFilter(_DropListed(patterns))
    for name, level in LOGGER_LEVELS.items():
        logging.getLogger(name).setLevel(level)
