"""One forward pass for rows of different LoRA adapters, without PEFT's per-adapter loop.

PEFT's mixed-adapter inference (`adapter_names`) runs, in every LoRA layer, each adapter's
rows through that adapter on their own (index the rows, two small matmuls, scatter back),
and its trainable-token wrappers copy the whole embedding per adapter and call: on a small
model most of a decoding step is that Python. Here each layer's LoRA matrices are gathered
once per batch composition (which adapter each row uses): row i's A and B (its scaling
folded in), zero-padded to the batch's largest rank, zeros for a base-model row; they are
applied with two batched matmuls per layer (as S-LoRA's and Punica's BGMV kernels do on a
GPU). A composition whose gathered matrices would hold more than GATHER_BYTES (many rows of
large-rank adapters on a large model) gathers them per layer as it runs instead. A batch whose rows all use one adapter (a lone request, say)
takes PEFT's own single-adapter arithmetic instead (`B(A(x)) * scaling`), and a batch of
base-model rows only the base layer, so a lone request computes what the unbatched path
computes.

Trainable tokens: the embedding looks the ids up in the base table, then puts each row's
adapter's trained rows in place of the ids it trains (a table adapter x vocabulary ->
trained row, built once per adapter set); a head tied to that embedding replaces the
trained tokens' logits of each row with `h . trained row`. Rows of adapters with and
without trained tokens therefore share a batch, which PEFT's wrappers cannot do.

Handled here: plain LoRA on `nn.Linear` layers and trainable tokens on `nn.Embedding` or
a tied `nn.Linear` head. For anything else (DoRA and other variants, LoRA biases,
quantized or other base layers, `modules_to_save`, merged weights) `MixedAdapters.build`
answers None and the engine keeps PEFT's own mixed forward.
"""
from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

BASE = "__base__"  # a row without an adapter
GATHER_BYTES = 256 << 20  # most memory a batch composition's gathered LoRA weights may keep


@dataclass
class _LoraSite:
    """One LoRA layer: its base weights and, per adapter index, (A, B, scaling)."""

    module: Any
    weight: Any
    bias: Any
    adapters: dict[int, tuple[Any, Any, float]]  # index -> (A [r, in], B [out, r], scaling)


@dataclass
class _TokenSite:
    """A trainable-tokens wrapper: the base embedding (or tied head) and the trained rows."""

    module: Any
    weight: Any
    embedding: bool  # False: an LM head (logits over the vocabulary)
    padding_idx: int | None
    lookup: Any = None  # embedding: [adapters + 1, vocab] -> row of `trained`, or -1
    trained: Any = None  # every adapter's trained rows, concatenated [n, hidden]
    columns: Any = None  # head: [adapters + 1, most tokens] token ids (padded by repeating)
    rows_t: Any = None  # head: [adapters + 1, hidden, most tokens] trained rows, transposed
    valid: Any = None  # head: [adapters + 1, most tokens] whether a column is trained


class _Plan:
    """The tensors of one batch composition: each row's adapter index, gathered weights."""

    def __init__(self, names: tuple[str, ...], index: dict[str, int], mixer: "MixedAdapters"):
        import torch

        ids = [index[n] for n in names]
        self.single = ids[0] if len(set(ids)) == 1 else None  # every row one adapter (or base)
        device = mixer.device
        self.rows = torch.tensor(ids, dtype=torch.long, device=device)
        self.ids = ids
        # Each row's A and B of every layer, gathered now unless that takes more memory
        # than GATHER_BYTES (then each layer gathers its own as it runs, and frees them).
        self.lora: dict[int, tuple | None] | None = None
        if self.single is None and _gathered_bytes(mixer.lora_sites, ids) <= GATHER_BYTES:
            self.lora = {id(site): _gather(site, ids) for site in mixer.lora_sites}
        self.tokens: dict[int, tuple] = {}
        for site in mixer.token_sites:
            if site.lookup is None and site.columns is None:
                continue
            rows = self.rows.to(site.weight.device)  # a model spread over devices
            if site.embedding:
                self.tokens[id(site)] = (site.lookup.index_select(0, rows).unsqueeze(1),)
            else:
                self.tokens[id(site)] = (site.columns.index_select(0, rows),
                                         site.rows_t.index_select(0, rows),
                                         site.valid.index_select(0, rows))


