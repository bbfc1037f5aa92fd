"""Continuous batching: every request for one loaded base model decodes in one batch.

One worker thread per loaded base runs a step loop. At each step it decodes one token for
every running row in a single forward pass, then admits waiting requests (prefilled
together, left-padded, their key/value cache joined to the running one). Rows of
different adapters share the pass through mixed_lora.py's forward (each row's LoRA
matrices gathered once per batch composition, two batched matmuls per layer; a batch of one
adapter, a lone request say, runs PEFT's single-adapter arithmetic), or, for layers it does
not handle (DoRA, quantized bases), PEFT's mixed-adapter inference (`adapter_names`, one per
row; `__base__` runs the base unadapted). Each row keeps its own decoding (greedy, or
temperature/top-p drawing from its own seeded `random.Random`, so a seed gives the same
answer whatever else is in the batch, on any device), its own stop tokens and token
budget, and leaves the batch at the first step after its `cancel` event is set (a client
that went away, a stop string).
Its cache rows leave with it, and cache columns no row needs any more are trimmed.

The queue in front of the batch has a fixed depth: beyond it a request is refused at once
with `Overloaded` (429), so a flood never piles up threads or memory.
"""
from __future__ import annotations

import collections
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from workflow_scripts.studio.mixed_lora import MixedAdapters

BASE_ROW = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class Overloaded(RuntimeError):
    """The base model's queue is full (429); `retry_after` is a guess in whole seconds."""

    def __init__(self, base_model: str, depth: int, retry_after: int):
        self.retry_after = retry_after
        super().__init__(f"{base_model} is busy: {depth} requests are already running or "
                         f"queued (the limit); retry after {retry_after} s")


@dataclass
class Row:
    """One request in the batch."""

    prompt: list[int]
    max_new_tokens: int
    adapter: str  # a PEFT adapter name, or BASE_ROW
    mix_key: frozenset  # rows may share a batch when their keys are equal (or one is empty)
    temperature: float | None
    top_p: float | None
    seed: int | None
    cancel: threading.Event
    report: Callable[[str, Any], None]  # ("token", id), then ("done", (tokens, reason)) or ("error", exc)
    tokens: list[int] = field(default_factory=list)
    length: int = 0  # tokens in the cache for this row (prompt + fed answer tokens)
    rng: random.Random | None = None  # a sampled row's uniform draws
    finished: bool = False
    started: float = 0.0


def draws(seed: int | None) -> random.Random:
    """A sampled row's source of uniform draws: seeded by the request, or at random."""
    return random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "little"))


def next_tokens(logits, rows: list[Row]):
    """Each row's next token, from the last-position logits [rows, vocabulary] (fp32), as a
    tensor on the logits' device: an argmax for greedy rows; for sampled rows temperature,
    then top-p (as transformers' TopPLogitsWarper: the least likely tokens whose total
    probability stays within 1 - top_p are dropped, never the most likely one), then the
    token where the row's next uniform draw falls in the cumulative distribution.

    The draws come from each row's own `random.Random` (seeded by the request), one number
    per token, so a seed picks the same tokens whatever else is in the batch and on any
    device, and no generator meets a tensor of another device."""
    import torch

    tokens = logits.argmax(-1)
    sampled = [i for i, row in enumerate(rows) if row.temperature]
    if not sampled:
        return tokens
    device = logits.device

    def column(values: list[float]):
        return torch.tensor(values, dtype=logits.dtype, device=device).unsqueeze(1)

    which = torch.tensor(sampled, dtype=torch.long, device=device)
    scores = logits.index_select(0, which) / column([rows[i].temperature for i in sampled])
    top_p = [rows[i].top_p if rows[i].top_p is not None else 1.0 for i in sampled]
    if min(top_p) < 1.0:
        ordered, order = torch.sort(scores, descending=False, stable=True)
        drop = ordered.softmax(-1).cumsum(-1) <= 1 - column(top_p)
        drop[:, -1] = False
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    cumulative = scores.softmax(-1).cumsum(-1)
    draws = column([rows[i].rng.random() for i in sampled]) * cumulative[:, -1:]
    picked = torch.searchsorted(cumulative, draws, right=True).clamp(max=logits.shape[-1] - 1)
    return tokens.index_copy(0, which, picked.squeeze(1))


