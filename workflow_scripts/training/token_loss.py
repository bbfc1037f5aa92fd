"""The one routine behind every reported loss: cross-entropy summed over assistant tokens.

Validation loss during training, the final validation loss and the test loss of base
models and adapters all come from `record_loss_sums`, and every mean is a token-weighted
mean (`mean_loss`): the sum of per-token losses over all label tokens divided by their
count. A mean of per-batch means would weight a token in a short batch more than one in a
long batch, and would change with the batch size.

No full-vocabulary logits: the model's output layer is hooked so that its forward gets an
empty slice, the final hidden states at label positions are projected through that same
layer (the adapted one under PEFT) a chunk at a time, and training checkpoints each chunk
so that its backward recomputes the chunk's logits instead of keeping them
(`model_label_losses`; docs/training.md). `sequence_loss_sums` is the full-logits reference.
That holds only where the model's logits are its output layer's output: `chunked_loss_applies`
checks it on each model's first batch (`probe_agrees`) and sends the model the full-logits way
otherwise (Granite divides the logits by `logits_scaling` after the layer).
"""
from __future__ import annotations

import logging
import math
import weakref
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

from workflow_scripts.training.lean_tokens import lean_forward, project

IGNORE_INDEX = -100  # label of a position that takes no loss (as transformers' default)
# Logits projected at once by the chunked loss: 2**25 fp32 values (128 MiB), e.g. 220 label
# positions of a 151,936-row vocabulary, or a whole batch of a small model.
LOGITS_CHUNK_ELEMENTS = 2**25
# Positions of one row whose logits the probe projects (8 x 151,936 fp32: 4.9 MB), and the
# largest change to them it accepts after the output layer, as a share of the largest: a cast
# to bf16 and back (2**-9 at most) passes, a rescaling by 1.01 or more does not.
PROBE_POSITIONS = 8
PROBE_TOLERANCE = 2**-7

logger = logging.getLogger(__name__)
_probed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # unwrapped model -> verdict


def sequence_loss_sums(logits, labels) -> tuple[list[float], list[int]]:
    """Per row: summed next-token cross-entropy over label tokens, and their count, from
    full (batch, length, vocab) logits: the reference the chunked routines are tested against.

    `labels` is (batch, length) with IGNORE_INDEX where no loss is taken; position t
    predicts label t + 1, as in causal-LM training.
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


def chunk_rows(vocab_size: int) -> int:
    """Label positions projected at once: about LOGITS_CHUNK_ELEMENTS logits per chunk."""
    return max(16, LOGITS_CHUNK_ELEMENTS // max(vocab_size, 1))


def _chunk_token_losses(head, hidden, targets):
    import torch

    return torch.nn.functional.cross_entropy(project(head, hidden).float(), targets, reduction="none")


def label_token_losses(head, hidden, labels, vocab_size: int):
    """Cross-entropy of every label token, and the batch row it belongs to, from the final
    hidden states (batch, length, hidden) projected through `head` chunk by chunk.

    Only positions whose next label is not IGNORE_INDEX are projected. With gradients on,
    each chunk is checkpointed: its logits are recomputed in the backward pass instead of
    kept, so no more than one chunk of logits is alive at any time.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    shifted = labels[:, 1:].to(hidden.device)
    keep = shifted != IGNORE_INDEX
    rows = keep.nonzero()[:, 0]
    states, targets = hidden[:, :-1][keep], shifted[keep]
    step = chunk_rows(vocab_size)
    losses = []
    for start in range(0, targets.numel(), step):
        h, t = states[start : start + step], targets[start : start + step]
        if torch.is_grad_enabled() and h.requires_grad:
            losses.append(checkpoint(_chunk_token_losses, head, h, t, use_reentrant=False))
        else:
            losses.append(_chunk_token_losses(head, h, t))
    # no label token: an empty loss that still reaches the graph, so backward() works
    per_token = torch.cat(losses) if losses else states.float().sum(-1)
    return per_token, rows


