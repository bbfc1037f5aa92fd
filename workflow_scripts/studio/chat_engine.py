"""One copy of each base model in memory, its adapters attached, requests batched across them.

A request names a base model or an experiment. An experiment's adapter is loaded once into
the PEFT model wrapping its base (a QLoRA adapter into the 4-bit copy of its base). By
default every request for one loaded base joins that base's running batch (batching.py):
each row names its adapter, a base-model row runs unadapted, and the queue in front has a
fixed depth (429 beyond it). With `batching=False` the pool serves as it did before
batching: one `generate` at a time per base (its lock), the adapter made active for that
request only; the benchmark keeps it as the baseline. Either way generation stops between
two tokens once its `cancel` event is set (a client that went away, or a stop string).
"""
from __future__ import annotations

import collections
import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from workflow_scripts.evaluation.generation import (generation_config, only_configured_decoding,
                                                    stop_token_ids)
from workflow_scripts.studio.batching import BASE_ROW, BatchEngine, Overloaded, Row
from workflow_scripts.studio.catalog import Catalog
from workflow_scripts.studio.errors import BadRequest, UnknownName
from workflow_scripts.studio.mixed_lora import loading_beside_trained_tokens
from workflow_scripts.studio.files import read_json_cached


@dataclass(frozen=True)
class Target:
    """What a model id stands for: a base model, in 4-bit or not, with or without an adapter."""

    model_id: str
    base_model: str
    quantized: bool
    experiment: str | None = None


@dataclass
class Decoding:
    max_tokens: int | None = None
    temperature: float | None = None  # None or 0: greedy
    top_p: float | None = None
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return not self.temperature


@dataclass
class PreparedChat:
    target: Target
    input_ids: list[int]
    max_new_tokens: int
    decoding: Decoding
    call_format: str | None = None  # tools were given: the template's call format


@dataclass
class Outcome:
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | cancelled


@dataclass
class LoadedBase:
    """A base model in memory, wrapped in a PeftModel once its first adapter arrives."""

    model: Any
    tokenizer: Any
    stop_ids: list[int]
    lock: threading.Lock = field(default_factory=threading.Lock)
    adapters: dict[str, str] = field(default_factory=dict)  # experiment -> PEFT adapter name
    mix_keys: dict[str, frozenset] = field(default_factory=dict)  # PEFT adapter name -> mix key
    files: dict[str, tuple] = field(default_factory=dict)  # experiment -> its adapter files' identity
    retired: list[str] = field(default_factory=list)  # adapters replaced by a retrained one
    loads: int = 0  # adapters loaded so far (names are never reused)

    def loaded_names(self) -> list[str]:
        """Every adapter in the model: the experiments' own, and replaced ones that rows
        still use."""
        return [*self.adapters.values(), *self.retired]


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def adapter_identity(adapter_dir: Path) -> tuple:
    """The adapter files' names, sizes and modification times: a retrained adapter has
    another identity, so it is loaded again."""
    found = []
    for name in ADAPTER_FILES:
        try:
            stat = (adapter_dir / name).stat()
        except FileNotFoundError:
            continue
        found.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


class TokenStreamer:
    """A transformers streamer that hands each newly decoded piece of text to `on_text`
    (holding back only a character whose bytes are not all generated yet)."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.tokens: list[int] = []
        self.sent_chars = 0
        self.prompt_skipped = False

    def put(self, value) -> None:
        if not self.prompt_skipped:  # generate() first passes the prompt
            self.prompt_skipped = True
            return
        self.put_ids(value.reshape(-1).tolist())

    def put_ids(self, ids: list[int]) -> None:
        self.tokens.extend(ids)
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return
        if len(text) > self.sent_chars:
            self.on_text(text[self.sent_chars:])
            self.sent_chars = len(text)
        if text.endswith("\n"):  # a line is done: decode from here on (not the whole answer
            self.tokens, self.sent_chars = [], 0  # each time, which grows with its square)


def _cancel_criteria(cancel: threading.Event):
    import torch
    from transformers import StoppingCriteria

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool,
                              device=input_ids.device)

    return Cancelled()


def mix_key(model, adapter: str) -> frozenset:
    """Which adapters may share a batch with `adapter`: PEFT mixes LoRA adapters freely, but
    a wrapper of trainable tokens or saved modules serves only the adapters it wraps (and
    the base), so those adapters share only with adapters wrapping the same modules."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    wrapped = frozenset(name for name, module in model.named_modules()
                        if isinstance(module, AuxiliaryTrainingWrapper) and adapter in module._adapters)
    return wrapped or frozenset({"lora"})


