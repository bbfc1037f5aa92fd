"""The one routine behind every reported loss: cross-entropy summed over assistant tokens.

Validation loss during training, the final validation loss and the test loss of base
models and adapters all come from `record_loss_sums`, and every mean is a token-weighted
mean (`mean_loss`): the sum of per-token losses over all label tokens divided by their
count. A mean of per-batch means would weight a token in a short batch more than one in a
long batch, and would change with the batch size.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

IGNORE_INDEX = -100  # label of a position that takes no loss (as transformers' default)


def sequence_loss_sums(logits, labels) -> tuple[list[float], list[int]]:
    """Per row: summed next-token cross-entropy over label tokens, and their count.

    `logits` is (batch, length, vocab) and `labels` (batch, length) with IGNORE_INDEX
    where no loss is taken; position t predicts label t + 1, as in causal-LM training.
    """
    import torch

    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shifted_labels.shape)
    counts = (shifted_labels != IGNORE_INDEX).sum(dim=1)
    return per_token.sum(dim=1).tolist(), [int(c) for c in counts]


def record_loss_sums(
    model, features: Sequence[dict], collate: Callable, batch_size: int
) -> list[tuple[float, int]]:
    """(loss sum, label-token count) for every feature, in order, without gradients."""
    import torch

    was_training = model.training
    model.eval()
    out: list[tuple[float, int]] = []
    try:
        for start in range(0, len(features), batch_size):
            batch = collate(list(features[start : start + batch_size]))
            labels = batch["labels"].to(model.device)
            with torch.no_grad():
                logits = model(
                    input_ids=batch["input_ids"].to(model.device),
                    attention_mask=batch["attention_mask"].to(model.device),
                ).logits
            sums, counts = sequence_loss_sums(logits, labels)
            out.extend(zip(sums, counts))
    finally:
        model.train(was_training)
    return out


def mean_loss(sums: Iterable[tuple[float, int]]) -> float:
    """Token-weighted mean of (loss sum, token count) pairs; NaN when there is no token."""
    total, count = 0.0, 0
    for loss_sum, n_tokens in sums:
        total += loss_sum
        count += n_tokens
    return total / count if count else float("nan")


def perplexity(loss: float) -> float:
    """exp(loss), capped so that an untrained model's loss does not overflow."""
    return math.exp(min(loss, 50.0)) if loss == loss else float("nan")