class KVBatch:
    """The running rows' cache, attention mask (left-padded) and next positions."""

    def __init__(self, cache, mask, rows: list[Row]):
        self.cache, self.mask, self.rows = cache, mask, rows

    def join(self, other: "KVBatch") -> None:
        """Add `other`'s rows, left-padding the shorter cache so the columns line up."""
        import torch
        import torch.nn.functional as F

        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(theirs.values, width)])
        self.mask = torch.cat([F.pad(self.mask, (width - self.mask.shape[1], 0)),
                               F.pad(other.mask, (width - other.mask.shape[1], 0))])
        self.rows += other.rows

    def keep(self, keep: list[int]) -> None:
        """Keep only the rows at `keep`, then drop the leading columns none of them uses."""
        import torch

        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        used = self.mask.any(0).nonzero()
        width = self.mask.shape[1]
        start = int(used[0]) if len(used) else width
        for layer in self.cache.layers:
            rows = index.to(layer.keys.device)
            # A sliding-window layer holds only the last columns of the mask's width (and
            # counts every column it saw): it loses only the dropped columns it still holds.
            cut = max(0, start - (width - layer.keys.shape[2]))
            layer.keys = layer.keys.index_select(0, rows)[:, :, cut:]
            layer.values = layer.values.index_select(0, rows)[:, :, cut:]
            if getattr(layer, "is_sliding", False):
                layer.cumulative_length -= start
        self.mask = self.mask[:, start:]
        self.rows = [self.rows[i] for i in keep]


def _pad_left(tensor, width: int):
    import torch.nn.functional as F

    return F.pad(tensor, (0, 0, width - tensor.shape[2], 0))


