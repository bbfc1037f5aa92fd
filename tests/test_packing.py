"""Packing puts several samples in one row, and no token attends across a sample boundary."""
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from workflow_scripts.training.chat_tokenize import IGNORE_INDEX
from workflow_scripts.training.packing import (NUM_TOKENS_KEY, PackedCollator, fill_ratio, pack_bins,
                                              pack_features)

VOCAB = 97
PAD = 0


def sample(length: int, prompt: int, seed: int) -> dict[str, list[int]]:
    ids = torch.randint(1, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()
    return {"input_ids": ids, "attention_mask": [1] * length,
            "labels": [IGNORE_INDEX] * prompt + ids[prompt:]}


SAMPLES = [sample(n, p, i) for i, (n, p) in enumerate([(7, 3), (12, 5), (5, 2), (9, 4)])]


def right_padded(samples: list[dict]) -> dict[str, torch.Tensor]:
    """The ordinary batch of the same samples: padded to the longest, 2D attention mask."""
    width = max(len(s["input_ids"]) for s in samples)

    def pad(key: str, value: int) -> torch.Tensor:
        return torch.tensor([s[key] + [value] * (width - len(s[key])) for s in samples])

    return {"input_ids": pad("input_ids", PAD), "attention_mask": pad("attention_mask", 0),
            "labels": pad("labels", IGNORE_INDEX)}


def tiny_model(kind: str, attn: str):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD)
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.config._attn_implementation = attn
    return model.eval()


def test_bins_respect_the_limit_and_keep_every_sample():
    lengths = [7, 12, 5, 9, 3, 16]
    bins = pack_bins(lengths, 16)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 16 for b in bins)
    assert len(bins) == 4  # 52 tokens need at least 4 rows of 16
    with pytest.raises(ValueError):
        pack_bins([17], 16)


def scanned_first_fit_decreasing(lengths: list[int], max_length: int) -> list[list[int]]:
    """The reference: first fit decreasing by scanning every open row (quadratic)."""
    bins, room = [], []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = next((b for b, free in enumerate(room) if free >= lengths[index]), None)
        if slot is None:
            bins.append([])
            room.append(max_length)
            slot = len(bins) - 1
        bins[slot].append(index)
        room[slot] -= lengths[index]
    return bins


@pytest.mark.parametrize("seed", range(20))
def test_tree_packing_gives_the_scans_rows(seed):
    """Same rows as scanning, hence the same fill ratio, on lengths of every kind."""
    rng = random.Random(seed)
    max_length = rng.choice([1, 7, 64, 512])
    lengths = [rng.randint(1, max_length) for _ in range(rng.randint(0, 300))]
    if seed % 3 == 0:  # long-tailed, as chat lengths are
        lengths = [min(max_length, int(rng.paretovariate(1.2) * 4)) for _ in lengths]
    bins = pack_bins(lengths, max_length)
    assert bins == scanned_first_fit_decreasing(lengths, max_length)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= max_length for b in bins)
    if bins:
        assert fill_ratio(sum(lengths), len(bins), max_length) >= sum(lengths) / (len(lengths) * max_length)


def test_packed_rows_restart_positions_and_ignore_each_first_token():
    rows = pack_features(SAMPLES, 20)
    assert sum(len(r["input_ids"]) for r in rows) == sum(len(s["input_ids"]) for s in SAMPLES)
    for row in rows:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert all(row["labels"][i] == IGNORE_INDEX for i in starts)
    batch = PackedCollator(PAD)(rows)
    width = max(len(r["input_ids"]) for r in rows)
    assert batch["attention_mask"].shape == (len(rows), 1, width, width)
    assert int(batch[NUM_TOKENS_KEY]) == sum(len(s["input_ids"]) for s in SAMPLES)


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_and_loss_equal_unpacked(kind, attn):
    model = tiny_model(kind, attn)
    (row,) = pack_features(SAMPLES, 64)
    batch = PackedCollator(PAD, attn)([row])
    batch.pop(NUM_TOKENS_KEY)
    with torch.no_grad():
        packed = model(**batch)
        offsets = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        for start, end in zip(offsets, offsets[1:]):
            ids = torch.tensor([row["input_ids"][start:end]])
            alone = model(input_ids=ids).logits[0]
            torch.testing.assert_close(packed.logits[0, start:end], alone, atol=1e-5, rtol=1e-5)
        unpacked = model(**right_padded(SAMPLES))
    torch.testing.assert_close(packed.loss, unpacked.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_rows_in_a_packed_batch_change_nothing(attn):
    model = tiny_model("qwen2", attn)
    rows = pack_features(SAMPLES, 20)
    collate = PackedCollator(PAD, attn)
    with torch.no_grad():
        together = model(**{k: v for k, v in collate(rows).items() if k != NUM_TOKENS_KEY})
        for i, row in enumerate(rows):
            alone = model(**{k: v for k, v in collate([row]).items() if k != NUM_TOKENS_KEY})
            n = len(row["input_ids"])
            torch.testing.assert_close(together.logits[i, :n], alone.logits[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(together.logits).all()
