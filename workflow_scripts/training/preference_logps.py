"""Answer log-probabilities of preference rows: summed over the answer's tokens, and counted.

One routine serves the reference job, training and evaluation, so a policy that equals its
reference scores exactly its reference's numbers (rewards 0 before the first update). It runs
through token_loss's chunked label-only path: the model's output layer projects only the
answers' positions, a chunk at a time, so a 151,936-row vocabulary costs what SFT's loss costs;
models whose logits are not their output layer's output take the full-logits way, as in SFT.

A batch of B rows becomes 2B sequences, every row's first answer then every row's second
(chosen then rejected, or a KTO completion then its mismatched `kl` answer), right-padded.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

from workflow_scripts.training.token_loss import (IGNORE_INDEX, chunked_loss_applies,
                                                  model_label_losses, unwrap)


class PreferenceCollator:
    """Rows of preference_tokenize's Arrow files -> one padded batch of both answers.

    Keeps every other column (reference log-probs, labels, weights) as a tensor."""

    def __init__(self, pad_token_id: int, roles: tuple[str, str]):
        self.pad, self.roles = pad_token_id, roles

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        sequences = [(row[f"{role}_ids"], row[f"{role}_start"]) for role in self.roles
                     for row in rows]
        width = max(len(ids) for ids, _ in sequences)
        input_ids = torch.full((len(sequences), width), self.pad, dtype=torch.long)
        labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, (ids, start) in enumerate(sequences):
            ids_t = torch.as_tensor(ids, dtype=torch.long)
            input_ids[i, : len(ids)] = ids_t
            labels[i, start: len(ids)] = ids_t[start:]
            mask[i, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
        for key in rows[0]:
            if key.endswith(("_ids", "_start")) or key in ("id", "length"):
                continue
            batch[key] = torch.as_tensor([row[key] for row in rows])
        return batch


def sequence_logps(model, input_ids, attention_mask, labels, chunked: bool = True):
    """(summed answer log-probs, answer token counts), one per sequence, with gradients when
    they are on; every tensor on the device of the model's output."""
    import torch

    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    found = (model_label_losses(model, inputs, labels)
             if chunked and chunked_loss_applies(model, inputs) else None)
    if found is None:
        logits = model(**inputs).logits
        shifted = labels[:, 1:].to(logits.device)
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), shifted.clamp_min(0), reduction="none")
        keep = shifted != IGNORE_INDEX
        return -(per_token * keep).sum(dim=1), keep.sum(dim=1)
    per_token, rows = found
    n = labels.shape[0]
    sums = torch.zeros(n, dtype=per_token.dtype, device=per_token.device).index_add(0, rows, per_token)
    counts = torch.bincount(rows, minlength=n)
    return -sums, counts


def batch_logps(model, batch: dict[str, Any], chunked: bool = True):
    """((first answers' logps, counts), (second answers' logps, counts)) of a collated batch."""
    device = model_device(model)
    logps, counts = sequence_logps(model, batch["input_ids"].to(device),
                                   batch["attention_mask"].to(device), batch["labels"].to(device),
                                   chunked)
    half = logps.shape[0] // 2
    return (logps[:half], counts[:half]), (logps[half:], counts[half:])


def model_device(model):
    """Where the model's inputs go: its input embeddings' device (first shard under device_map)."""
    return unwrap(model).get_input_embeddings().weight.device


def training_autocast(model):
    """The autocast the Trainer trains under (bf16 on a CUDA GPU that has it; none on CPUs),
    so that scores computed outside training (the reference job, evaluation) are the numbers
    a training step computes for the same weights: rewards start at 0 on a GPU too."""
    import torch

    from workflow_scripts.models.loading import compute_dtype

    if model_device(model).type != "cuda" or compute_dtype() != torch.bfloat16:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


SORT_WINDOW_BATCHES = 64  # rows sorted by length this many batches at a time: little padding


def score_rows(model, dataset, roles: tuple[str, str], pad_token_id: int, batch_size: int,
               chunked: bool = True):
    """Yield, for every row in order, {id, <role>_logp, <role>_tokens for both roles}, without
    gradients, in eval mode. Rows are read a window at a time and batched by length within
    it (padding costs what the longest row of a batch costs), then yielded in order."""
    import torch

    collate = PreferenceCollator(pad_token_id, roles)
    window = batch_size * SORT_WINDOW_BATCHES
    was_training = model.training
    model.eval()
    try:
        for begin in range(0, len(dataset), window):
            rows = dataset.select(range(begin, min(begin + window, len(dataset)))).to_list()
            order = sorted(range(len(rows)), key=lambda i: rows[i]["length"])
            scored: dict[int, dict] = {}
            for start in range(0, len(order), batch_size):
                members = order[start:start + batch_size]
                with torch.no_grad(), training_autocast(model):
                    answers = batch_logps(model, collate([rows[i] for i in members]), chunked)
                for j, i in enumerate(members):
                    out = {"id": rows[i]["id"]}
                    for role, (logps, counts) in zip(roles, answers):
                        out[f"{role}_logp"] = float(logps[j])
                        out[f"{role}_tokens"] = int(counts[j])
                    scored[i] = out
            yield from (scored[i] for i in range(len(rows)))
    finally:
        model.train(was_training)
