"""Trainable tokens without PEFT's merged copy of the whole embedding.

PEFT's trainable-tokens layer (`lora.trainable_tokens`) computes every forward with a fresh
copy of the full (vocabulary, hidden) weight that has the trained rows written in: 545 MB in
fp32 for Qwen2-0.5B's 151,936 x 896, 1 GB in bf16 at 7B, once for the input embedding and
once more for a tied output layer, on every step (and their gradients). The same outputs come
from the untouched base weight with only the trained rows replaced afterwards:

* input embedding: look up the base rows, then put the trained rows at the positions whose
  token is a trained one (`lean_forward`);
* tied output layer: project through the base, then replace the trained rows' columns
  (`project`).

Both apply to an active, unmerged layer over a plain `nn.Embedding` / bias-free `nn.Linear`
(no scaled embeddings, no max_norm); anything else goes through PEFT unchanged.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator


def tokens_layer(module):
    """The active, unmerged PEFT trainable-tokens layer inside `module` that the lean paths
    handle, or None."""
    import torch

    layer = getattr(module, "token_adapter", None)
    if layer is None or not hasattr(layer, "trainable_tokens_delta") or layer.merged \
            or layer.disable_adapters or not layer.active_adapters:
        return None
    base = layer.base_layer
    if type(base) is torch.nn.Embedding:
        plain = base.max_norm is None and not hasattr(base, "embed_scale")
    else:
        plain = type(base) is torch.nn.Linear and base.bias is None
    return layer if plain else None


def _trained(layer, name: str, like):
    """(token ids as a tensor, their trained rows) of one adapter, on `like`'s device/dtype."""
    import torch

    rows = layer.trainable_tokens_delta[name].to(like)
    return torch.tensor(layer.token_indices[name], device=like.device), rows


def project(head, hidden):
    """`head(hidden)`, without the merged copy when `head` has trainable tokens."""
    import torch

    layer = tokens_layer(head)
    if layer is None:
        return head(hidden)
    logits = layer.base_layer(hidden)
    for name in layer.active_adapters:  # in order: a later adapter's rows win, as PEFT merges
        index, rows = _trained(layer, name, logits)
        logits = logits.index_copy(-1, index, torch.nn.functional.linear(hidden, rows))
    return logits


def _embed_trained_rows(layer, args, output):
    """Forward hook: the base lookup `output` with trained tokens' rows put in."""
    import torch

    # on the output's device: a hook sees the ids as the caller passed them, before a
    # dispatch hook (accelerate's device map) moved them to the layer's device
    ids = args[0].to(output.device)
    for name in layer.active_adapters:
        index, rows = _trained(layer, name, output)
        lookup = torch.full((layer.base_layer.num_embeddings,), -1, dtype=torch.long,
                            device=output.device)
        lookup[index] = torch.arange(index.numel(), device=output.device)
        slot = lookup[ids]
        output = torch.where((slot >= 0).unsqueeze(-1), rows[slot.clamp(min=0)], output)
    return output


@contextmanager
def _bypassed(layer, hook=None) -> Iterator[None]:
    """The layer runs its base alone (PEFT's own flag: `enable_adapters()` would also switch
    the shared trained rows' requires_grad off), with `hook` added to its output."""
    layer._disable_adapters = True
    handle = layer.register_forward_hook(hook) if hook is not None else None
    try:
        yield
    finally:
        layer._disable_adapters = False
        if handle is not None:
            handle.remove()


@contextmanager
def lean_forward(model, head_output_unused: bool = False) -> Iterator[None]:
    """During one forward of `model` (unwrapped): the input embedding's trained rows are put
    in after a base lookup; with `head_output_unused` (the output layer is called on an empty
    slice, `token_loss.hidden_forward`) the head skips its merged copy too."""
    with ExitStack() as stack:
        embedding = tokens_layer(model.get_input_embeddings())
        if embedding is not None:
            stack.enter_context(_bypassed(embedding, _embed_trained_rows))
        head = tokens_layer(model.get_output_embeddings()) if head_output_unused else None
        if head is not None:
            stack.enter_context(_bypassed(head))
        yield
