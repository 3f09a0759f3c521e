"""The process-side setup a DeepSpeed stage needs, and gathering ZeRO-3-partitioned weights for saving."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sllm_lib.ports import free_port

log = logging.getLogger(__name__)


def torch_extensions_dir() -> Path:
    """Where DeepSpeed's JIT-built ops (CPU Adam, fused Adam) are kept between runs: $TORCH_EXTENSIONS_DIR,
    default $SLLM_HOME/torch_extensions (the first build takes about a minute per op)."""
    from sllm_lib.files import sllm_home

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or sllm_home() / "torch_extensions")


def prepare_deepspeed_process(*, cuda: bool) -> bool:
    """Set up this process for a DeepSpeed stage; True when TrainingArguments must use the state made here.

    DeepSpeed always needs torch.distributed: a single process (no launcher) gets a world of one on a free
    127.0.0.1 port. On a machine without an accelerator, accelerate (1.15) picks no backend when LOCAL_RANK is set,
    then records num_processes=1 on every rank and the Trainer's "auto" batch size disagrees with DeepSpeed's world
    size (`train_batch_size ... 4 != 4 * 1 * 2`); so on CPU the shared accelerate state is made here with gloo.
    """
    if "LOCAL_RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(torch_extensions_dir()))
    if cuda:
        return False
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed's own detection warns at length otherwise
    from accelerate.state import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    state = PartialState(cpu=False, backend="gloo")
    if state.num_processes != int(os.environ["WORLD_SIZE"]):
        raise RuntimeError(f"accelerate set up {state.num_processes} processes, expected WORLD_SIZE="
                           f"{os.environ['WORLD_SIZE']} (rank {os.environ.get('RANK')})")
    return True


def _zero3_params(model: Any) -> list[Any]:
    return [p for p in model.parameters() if p.requires_grad and hasattr(p, "ds_id")]


def trainable_digest(model: Any) -> str:
    """sha256 over the names, shapes and bytes of the trainable tensors (to compare ranks)."""
    import torch

    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            t = p.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}:{tuple(p.shape)}:{t.dtype}".encode())
            if t.numel():
                h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def gathered_trainable(model: Any, *, check_ranks: bool = True) -> Iterator[list[str]]:
    """Inside, every trainable parameter holds its full tensor on every rank (ZeRO-3 partitions gathered; a no-op
    otherwise). Every rank must enter (a collective). With `check_ranks`, the ranks' trainable tensors are compared
    by digest and a mismatch fails the stage: a saved adapter must be the one every rank trained. Yields the
    digests, one per rank (empty for a single process or without the check)."""
    import torch.distributed as dist

    params = _zero3_params(model)
    if params:
        import deepspeed

        gather: Any = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    else:
        gather = contextlib.nullcontext()
    digests: list[Any] = []
    with gather:
        if check_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            mine = trainable_digest(model)
            digests = [None] * dist.get_world_size()
            dist.all_gather_object(digests, mine)
            if len(set(digests)) != 1:
                raise RuntimeError("the ranks' trained weights differ after training (digests "
                                   + ", ".join(f"rank {i}: {d[:12]}" for i, d in enumerate(digests))
                                   + "); refusing to publish")
            log.info("trainable weights identical on all %d ranks (sha256 %s)", len(digests), mine[:12])
        yield digests