class BatchEngine:
    """The step loop of one loaded base model (see the module's docstring).

    `base` is the chat engine's LoadedBase: its `lock` is held for each step, so attaching
    an adapter (which rewrites modules) happens between steps; a row's `mix_key` says which
    adapters may share a batch when PEFT's mixed forward is needed (it cannot mix adapters
    with and without trainable tokens); the fast forward mixes any.
    """

    IDLE_EXIT_S = 2.0  # the worker thread ends after this long without rows

    def __init__(self, name: str, base, max_rows: int, queue_depth: int, joins_running: bool = True):
        self.name, self.base = name, base
        self.max_rows, self.queue_depth = max_rows, queue_depth
        self.joins_running = joins_running  # False: new rows wait for an empty batch
        self.waiting: collections.deque[Row] = collections.deque()
        self.batch: KVBatch | None = None
        self.in_hand: list[Row] = []  # rows taken from `waiting` for the step under way
        self.condition = threading.Condition()
        self.thread: threading.Thread | None = None
        self.seconds_per_request = 1.0  # a running average, for Retry-After
        self.outcomes: collections.Counter = collections.Counter()  # finish reason -> requests
        self._layers: list = []
        self._layers_for: tuple | None = None
        self._mixed: MixedAdapters | None = None
        self._mixer_for: tuple | None = None

    # Callers.
    def submit(self, row: Row) -> None:
        """Queue a row (or raise Overloaded at once); the worker starts if it is not running."""
        if row.temperature:
            row.rng = draws(row.seed)
        with self.condition:
            if len(self.waiting) + self.running >= self.max_rows + self.queue_depth:
                ahead = len(self.waiting) + self.running
                wait = self.seconds_per_request * ahead / max(self.max_rows, 1)
                raise Overloaded(self.name, ahead, max(1, math.ceil(wait)))
            row.started = time.perf_counter()
            self.waiting.append(row)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name=f"batch-{self.name}", daemon=True)
                self.thread.start()
            self.condition.notify()

    @property
    def running(self) -> int:
        return len(self.batch.rows) if self.batch else 0

    def adapters_in_use(self) -> set[str]:
        """The adapters of the rows running, taken for a step, or waiting."""
        with self.condition:
            rows = [*(self.batch.rows if self.batch else []), *self.in_hand, *self.waiting]
            return {row.adapter for row in rows}

    def load(self) -> dict:
        with self.condition:
            return {"running": self.running, "waiting": len(self.waiting),
                    "max_rows": self.max_rows, "queue_depth": self.queue_depth}

    # The worker.
    def _loop(self) -> None:
        while True:
            with self.condition:
                if not self.waiting and not self.running:
                    self.condition.wait(self.IDLE_EXIT_S)
                    if not self.waiting and not self.running:
                        self.thread = None
                        return
            try:
                self._step()
            except Exception as err:  # every row learns of it; the loop goes on with none
                self._fail_all(err)

    def _take_waiting(self) -> list[Row]:
        """Waiting rows that fit the batch now (same mix key, room, and a joinable batch)."""
        with self.condition:
            for row in [r for r in self.waiting if r.cancel.is_set()]:
                self.waiting.remove(row)
                self._finish(row, "cancelled")
            if self.running and not self.joins_running:
                return []
            mixes_all = self._mixer() is not None  # the fast forward mixes any adapters
            key = next((r.mix_key for r in (self.batch.rows if self.batch else []) if r.mix_key), None)
            taken = []
            for row in list(self.waiting):
                if self.running + len(taken) >= self.max_rows:
                    break
                if not mixes_all and row.mix_key and key is not None and row.mix_key != key:
                    break  # first come, first served: it waits for the batch to drain
                key = key or (row.mix_key or None)
                self.waiting.remove(row)
                taken.append(row)
            return taken

    def _step(self) -> None:
        import torch

        with self.base.lock, torch.no_grad():
            # Rows taken for this step stay in `in_hand` until they are in the batch, so a
            # failure anywhere in the step reaches them too (_fail_all).
            self.in_hand = self._take_waiting()
            self._drop_cancelled()
            if self.batch is not None:  # first, so running rows lose no step to arrivals
                self._decode()
            if self.in_hand:
                try:
                    group = self._prefill(self.in_hand)
                except Exception as err:  # these rows are not in the batch yet
                    self._fail(self.in_hand, err)
                    self.in_hand = []
                    return
                if group.rows:
                    if self.batch is None:
                        self.batch = group
                    else:
                        self.batch.join(group)
            self.in_hand = []

    def _forward(self, input_ids, mask, positions, cache, rows: list[Row]):
        inputs = dict(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                      past_key_values=cache, use_cache=True, logits_to_keep=1)
        if not self.base.adapters:
            return self.base.model(**inputs)
        names = [r.adapter for r in rows]
        mixer = self._mixer()
        if mixer is not None:
            with mixer.applied(names):
                return self.base.model.get_base_model()(**inputs)
        self._activate(rows)
        # What PeftModel does with `adapter_names=`: each adapter layer gets the row names
        # through a pre-forward hook. Done here with the layers found once per adapter set,
        # since PEFT walks every module twice per call, a fifth of a small model's step.

        def hook(_module, args, kwargs):
            kwargs["adapter_names"] = names
            return args, kwargs

        handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in self._adapter_layers()]
        try:
            return self.base.model.get_base_model()(**inputs)
        finally:
            for handle in handles:
                handle.remove()

    def _mixer(self) -> MixedAdapters | None:
        """The fast mixed forward of the loaded adapters (None: PEFT's own is needed);
        rebuilt when an adapter is attached. Call it holding the base's lock."""
        key = tuple(self.base.loaded_names())
        if self._mixer_for != key:
            self._mixed = MixedAdapters.build(self.base.model, list(key)) if key else None
            self._mixer_for = key
        return self._mixed

    def _adapter_layers(self) -> list:
        """The modules that take `adapter_names` (LoRA layers, trainable-token wrappers)."""
        key = tuple(self.base.loaded_names())
        if self._layers_for != key:
            from peft.tuners.lora import LoraLayer
            from peft.utils.other import AuxiliaryTrainingWrapper

            self._layers = [m for m in self.base.model.modules()
                            if isinstance(m, (LoraLayer, AuxiliaryTrainingWrapper))]
            self._layers_for = key
        return self._layers

    def _activate(self, rows: list[Row]) -> None:
        """PEFT's wrappers of trainable tokens pass a mixed batch through only when the
        active adapter is one they wrap: make it an adapter of the batch's mix key."""
        keyed = next((r for r in rows if r.mix_key), None)
        if keyed and self.base.model.active_adapter != keyed.adapter:
            self.base.model.set_adapter(keyed.adapter)

    def _prefill(self, rows: list[Row]) -> KVBatch:
        import torch

        device = self.base.model.device
        width = max(len(r.prompt) for r in rows)
        pad = self.base.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows],
                            device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(ids, mask, positions, None, rows)
        for row in rows:
            row.length = len(row.prompt)
        group = KVBatch(out.past_key_values, mask, list(rows))
        self._advance(group, out.logits[:, -1, :].float())
        return group

    def _decode(self) -> None:
        import torch

        batch = self.batch
        device = batch.mask.device
        ids = torch.tensor([[r.tokens[-1]] for r in batch.rows], device=device)
        positions = torch.tensor([[r.length] for r in batch.rows], device=device)
        batch.mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
        attention = batch.mask
        if self.joins_running and self._sdpa() and not bool(batch.mask[:, 0].all()):
            # Left padding, full attention: each row's one query sees its unpadded columns.
            # Given as the 4-D mask transformers would build from it, which it then skips
            # building (a tenth of a small model's step). Only SDPA reads a boolean mask as
            # "may attend"; eager attention adds the mask to the scores, so it gets the 2-D
            # one and transformers builds its additive mask.
            attention = batch.mask.bool()[:, None, None, :]
        out = self._forward(ids, attention, positions, batch.cache, batch.rows)
        for row in batch.rows:
            row.length += 1
        self._advance(batch, out.logits[:, -1, :].float())

    def _sdpa(self) -> bool:
        return getattr(self.base.model.config, "_attn_implementation", None) == "sdpa"

    def _advance(self, batch: KVBatch, logits) -> None:
        """Pick each row's next token, report it, and let finished rows leave the batch."""
        stops = set(self.base.stop_ids)
        keep = []
        chosen = next_tokens(logits, batch.rows).tolist()  # one copy to the host per step
        for i, row in enumerate(batch.rows):
            if row.cancel.is_set():
                self._finish(row, "cancelled")
                continue
            token = chosen[i]
            row.tokens.append(token)
            row.report("token", token)
            if token in stops:
                self._finish(row, "stop")
            elif len(row.tokens) >= row.max_new_tokens:
                self._finish(row, "length")
            else:
                keep.append(i)
        if len(keep) < len(batch.rows):
            if keep:
                batch.keep(keep)
            else:
                batch.rows = []
        if batch is self.batch and not batch.rows:
            self.batch = None

    def _drop_cancelled(self) -> None:
        batch = self.batch
        if batch is None:
            return
        keep = [i for i, r in enumerate(batch.rows) if not r.cancel.is_set()]
        for row in batch.rows:
            if row.cancel.is_set():
                self._finish(row, "cancelled")
        if not keep:
            self.batch = None
        elif len(keep) < len(batch.rows):
            batch.keep(keep)

    def _finish(self, row: Row, reason: str) -> None:
        if row.finished:
            return
        row.finished = True
        elapsed = time.perf_counter() - row.started
        self.seconds_per_request = 0.9 * self.seconds_per_request + 0.1 * elapsed
        self.outcomes[reason] += 1
        row.report("done", (len(row.tokens), reason))

    def _fail_all(self, err: Exception) -> None:
        """A step failed: every running row and every row taken for the step gets the error
        (their clients would otherwise wait for ever). A failure before any row was taken
        would meet the waiting rows again at every step, so they get it too."""
        with self.condition:
            rows = (list(self.batch.rows) if self.batch else []) + self.in_hand
            if not rows:
                rows = list(self.waiting)
                self.waiting.clear()
            self.batch, self.in_hand = None, []
        self._fail(rows, err)

    @staticmethod
    def _fail(rows: list[Row], err: Exception) -> None:
        for row in rows:
            if not row.finished:
                row.finished = True
                row.report("error", err)
