"""Length-grouped batches, visited in random order, with an order fixed by (seed, epoch).

transformers' LengthGroupedSampler sorts each mega-batch from the longest sample to the
shortest and walks it in that order, so every mega-batch (50 steps by default) starts with
the long samples: the training-loss curve becomes a saw-tooth and the learning-rate schedule
meets long samples first in every cycle. It also draws the order from torch's global random
state, which a resumed run restores only after the skipped batches were drawn, so a run
resumed in its second epoch or later saw another order than an uninterrupted one.

Here the samples are still sorted by length inside a random mega-batch and cut into groups
of one optimizer step's samples, but the groups of the whole epoch are then shuffled, and the
generator is seeded from the data seed and the epoch alone.
"""
from __future__ import annotations

import hashlib
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

# As transformers: a mega-batch is 50 groups, or a quarter of the data if that is less.
MEGA_BATCH_GROUPS = 50


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed that depends on both values (seed + epoch would repeat across seeds)."""
    digest = hashlib.sha256(f"{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def length_grouped_order(lengths: Sequence[int], group_size: int,
                         generator: torch.Generator) -> list[int]:
    """Sample indices: consecutive runs of `group_size` have similar lengths, in random order.

    Every group is full except possibly one, which comes last so that the groups stay aligned
    with the optimizer steps.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, not {group_size}")
    n = len(lengths)
    groups_per_mega = max(1, min(n // (group_size * 4), MEGA_BATCH_GROUPS))
    mega = groups_per_mega * group_size
    permuted = torch.randperm(n, generator=generator).tolist()
    full, partial = [], []
    for start in range(0, n, mega):
        chunk = sorted(permuted[start:start + mega], key=lambda i: lengths[i], reverse=True)
        for g in range(0, len(chunk), group_size):
            group = chunk[g:g + group_size]
            (full if len(group) == group_size else partial).append(group)
    order = torch.randperm(len(full), generator=generator).tolist()
    return [i for g in order for i in full[g]] + [i for group in partial for i in group]


class EpochSeededLengthSampler(Sampler[int]):
    """`length_grouped_order` for the epoch the Trainer announces through `set_epoch`.

    `group_size` is one optimizer step's samples over all processes (per-device batch x
    gradient accumulation x processes): accelerate hands consecutive batches to the ranks
    in turn, so one group is exactly one global step.
    """

    def __init__(self, lengths: Sequence[int], group_size: int, seed: int):
        self.lengths = list(lengths)
        self.group_size = group_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(length_grouped_order(self.lengths, self.group_size, generator))