def _joins_running(model) -> bool:
    """Whether new rows may join a running batch: not with sliding-window attention, whose
    cache layers are cropped (its rows then wait for the batch to empty)."""
    config = model.config
    types = getattr(config, "layer_types", None) or []
    return not (getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None)) \
        and all(t == "full_attention" for t in types)


_IMPORT_LOCK = threading.Lock()
_IMPORTED = threading.Event()


def heavy_imports() -> None:
    """Import torch, transformers and peft once, in one thread: transformers resolves its
    names lazily, and two threads resolving them at once can see a half-made module."""
    if _IMPORTED.is_set():
        return
    with _IMPORT_LOCK:
        if _IMPORTED.is_set():
            return
        import torch  # noqa: F401
        from peft import PeftModel  # noqa: F401
        from transformers import (AutoModelForCausalLM, AutoTokenizer,  # noqa: F401
                                  BitsAndBytesConfig, GenerationConfig, StoppingCriteria)

        _IMPORTED.set()


class ModelPool:
    """Loads base models and adapters on first use and serves generations from them."""

    def __init__(self, catalog: Catalog, max_tokens_cap: int = 512, threads: int | None = None,
                 batching: bool = True, max_batch: int = 16, queue_depth: int = 32):
        self.catalog = catalog
        self.max_tokens_cap = max_tokens_cap
        self.threads = threads
        self.batching, self.max_batch, self.queue_depth = batching, max_batch, queue_depth
        self.loaded: dict[tuple[str, bool], LoadedBase] = {}
        self.engines: dict[tuple[str, bool], BatchEngine] = {}
        self._serial_count: dict[tuple[str, bool], int] = collections.defaultdict(int)
        self._serial_lock = threading.Lock()
        self._load_lock = threading.Lock()  # one model load at a time
        self._tokenizer_lock = threading.Lock()
        self._tokenizers: dict[str, tuple[Any, threading.Lock]] = {}

    # Names.
    def target(self, model_id: str) -> Target | None:
        """What a model id stands for, if it is ready to chat (None otherwise)."""
        catalog = self.catalog
        if model_id in catalog.experiments:
            exp = catalog.experiments[model_id]
            if catalog.adapter_ready(model_id) and catalog.base_model_ready(exp["base_model"]):
                return Target(model_id, exp["base_model"], exp["method"] == "qlora", model_id)
        elif model_id in catalog.base_models and catalog.base_model_ready(model_id):
            return Target(model_id, model_id, False)
        return None

    def available(self) -> dict[str, Target]:
        """Every model id a request may name: built base models and trained adapters."""
        self.catalog.reload()
        names = [*self.catalog.base_models, *self.catalog.experiments]
        return {name: target for name in names if (target := self.target(name)) is not None}

    def resolve(self, model_id: str) -> Target:
        self.catalog.reload()
        target = self.target(model_id)
        if target is not None:
            return target
        known = set(self.catalog.experiments) | set(self.catalog.base_models)
        reason = "not trained or built yet:" if model_id in known else ""
        raise UnknownName("model", model_id, self.available(), reason=reason)

    # Requests.
    def context_length(self, base_model: str) -> int:
        config = read_json_cached(self.catalog.model_dir(base_model) / "config.json")
        for key in ("max_position_embeddings", "n_positions", "seq_length"):
            if isinstance(config.get(key), int):
                return config[key]
        return 2048

    def prepare(self, model_id: str, messages: list[dict], decoding: Decoding,
                tools: list[dict] | None = None) -> PreparedChat:
        """Render (with `tools`, function schemas, if any) and tokenize the conversation and
        check it against the limits (400)."""
        from jinja2 import TemplateError

        from workflow_scripts.evaluation.tool_calls import call_format
        from workflow_scripts.training.chat_tokenize import render

        target = self.resolve(model_id)
        heavy_imports()
        if decoding.max_tokens is not None and decoding.max_tokens > self.max_tokens_cap:
            raise BadRequest(f"max_tokens {decoding.max_tokens} is above this studio's cap of "
                             f"{self.max_tokens_cap}", param="max_tokens")
        tokenizer, lock = self._tokenizer(target.base_model)
        with lock:
            try:
                text = render(tokenizer, messages, generation_prompt=True, tools=tools)
            except (TemplateError, ValueError) as err:  # the template's own checks of the turns
                raise BadRequest(f"{model_id}'s chat template refused the messages: {err}",
                                 param="messages") from None
            input_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        context = self.context_length(target.base_model)
        if len(input_ids) >= context:
            raise BadRequest(f"the prompt is {len(input_ids)} tokens; {model_id}'s context is "
                             f"{context} tokens", param="messages")
        wanted = decoding.max_tokens or self.max_tokens_cap
        return PreparedChat(target, input_ids, min(wanted, context - len(input_ids)), decoding,
                            call_format(tokenizer.chat_template) if tools else None)

    def submit(self, chat: PreparedChat, cancel: threading.Event,
               report: Callable[[str, Any], None]) -> None:
        """Start a generation without waiting for it: `report` gets ("text", piece)... then
        ("done", Outcome) or ("error", exception), from another thread. Raises Overloaded
        (nothing started) when the base's queue is full. Loads the model first if needed."""
        base = self._base(chat.target)
        key = (chat.target.base_model, chat.target.quantized)
        if not self.batching:
            return self._submit_serial(key, chat, cancel, report)
        with self._load_lock:
            engine = self.engines.get(key)
            if engine is None:
                label = f"{key[0]} (4-bit)" if key[1] else key[0]
                engine = self.engines[key] = BatchEngine(
                    label, base, self.max_batch, self.queue_depth, joins_running=_joins_running(base.model))
        streamer = TokenStreamer(base.tokenizer, lambda text: report("text", text))
        streamer.prompt_skipped = True
        prompt_tokens = len(chat.input_ids)

        def on_event(kind: str, value: Any) -> None:
            if kind == "token":
                streamer.put_ids([value])
            elif kind == "done":
                streamer.end()
                tokens, reason = value
                report("done", Outcome(prompt_tokens, tokens, reason))
            else:
                report("error", value)

        adapter = base.adapters[chat.target.experiment] if chat.target.experiment else BASE_ROW
        decoding = chat.decoding
        engine.submit(Row(prompt=list(chat.input_ids), max_new_tokens=chat.max_new_tokens,
                          adapter=adapter, mix_key=base.mix_keys.get(adapter, frozenset()),
                          temperature=decoding.temperature, top_p=decoding.top_p,
                          seed=decoding.seed, cancel=cancel, report=on_event))

    def _submit_serial(self, key, chat: PreparedChat, cancel: threading.Event,
                       report: Callable[[str, Any], None]) -> None:
        """The unbatched path: a thread per request, queued on the base's lock (bounded)."""
        with self._serial_lock:
            if self._serial_count[key] >= 1 + self.queue_depth:
                raise Overloaded(key[0], self._serial_count[key], 1)
            self._serial_count[key] += 1

        def work() -> None:
            try:
                report("done", self.generate(chat, cancel, lambda text: report("text", text)))
            except Exception as err:  # reported to the client, not lost in the thread
                report("error", err)
            finally:
                with self._serial_lock:
                    self._serial_count[key] -= 1

        threading.Thread(target=work, name=f"generate-{chat.target.model_id}", daemon=True).start()

    def load(self) -> dict[str, dict]:
        """Per loaded base: rows running in its batch, requests waiting, and its device."""
        out = {}
        for key, base in list(self.loaded.items()):
            out[f"{key[0]} (4-bit)" if key[1] else key[0]] = {"device": str(base.model.device)}
        for (name, quantized), engine in list(self.engines.items()):
            out.setdefault(f"{name} (4-bit)" if quantized else name, {}).update(engine.load())
        for (name, quantized), count in list(self._serial_count.items()):
            out.setdefault(f"{name} (4-bit)" if quantized else name, {}).update(
                {"running": min(count, 1), "waiting": max(count - 1, 0)})
        return out

    def generate(self, chat: PreparedChat, cancel: threading.Event,
                 on_text: Callable[[str], None]) -> Outcome:
        """Run one generation alone, holding the base (blocking: call it from a worker thread)."""
        import torch

        base = self._base(chat.target)
        with base.lock:  # requests for one base queue here
            if cancel.is_set():
                return Outcome(len(chat.input_ids), 0, "cancelled")
            streamer = TokenStreamer(base.tokenizer, on_text)
            with self._adapter_active(base, chat.target), only_configured_decoding(base.model), \
                    torch.no_grad():
                if chat.decoding.seed is not None:
                    torch.manual_seed(chat.decoding.seed)
                ids = torch.tensor([chat.input_ids], device=base.model.device)
                out = base.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids),
                    generation_config=self._generation_config(base, chat),
                    streamer=streamer, stopping_criteria=[_cancel_criteria(cancel)])
        new = out[0, ids.shape[1]:].tolist()
        stops = set(base.stop_ids)
        if cancel.is_set():
            reason = "cancelled"
        elif new and new[-1] in stops:
            reason = "stop"
        else:
            reason = "length" if len(new) >= chat.max_new_tokens else "stop"
        return Outcome(len(chat.input_ids), len(new), reason)

    # Loading.
    def warm_up(self) -> None:
        """Import the heavy libraries ahead of the first chat (seconds on a busy CPU)."""
        heavy_imports()
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    def _tokenizer(self, base_model: str):
        from workflow_scripts.models.loading import load_tokenizer

        model_dir = str(self.catalog.model_dir(base_model))
        with self._tokenizer_lock:
            if model_dir not in self._tokenizers:
                trust = self.catalog.base_models[base_model].get("trust_remote_code", False)
                self._tokenizers[model_dir] = (load_tokenizer(model_dir, trust), threading.Lock())
            return self._tokenizers[model_dir]

    def _base(self, target: Target) -> LoadedBase:
        from workflow_scripts.models.loading import load_model, load_tokenizer

        heavy_imports()
        key = (target.base_model, target.quantized)
        with self._load_lock:
            if key not in self.loaded:
                model_dir = str(self.catalog.model_dir(target.base_model))
                trust = self.catalog.base_models[target.base_model].get("trust_remote_code", False)
                model = load_model(model_dir, trust_remote_code=trust,
                                   quantization="4bit" if target.quantized else None)
                model.eval()
                tokenizer = load_tokenizer(model_dir, trust)
                self.loaded[key] = LoadedBase(model, tokenizer, stop_token_ids(model, tokenizer))
            base = self.loaded[key]
        if target.experiment:
            identity = adapter_identity(self.catalog.paths(target.experiment).adapter)
            if base.files.get(target.experiment) != identity or base.retired:
                with base.lock:
                    self._attach(base, target.experiment, identity, self.engines.get(key))
        return base

    def _attach(self, base: LoadedBase, experiment: str, identity: tuple,
                engine: BatchEngine | None) -> None:
        """Load an experiment's adapter into the base, or its retrained adapter in place of
        the one loaded (which leaves once no row uses it). Under the base's lock."""
        from peft import PeftModel

        if base.files.get(experiment) == identity:
            self._drop_retired(base, engine)
            return
        # PEFT adapter names become module keys, which may not contain dots.
        name = f"adapter_{base.loads}"
        adapter_dir = str(self.catalog.paths(experiment).adapter)
        if not base.loaded_names():
            base.model = PeftModel.from_pretrained(base.model, adapter_dir, adapter_name=name)
        else:
            with loading_beside_trained_tokens(base.model, adapter_dir, name):
                base.model.load_adapter(adapter_dir, adapter_name=name)
        base.model.eval()
        base.loads += 1
        base.mix_keys[name] = mix_key(base.model, name)
        if experiment in base.adapters:
            base.retired.append(base.adapters[experiment])
        base.adapters[experiment], base.files[experiment] = name, identity
        self._drop_retired(base, engine)

    @staticmethod
    def _drop_retired(base: LoadedBase, engine: BatchEngine | None) -> None:
        """Delete replaced adapters that no running or waiting row uses (under the base's lock,
        so no step is under way)."""
        used = engine.adapters_in_use() if engine is not None else set()
        for name in [n for n in base.retired if n not in used]:
            base.model.delete_adapter(name)
            base.retired.remove(name)
            del base.mix_keys[name]

    @staticmethod
    def _adapter_active(base: LoadedBase, target: Target):
        if target.experiment:
            base.model.set_adapter(base.adapters[target.experiment])
            return contextlib.nullcontext()
        if base.adapters:
            return base.model.disable_adapter()
        return contextlib.nullcontext()

    @staticmethod
    def _generation_config(base: LoadedBase, chat: PreparedChat):
        """Exactly the request's decoding, nothing inherited from the model's defaults."""
        decoding = chat.decoding
        settings = {"max_new_tokens": chat.max_new_tokens, "do_sample": not decoding.greedy,
                    "temperature": decoding.temperature or 1.0,
                    "top_p": decoding.top_p if decoding.top_p is not None else 1.0}
        return generation_config(settings, base.stop_ids, base.tokenizer.pad_token_id)
