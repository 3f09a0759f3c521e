"""Length-grouped batching: batches of similar-length examples carry little padding.

The scheme follows the "megabatch" idea used by Hugging Face's ``LengthGroupedSampler``:
shuffle all indices, cut them into megabatches of ``batch_size * mega_batch_mult``,
sort each megabatch by length (longest first), cut it into batches and shuffle the
batch order. Randomness stays high (which examples share a megabatch changes every
epoch) while padding drops sharply.

Everything here is torch-free; :class:`LengthGroupedSampler` has the ``__iter__`` /
``__len__`` / ``set_epoch`` protocol that ``torch.utils.data.DataLoader`` expects from a
sampler, so it can be passed as ``sampler=`` without importing torch in this module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)


def length_grouped_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int = 0,
    mega_batch_mult: int = 50,
    drop_last: bool = False,
) -> list[list[int]]:
    """Group indices into batches of similar length.

    Every index appears exactly once, except that ``drop_last=True`` drops the one
    incomplete batch (if any). The full batches come in a seeded random order; an
    incomplete batch is always placed last, so flattening the batches and re-cutting
    them every ``batch_size`` indices (as a ``DataLoader`` does) reproduces them exactly.

    Args:
        lengths: Length (e.g. token count) of each example; index ``i`` is example ``i``.
        batch_size: Examples per batch (>= 1).
        seed: Seed of the numpy ``Generator`` that drives both shuffles.
        mega_batch_mult: Megabatch size as a multiple of ``batch_size`` (>= 1). Larger
            means less padding but less randomness.
        drop_last: Drop the final incomplete batch.

    Returns:
        The batches, each a list of indices sorted by length, longest first.

    Raises:
        ValueError: ``batch_size`` or ``mega_batch_mult`` is below 1.
    """
    _check_positive(batch_size=batch_size, mega_batch_mult=mega_batch_mult)
    lens = _as_lengths(lengths)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lens))
    mega_size = batch_size * mega_batch_mult
    batches: list[list[int]] = []
    for start in range(0, len(order), mega_size):
        mega = order[start : start + mega_size]
        mega = mega[np.argsort(-lens[mega], kind="stable")]
        batches.extend(_cut(mega, batch_size))
    return _shuffle_full_batches(batches, batch_size, rng, drop_last=drop_last)


def random_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int = 0,
    drop_last: bool = False,
) -> list[list[int]]:
    """Cut a seeded random permutation into batches (the no-grouping baseline).

    Args:
        lengths: Length of each example (only its size is used).
        batch_size: Examples per batch (>= 1).
        seed: Seed of the numpy ``Generator``.
        drop_last: Drop the final incomplete batch.

    Returns:
        The batches of indices; an incomplete batch, if kept, is last.

    Raises:
        ValueError: ``batch_size`` is below 1.
    """
    _check_positive(batch_size=batch_size)
    order = np.random.default_rng(seed).permutation(len(lengths))
    batches = _cut(order, batch_size)
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def padding_share(lengths: Sequence[int], batches: list[list[int]]) -> float:
    """Share of padding tokens when each batch is padded to its longest example.

    Args:
        lengths: Length of each example.
        batches: Batches of indices into ``lengths``.

    Returns:
        ``padded / total`` where ``total = sum(max length in batch * batch size)`` and
        ``padded = total - sum of real lengths``; 0.0 when ``total`` is 0.
    """
    total = 0
    real = 0
    for batch in batches:
        if not batch:
            continue
        batch_lengths = [int(lengths[i]) for i in batch]
        total += max(batch_lengths) * len(batch_lengths)
        real += sum(batch_lengths)
    return 0.0 if total == 0 else (total - real) / total


class LengthGroupedSampler:
    """Torch-free sampler yielding indices in length-grouped batch order.

    Use it as ``DataLoader(dataset, batch_size=batch_size, sampler=sampler)`` with the
    same ``batch_size``: consecutive runs of ``batch_size`` indices are the groups built
    by :func:`length_grouped_batches`. Call :meth:`set_epoch` each epoch to reshuffle.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        *,
        mega_batch_mult: int = 50,
        drop_last: bool = False,
    ) -> None:
        """Create the sampler.

        Args:
            lengths: Length of each example in the dataset.
            batch_size: The DataLoader's batch size.
            seed: Base seed; the effective seed is ``seed + epoch``.
            mega_batch_mult: See :func:`length_grouped_batches`.
            drop_last: Drop the final incomplete batch.
        """
        _check_positive(batch_size=batch_size, mega_batch_mult=mega_batch_mult)
        self.lengths = [int(n) for n in lengths]
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; each epoch gives a different (deterministic) order.

        Args:
            epoch: Epoch number, usually starting at 0.
        """
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """Return this epoch's batches.

        Returns:
            The batches of indices for the current epoch.
        """
        return length_grouped_batches(
            self.lengths,
            self.batch_size,
            seed=self.seed + self.epoch,
            mega_batch_mult=self.mega_batch_mult,
            drop_last=self.drop_last,
        )

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        n = len(self.lengths)
        return n - n % self.batch_size if self.drop_last else n


# --------------------------------------------------------------------------- helpers


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1 (got {value})")


def _as_lengths(lengths: Sequence[int]) -> np.ndarray:
    lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if lens.size and lens.min() < 0:
        raise ValueError(f"lengths must be >= 0 (got {int(lens.min())})")
    return lens


def _cut(order: np.ndarray, batch_size: int) -> list[list[int]]:
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def _shuffle_full_batches(
    batches: list[list[int]], batch_size: int, rng: np.random.Generator, *, drop_last: bool
) -> list[list[int]]:
    """Shuffle the full batches; keep (or drop) the single incomplete one at the end."""
    tail: list[list[int]] = []
    if batches and len(batches[-1]) < batch_size:
        last = batches.pop()
        tail = [] if drop_last else [last]
    shuffled = [batches[i] for i in rng.permutation(len(batches))]
    return shuffled + tail