class MixedAdapters:
    """The fast mixed forward of one PEFT model's adapter set (see the module docstring).

    `with mixer.applied(row_adapters): model.get_base_model()(...)` runs one forward pass
    in which row i uses adapter `row_adapters[i]` (a PEFT adapter name, or `__base__`).
    """

    PLANS_KEPT = 2  # batch compositions whose gathered weights are kept (decode, prefill)

    def __init__(self, names: list[str], lora_sites: list[_LoraSite],
                 token_sites: list[_TokenSite], device):
        self.index = {BASE: 0, **{name: i + 1 for i, name in enumerate(names)}}
        self.lora_sites, self.token_sites, self.device = lora_sites, token_sites, device
        self.plans: collections.OrderedDict[tuple, _Plan] = collections.OrderedDict()
        for site in token_sites:
            _stack_tokens(site, names)

    @classmethod
    def build(cls, peft_model, names: list[str]) -> "MixedAdapters | None":
        """The mixer of `names` (adapters loaded in `peft_model`), or None where a layer
        is of a kind it does not handle."""
        import torch
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import AuxiliaryTrainingWrapper, TrainableTokensWrapper

        index = {name: i + 1 for i, name in enumerate(names)}
        lora_sites, token_sites = [], []
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                if type(module) is not LoraLinear or type(module.base_layer) is not torch.nn.Linear \
                        or module.merged or module.lora_variant or getattr(module, "fan_in_fan_out", False):
                    return None
                adapters = {}
                for name in names:
                    if name not in module.lora_A:
                        continue
                    a, b = module.lora_A[name], module.lora_B[name]
                    if a.bias is not None or b.bias is not None:
                        return None
                    adapters[index[name]] = (a.weight, b.weight, module.scaling[name])
                base = module.base_layer
                lora_sites.append(_LoraSite(module, base.weight, base.bias, adapters))
            elif isinstance(module, AuxiliaryTrainingWrapper):
                site = _token_site(module, names, TrainableTokensWrapper)
                if site is None:
                    return None
                token_sites.append(site)
        device = next(peft_model.parameters()).device
        return cls(list(names), lora_sites, token_sites, device)

    def plan(self, row_adapters: list[str]) -> _Plan:
        key = tuple(row_adapters)
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = _Plan(key, self.index, self)
            while len(self.plans) > self.PLANS_KEPT:
                self.plans.popitem(last=False)
        else:
            self.plans.move_to_end(key)
        return plan

    @contextlib.contextmanager
    def applied(self, row_adapters: list[str]) -> Iterator[None]:
        """Every LoRA layer and token wrapper runs the fast forward of this composition."""
        plan = self.plan(row_adapters)
        patched = []
        try:
            for site in self.lora_sites:
                site.module.forward = _lora_forward(site, plan)
                patched.append(site.module)
            for site in self.token_sites:
                site.module.forward = (_embedding_forward if site.embedding else _head_forward)(site, plan)
                patched.append(site.module)
            yield
        finally:
            for module in patched:
                del module.forward  # the class's forward again


def _token_site(module, names: list[str], wrapper_class) -> _TokenSite | None:
    import torch

    if type(module) is not wrapper_class:  # modules_to_save and others
        return None
    layer = module.token_adapter
    base = layer.base_layer
    if layer.merged_adapters or layer._get_embed_scale() is not None:
        return None
    if type(base) is torch.nn.Embedding:
        if base.max_norm is not None:
            return None
        site = _TokenSite(module, base.weight, True, base.padding_idx)
    elif type(base) is torch.nn.Linear and base.bias is None:
        site = _TokenSite(module, base.weight, False, None)
    else:
        return None
    site.trained = [(names.index(n) + 1, layer.token_indices[n], layer.trainable_tokens_delta[n])
                    for n in names if n in layer.trainable_tokens_delta]
    return site