class _HiddenCapture:
    """Forward pre-hook on the output layer: keeps the final hidden states it is given and
    passes it an empty slice of them, so the model's own forward computes no logits."""

    def __init__(self):
        self.hidden = None

    def __call__(self, module, args):
        if not args or self.hidden is not None:
            return None  # called by keyword, or a second time: leave the call alone
        self.hidden = args[0]
        return (args[0][..., :0, :], *args[1:])


def supports_chunked_loss(model) -> bool:
    """Whether the model has an output layer and its config names no soft-capping or scale
    after it (soft-capping is close to the identity on small logits, where a probe would miss
    it); `chunked_loss_applies` adds the evidence of a probe."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    altered = [getattr(text_config, k, None) for k in ("final_logit_softcapping", "logit_scale",
                                                       "output_multiplier_scale")]
    return model.get_output_embeddings() is not None and all(v in (None, 1, 1.0) for v in altered)


def chunked_loss_applies(model, inputs: dict) -> bool:
    """Whether the chunked loss stands for the full-logits one on `model`: `supports_chunked_loss`,
    and the probe (`probe_agrees`) on the first batch it meets, once per model."""
    inner = unwrap(model)
    if not supports_chunked_loss(inner):
        return False
    verdict = _probed.get(inner)
    if verdict is None:
        verdict = _probed[inner] = probe_agrees(inner, inputs)
    return verdict


def probe_agrees(model, inputs: dict) -> bool:
    """Whether the model's logits are its output layer's output, on the first PROBE_POSITIONS
    positions of the batch's first row: the chunked path's projection of the hidden states the
    layer receives is handed back as the layer's output in a second forward, and the model's
    logits must be that tensor (a model that rescales or caps them after the layer changes it).
    In eval mode (no dropout), without gradients, never a full-vocabulary copy of a trained
    embedding (`lean_tokens`); logs why not."""
    import torch

    probe = probe_inputs(inputs, PROBE_POSITIONS)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            hidden = hidden_forward(model, probe)
            if hidden is None:
                logger.warning("chunked loss off: the output layer is not called with the hidden "
                               "states as its first argument; the loss uses full logits")
                return False
            chunked = project(model.get_output_embeddings(), hidden)
            with _head_hooked(model, chunked):
                logits = model(**probe).logits
    finally:
        model.train(was_training)
    if logits.shape != chunked.shape:
        logger.warning("chunked loss off: the model turns its output layer's %s into logits of "
                       "%s; the loss uses full logits", tuple(chunked.shape), tuple(logits.shape))
        return False
    if not chunked.numel():
        logger.warning("chunked loss off: the first batch's first row has no token to probe; "
                       "the loss uses full logits")
        return False
    gap = (logits.float().to(chunked.device) - chunked.float()).abs().max().item()
    scale = chunked.float().abs().max().item()
    if not gap <= PROBE_TOLERANCE * max(scale, 1e-6):  # NaN counts as a difference
        logger.warning("chunked loss off: the model's logits differ from its output layer's "
                       "(largest difference %.3g, largest output %.3g: it rescales or caps them "
                       "after the layer); the loss uses full logits", gap, scale)
        return False
    return True


def probe_inputs(inputs: dict, positions: int) -> dict:
    """`inputs` cut to their first row and its first `positions` positions (every dimension
    after the batch that is as long as the sequence: ids, masks, 4D packed masks, position
    ids); with a padding mask, its first real tokens, wherever the padding side put them."""
    import torch

    length = inputs["input_ids"].shape[1]
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        where = mask[0].nonzero()[:positions, 0]
    else:
        where = torch.arange(min(positions, length), device=inputs["input_ids"].device)

    def cut(value):
        if not hasattr(value, "dim") or value.dim() == 0:
            return value
        value = value[:1]
        for dim, size in enumerate(value.shape[1:], start=1):
            if size == length:
                value = value.index_select(dim, where.to(value.device))
        return value

    return {key: cut(value) for key, value in inputs.items()}


@contextmanager
def _head_hooked(model, head_output=None) -> Iterator[_HiddenCapture]:
    """During one forward of `model` (unwrapped): its output layer is given an empty slice of
    the hidden states (kept in the capture this yields) and, when `head_output` is given,
    returns that tensor instead of its own empty output; trainable tokens run lean."""
    head = model.get_output_embeddings()
    capture = _HiddenCapture()
    handles = [head.register_forward_pre_hook(capture)]
    if head_output is not None:
        handles.append(head.register_forward_hook(lambda module, args, output: head_output))
    try:
        with lean_forward(model, head_output_unused=True):
            yield capture
    finally:
        for handle in handles:
            handle.remove()


def hidden_forward(model, inputs: dict):
    """Run `model` on `inputs` and return the hidden states its output layer received.

    `model` may be wrapped (DDP, accelerate): the forward goes through the wrapper; the hook
    sits on the unwrapped model's output layer (the adapted one under PEFT: LoRA on the
    head, trainable tokens on a tied embedding). Trainable tokens run without their merged
    copy of the embedding (`lean_tokens`). None when the layer was not called with the
    hidden states as its first positional argument.
    """
    with _head_hooked(unwrap(model)) as capture:
        model(**inputs)
    return capture.hidden


def unwrap(model):
    """The model inside DDP / DataParallel wrappers."""
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module
    return model


def vocab_rows(model) -> int:
    """Rows of the model's output layer (its vocabulary size)."""
    config = unwrap(model).config
    return (config.get_text_config() if hasattr(config, "get_text_config") else config).vocab_size


