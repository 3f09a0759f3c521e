"""Tests for sllm_lib.data.sampler (length-grouped batching)."""

from __future__ import annotations

import numpy as np
import pytest

from sllm_lib.data.sampler import (
    LengthGroupedSampler,
    length_grouped_batches,
    padding_share,
    random_batches,
)


def skewed_lengths(n: int = 2000, seed: int = 1) -> list[int]:
    """Mostly short sequences with a long tail (like real instruction data)."""
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.lognormal(mean=4.0, sigma=1.0, size=n), 4, 4096)]


def flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


@pytest.mark.parametrize(("n", "batch_size", "mult"), [(0, 4, 50), (1, 4, 50), (103, 8, 3), (1000, 16, 50), (64, 64, 1)])
def test_every_index_exactly_once(n: int, batch_size: int, mult: int) -> None:
    lengths = skewed_lengths(n) if n else []
    batches = length_grouped_batches(lengths, batch_size, seed=3, mega_batch_mult=mult)
    assert sorted(flat(batches)) == list(range(n))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert all(len(b) == batch_size for b in batches[:-1])  # only the last can be short


def test_drop_last_drops_only_the_incomplete_batch() -> None:
    lengths = skewed_lengths(103)
    batches = length_grouped_batches(lengths, 8, seed=0, mega_batch_mult=3, drop_last=True)
    assert len(batches) == 12 and all(len(b) == 8 for b in batches)
    assert len(set(flat(batches))) == 96
    plain = random_batches(lengths, 8, seed=0, drop_last=True)
    assert len(plain) == 12 and all(len(b) == 8 for b in plain)


def test_deterministic_by_seed() -> None:
    lengths = skewed_lengths(500)
    a = length_grouped_batches(lengths, 8, seed=7)
    assert a == length_grouped_batches(lengths, 8, seed=7)
    assert a != length_grouped_batches(lengths, 8, seed=8)
    assert random_batches(lengths, 8, seed=7) == random_batches(lengths, 8, seed=7)
    assert random_batches(lengths, 8, seed=7) != random_batches(lengths, 8, seed=8)


def test_batches_are_sorted_longest_first() -> None:
    lengths = skewed_lengths(400)
    for batch in length_grouped_batches(lengths, 16, seed=0):
        batch_lengths = [lengths[i] for i in batch]
        assert batch_lengths == sorted(batch_lengths, reverse=True)


def test_length_grouping_cuts_padding_on_skewed_lengths() -> None:
    lengths = skewed_lengths(4000)
    grouped = padding_share(lengths, length_grouped_batches(lengths, 16, seed=0))
    baseline = padding_share(lengths, random_batches(lengths, 16, seed=0))
    assert baseline > 0.5  # sanity: random batching of a long tail wastes a lot
    assert grouped < baseline / 2
    # Larger megabatches group more tightly (less padding, less randomness).
    wider = padding_share(lengths, length_grouped_batches(lengths, 16, seed=0, mega_batch_mult=250))
    assert wider < grouped
    # mega_batch_mult=1 sorts only within a batch: no better than random.
    assert padding_share(lengths, length_grouped_batches(lengths, 16, seed=0, mega_batch_mult=1)) > grouped


def test_padding_share_hand_computed() -> None:
    lengths = [10, 2, 5, 5, 1]
    # batch [0, 1]: max 10 * 2 = 20 slots, 12 real; batch [2, 3, 4]: max 5 * 3 = 15 slots, 11 real
    # padded = (20 - 12) + (15 - 11) = 12 of 35
    assert padding_share(lengths, [[0, 1], [2, 3, 4]]) == pytest.approx(12 / 35)
    assert padding_share(lengths, [[2, 3]]) == 0.0
    assert padding_share([], []) == 0.0


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        length_grouped_batches([1, 2], 0)
    with pytest.raises(ValueError, match="mega_batch_mult"):
        length_grouped_batches([1, 2], 2, mega_batch_mult=0)
    with pytest.raises(ValueError, match="lengths"):
        length_grouped_batches([1, -2], 2)


def test_sampler_yields_every_index_and_reshuffles_per_epoch() -> None:
    lengths = skewed_lengths(300)
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=5)
    epoch0 = list(sampler)
    assert len(sampler) == 300
    assert sorted(epoch0) == list(range(300))
    assert list(sampler) == epoch0  # same epoch, same order
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(epoch1) == list(range(300)) and epoch1 != epoch0
    assert epoch1 == flat(length_grouped_batches(lengths, 8, seed=6))


def test_sampler_chunks_back_into_length_grouped_batches() -> None:
    """A DataLoader cuts the flat index stream every batch_size indices."""
    lengths = skewed_lengths(203)
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=0)
    indices = list(sampler)
    rechunked = [indices[i : i + 8] for i in range(0, len(indices), 8)]
    assert rechunked == sampler.batches()


def test_sampler_len_with_drop_last() -> None:
    sampler = LengthGroupedSampler(list(range(1, 21)), batch_size=6, seed=0, drop_last=True)
    assert len(sampler) == 18
    assert len(list(sampler)) == 18
