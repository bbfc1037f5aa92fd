"""Pack several tokenized samples into one row without letting them see each other.

A packed row is the concatenation of whole samples, at most `max_length` tokens long, with
`position_ids` restarting at 0 for every sample. The collator turns the position ids into a
4D block-diagonal causal mask, which transformers passes to the attention as it is: boolean
(True = attend) for SDPA, additive float (0 = attend) for eager attention. Padding-free
flattening without such a mask would rely on flash-attention kernels to separate the samples;
on CPU it would let tokens attend across sample boundaries.
"""
from __future__ import annotations

from typing import Any

from workflow_scripts.training.token_loss import IGNORE_INDEX

# Passed with each packed batch and removed before the forward pass: the 4D mask no longer
# says how many real tokens a batch holds.
NUM_TOKENS_KEY = "num_tokens"


def pack_bins(lengths: list[int], max_length: int) -> list[list[int]]:
    """Sample indices grouped into rows of at most `max_length` tokens (first fit decreasing).

    Samples go longest first into the first row with room for them. That row is found by
    descending a max-tree over the rows' free room (a segment tree: a leaf per row, each
    inner node the most room below it), so packing n samples takes O(n log n) time rather
    than the O(n * rows) of scanning every open row; the rows are the same as the scan's.
    """
    for index, length in enumerate(lengths):
        if length > max_length:
            raise ValueError(f"sample {index} has {length} tokens, more than {max_length}")
    size = 1
    while size < max(len(lengths), 1):
        size *= 2
    room = [-1] * (2 * size)  # -1: a row not opened yet
    bins: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        need = lengths[index]
        if room[1] >= need:  # descend to the leftmost row with room
            node = 1
            while node < size:
                node = 2 * node if room[2 * node] >= need else 2 * node + 1
        else:  # open a row
            node = size + len(bins)
            bins.append([])
            room[node] = max_length
        bins[node - size].append(index)
        room[node] -= need
        node //= 2
        while node:  # refresh the maxima above the leaf, up to the first that holds
            best = room[2 * node] if room[2 * node] >= room[2 * node + 1] else room[2 * node + 1]
            if room[node] == best:
                break
            room[node] = best
            node //= 2
    return bins


def fill_ratio(tokens: int, rows: int, max_length: int) -> float | None:
    """Share of `rows` packed rows' max_length tokens that their `tokens` fill (1.0: full)."""
    return tokens / (rows * max_length) if rows else None


def pack_features(features: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Rows of concatenated samples with per-sample position ids.

    The first label of every sample is ignored so that no loss term predicts a sample's first
    token from the end of the one before it.
    """
    rows = []
    for members in pack_bins([len(f["input_ids"]) for f in features], max_length):
        row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for index in members:
            ids, labels = features[index]["input_ids"], list(features[index]["labels"])
            labels[0] = IGNORE_INDEX
            row["input_ids"] += ids
            row["labels"] += labels
            row["position_ids"] += list(range(len(ids)))
        rows.append(row)
    return rows


def block_causal_mask(position_ids, lengths, dtype):
    """(batch, 1, L, L) mask: a token sees the earlier tokens of its own sample only.

    `dtype` bool gives True where attention is allowed; a float dtype gives an additive mask.
    Padding positions (index >= the row's length) see only themselves, which keeps their
    softmax defined; their outputs carry no loss.
    """
    import torch

    width = position_ids.shape[1]
    real = torch.arange(width)[None, :] < torch.as_tensor(lengths)[:, None]
    segment = torch.cumsum((position_ids == 0) & real, dim=1) * real
    same = segment[:, :, None] == segment[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = (same & causal & real[:, :, None]) | torch.eye(width, dtype=torch.bool)
    if dtype == torch.bool:
        return allowed[:, None]
    mask = torch.zeros(allowed[:, None].shape, dtype=dtype)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


class PackedCollator:
    """Pads packed rows to the longest in the batch and adds their block-diagonal mask.

    `attn_implementation` is the model's (config._attn_implementation): SDPA gets a boolean
    mask, which suits any compute dtype; others an fp32 additive one.
    """

    def __init__(self, pad_token_id: int, attn_implementation: str = "sdpa"):
        import torch

        self.pad_token_id = pad_token_id
        self.dtype = torch.bool if attn_implementation == "sdpa" else torch.float32

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        lengths = [len(r["input_ids"]) for r in rows]
        width = max(lengths)

        def padded(key: str, value: int):
            return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows])

        position_ids = padded("position_ids", 0)
        return {
            "input_ids": padded("input_ids", self.pad_token_id),
            "labels": padded("labels", IGNORE_INDEX),
            "position_ids": position_ids,
            "attention_mask": block_causal_mask(position_ids, lengths, self.dtype),
            NUM_TOKENS_KEY: torch.tensor(sum(lengths)),
        }