def model_label_losses(model, inputs: dict, labels):
    """(per-token losses, their batch rows) at the label positions of one batch, without
    full-vocabulary logits; None when the model's output layer cannot be hooked."""
    hidden = hidden_forward(model, inputs)
    if hidden is None:
        return None
    head = unwrap(model).get_output_embeddings()
    return label_token_losses(head, hidden, labels, vocab_rows(model))


def batch_loss_sums(model, inputs: dict, labels, chunked: bool = True):
    """Per row of one batch: (summed label-token loss, label-token count), no gradients.

    Chunked (the default where `chunked_loss_applies`): from the hidden states at label
    positions; otherwise from the model's full logits (`sequence_loss_sums`).
    """
    import torch

    found = model_label_losses(model, inputs, labels) if chunked and chunked_loss_applies(
        model, inputs) else None
    if found is None:
        logits = model(**inputs).logits
        return sequence_loss_sums(logits, labels.to(logits.device))
    per_token, rows = found
    n = labels.shape[0]
    sums = torch.zeros(n, dtype=torch.float64, device=per_token.device)
    sums.index_add_(0, rows, per_token.double())
    return sums.tolist(), [int(c) for c in torch.bincount(rows, minlength=n)]


def training_loss(model, inputs: dict, labels, num_items_in_batch=None):
    """One batch's training loss as transformers' causal-LM loss gives it (the summed
    label-token loss over `num_items_in_batch` when given, else the mean over the batch's
    label tokens), through the chunked path; None where that path does not apply."""
    if not chunked_loss_applies(model, inputs):
        return None
    found = model_label_losses(model, inputs, labels)
    if found is None:
        return None
    per_token, _ = found
    if num_items_in_batch is None:
        return per_token.sum() / per_token.numel()
    return per_token.sum() / num_items_in_batch.to(per_token.device) if hasattr(
        num_items_in_batch, "to") else per_token.sum() / num_items_in_batch


def record_loss_sums(
    model, features: Sequence[dict], collate: Callable, batch_size: int, chunked: bool = True
) -> list[tuple[float, int]]:
    """(loss sum, label-token count) for every feature, in order, without gradients."""
    import torch

    was_training = model.training
    model.eval()
    out: list[tuple[float, int]] = []
    try:
        for start in range(0, len(features), batch_size):
            batch = collate(list(features[start : start + batch_size]))
            inputs = {k: batch[k].to(model.device) for k in ("input_ids", "attention_mask")}
            with torch.no_grad():
                sums, counts = batch_loss_sums(model, inputs, batch["labels"], chunked)
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