def _gathered_bytes(sites: list[_LoraSite], ids: list[int]) -> int:
    total = 0
    for site in sites:
        ranks = [site.adapters[i][0].shape[0] for i in set(ids) if i in site.adapters]
        if ranks:
            size = next(iter(site.adapters.values()))[0].element_size()
            total += len(ids) * max(ranks) * sum(site.weight.shape) * size
    return total


def _gather(site: _LoraSite, ids: list[int]) -> tuple | None:
    """Row i's A transposed [rows, in, rank] and B transposed times its scaling [rows, rank,
    out] for one layer, zero-padded to the largest rank (zeros for rows without an adapter
    here); None when no row's adapter touches the layer."""
    import torch
    import torch.nn.functional as F

    present = {i: site.adapters[i] for i in set(ids) if i in site.adapters}
    if not present:
        return None
    rank = max(a.shape[0] for a, _, _ in present.values())
    a0, b0, _ = next(iter(present.values()))
    zeros_a = a0.new_zeros(a0.shape[1], rank)
    zeros_b = b0.new_zeros(rank, b0.shape[0])
    padded = {i: (F.pad(a.detach().t(), (0, rank - a.shape[0])),
                  F.pad(b.detach().t() * scaling, (0, 0, 0, rank - a.shape[0])))
              for i, (a, b, scaling) in present.items()}
    return (torch.stack([padded[i][0] if i in padded else zeros_a for i in ids]),
            torch.stack([padded[i][1] if i in padded else zeros_b for i in ids]))


def _stack_tokens(site: _TokenSite, names: list[str]) -> None:
    import torch

    weight, count = site.weight, len(names) + 1
    entries = site.trained  # [(adapter index, token ids, trained rows)]
    device, dtype = weight.device, weight.dtype
    hidden = weight.shape[1]
    if site.embedding:
        site.lookup = torch.full((count, weight.shape[0]), -1, dtype=torch.long, device=device)
        rows, offset = [], 0
        for i, tokens, delta in entries:
            site.lookup[i, torch.tensor(tokens, device=device)] = torch.arange(
                offset, offset + len(tokens), device=device)
            rows.append(delta.detach().to(dtype))
            offset += len(tokens)
        site.trained = torch.cat(rows) if rows else None
        if site.trained is None:
            site.lookup = None
        return
    site.trained = None
    if not entries:
        return
    most = max(len(tokens) for _, tokens, _ in entries)
    site.columns = torch.zeros(count, most, dtype=torch.long, device=device)
    site.rows_t = torch.zeros(count, hidden, most, dtype=dtype, device=device)
    site.valid = torch.zeros(count, most, dtype=torch.bool, device=device)
    for i, tokens, delta in entries:
        # Pad by repeating the last trained token: a column written twice gets one value.
        padded = list(tokens) + [tokens[-1]] * (most - len(tokens))
        site.columns[i] = torch.tensor(padded, device=device)
        rows = delta.detach().to(dtype)
        site.rows_t[i] = torch.cat([rows, rows[-1:].expand(most - len(tokens), -1)]).t()
        site.valid[i] = True


def _lora_forward(site: _LoraSite, plan: _Plan):
    import torch
    import torch.nn.functional as F

    weight, bias = site.weight, site.bias
    if plan.single is not None:
        single = site.adapters.get(plan.single)
        if single is None:  # the base model, or an adapter that does not touch this layer
            return lambda x, *args, **kwargs: F.linear(x, weight, bias)
        a, b, scaling = single
        if a.dtype == weight.dtype:
            def forward(x, *args, **kwargs):  # PEFT's single-adapter arithmetic
                return F.linear(x, weight, bias) + F.linear(F.linear(x, a), b) * scaling
            return forward

        def cast(x, *args, **kwargs):  # adapter weights in another dtype (PEFT's autocast)
            result = F.linear(x, weight, bias)
            return (result + F.linear(F.linear(x.to(a.dtype), a), b) * scaling).to(result.dtype)
        return cast
    if plan.lora is None:  # too large to keep gathered: gathered per call
        def lazy(x, *args, **kwargs):
            rows = _gather(site, plan.ids)
            if rows is None:
                return F.linear(x, weight, bias)
            return _mixed_general(x, weight, bias, *rows)
        return lazy
    rows = plan.lora[id(site)]
    if rows is None:  # no row's adapter touches this layer
        return lambda x, *args, **kwargs: F.linear(x, weight, bias)
    stack_a, stack_b = rows  # scaling folded into stack_b
    same = stack_a.dtype == weight.dtype

    def mixed(x, *args, **kwargs):
        if x.dim() != 3 or not same:
            return _mixed_general(x, weight, bias, stack_a, stack_b)
        # [rows, tokens, in]: base + (x A_row) B_row, the adds fused into one baddbmm
        return torch.baddbmm(F.linear(x, weight, bias), torch.bmm(x, stack_a), stack_b)
    return mixed


def _mixed_general(x, weight, bias, stack_a, stack_b):
    """The mixed LoRA layer for inputs of any rank and adapters in another dtype."""
    import torch
    import torch.nn.functional as F

    shape = x.shape
    rows = x.reshape(shape[0], -1, shape[-1])
    result = F.linear(rows, weight, bias)
    low = torch.bmm(rows.to(stack_a.dtype), stack_a)
    out = (result + torch.bmm(low, stack_b)).to(result.dtype)
    return out.reshape(*shape[:-1], -1)


def _embedding_forward(site: _TokenSite, plan: _Plan):
    import torch
    import torch.nn.functional as F

    weight, padding_idx, trained = site.weight, site.padding_idx, site.trained
    if trained is None:  # no adapter of the set trains tokens here
        return lambda ids, *args, **kwargs: F.embedding(ids, weight, padding_idx)
    (lookup,) = plan.tokens[id(site)]  # [rows, 1, vocab]

    def forward(ids, *args, **kwargs):
        out = F.embedding(ids, weight, padding_idx)
        which = lookup.expand(-1, ids.shape[1], -1).gather(2, ids.unsqueeze(-1)).squeeze(-1)
        hit = which >= 0
        return torch.where(hit.unsqueeze(-1), trained[which.clamp(min=0)], out)
    return forward


def _head_forward(site: _TokenSite, plan: _Plan):
    import torch
    import torch.nn.functional as F

    weight = site.weight
    if site.columns is None:  # no adapter of the set trains tokens here
        return lambda h, *args, **kwargs: F.linear(h, weight)
    columns, rows_t, valid = plan.tokens[id(site)]  # [rows, k], [rows, hidden, k], [rows, k]

    def forward(h, *args, **kwargs):
        logits = F.linear(h, weight)
        shape = logits.shape
        flat = logits.reshape(shape[0], -1, shape[-1])
        where = columns.unsqueeze(1).expand(-1, flat.shape[1], -1)
        trained = torch.bmm(h.reshape(shape[0], -1, h.shape[-1]).to(rows_t.dtype), rows_t)
        new = torch.where(valid.unsqueeze(1), trained.to(flat.dtype), flat.gather(2, where))
        return flat.scatter(2, where, new).reshape(shape)
    return forward


@contextlib.contextmanager
def loading_beside_trained_tokens(peft_model, adapter_dir: str, name: str) -> Iterator[None]:
    """Let `peft_model.load_adapter(adapter_dir, adapter_name=name)` load an adapter that
    trains no tokens into a model whose loaded adapters do: PEFT asks every trainable-token
    wrapper for the new adapter's rows (a KeyError when there are none). While it loads,
    such wrappers ask for nothing for `name`, so the adapter leaves the embedding as the
    base has it, as it would alone."""
    import json
    from pathlib import Path

    from peft.utils.other import TrainableTokensWrapper

    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    wrappers = [m for m in peft_model.modules() if isinstance(m, TrainableTokensWrapper)]
    if config.get("trainable_token_indices") or not wrappers:
        yield
        return
    for wrapper in wrappers:
        own = wrapper.adapter_state_dict_load_map
        wrapper.adapter_state_dict_load_map = (
            lambda adapter, own=own: {} if adapter == name else own(adapter))
    try:
        yield
    finally:
        for wrapper in wrappers:
            del wrapper.adapter_state_dict_load_map
