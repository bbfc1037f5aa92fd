"""The batch engine (studio/batching.py) without a server: a random Qwen2 (random_chat_models.py)
served by one BatchEngine, each row's answer compared with `model.generate` on that row
alone, token for token (fp32, CPU), under eager attention and with sliding-window layers;
sampling checked for the device of every tensor it touches and for its seeds."""
from __future__ import annotations

import queue
import threading
from pathlib import Path

import pytest
import torch
from random_chat_models import random_base
from torch.utils._python_dispatch import TorchDispatchMode

from workflow_scripts.evaluation.generation import stop_token_ids
from workflow_scripts.studio.batching import BASE_ROW, BatchEngine, Row, draws, next_tokens
from workflow_scripts.studio.chat_engine import LoadedBase, _joins_running

WAIT_S = 60


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    # never_ends: greedy answers run to their token limit, so rows leave at chosen steps
    return random_base(tmp_path_factory.mktemp("engine") / "rand", never_ends=True)


def load(base_dir: Path, **config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, **config).eval()
    return model, AutoTokenizer.from_pretrained(base_dir)


class Answer:
    """One row's events, as a client of the engine sees them."""

    def __init__(self):
        self.tokens: list[int] = []
        self.events: queue.Queue = queue.Queue()

    def report(self, kind: str, value) -> None:
        if kind == "token":
            self.tokens.append(value)
        else:
            self.events.put((kind, value))

    def end(self) -> tuple[str, object]:
        """("done", (tokens, reason)) or ("error", exception); fails if none comes."""
        try:
            return self.events.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError("the row never got an answer or an error") from None


def engine_of(model, tokenizer, **settings) -> BatchEngine:
    base = LoadedBase(model, tokenizer, stop_token_ids(model, tokenizer))
    return BatchEngine("rand", base, settings.pop("max_rows", 16), settings.pop("queue_depth", 32),
                       joins_running=_joins_running(model), **settings)


def submit(engine: BatchEngine, prompt: list[int], max_new_tokens: int, **decoding) -> Answer:
    answer = Answer()
    engine.submit(Row(prompt=prompt, max_new_tokens=max_new_tokens, adapter=BASE_ROW,
                      mix_key=frozenset(), temperature=decoding.get("temperature"),
                      top_p=decoding.get("top_p"), seed=decoding.get("seed"),
                      cancel=threading.Event(), report=answer.report))
    return answer


def alone(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 14, (count,), generator=generator).tolist()
    return [torch.randint(10, 200, (n,), generator=generator).tolist() for n in lengths]


def batched_equals_alone(model, tokenizer, budgets: list[int], waves: int = 2) -> None:
    """Rows of different prompt lengths and budgets (so rows leave mid-batch), the second
    half joining a running batch; each answers what it answers alone."""
    engine = engine_of(model, tokenizer)
    asked = prompts(len(budgets))
    half = len(asked) // waves
    answers = [submit(engine, p, n) for p, n in zip(asked[:half], budgets[:half])]
    while not answers[0].tokens:  # the batch is running: the next rows join it
        threading.Event().wait(0.01)
    answers += [submit(engine, p, n) for p, n in zip(asked[half:], budgets[half:])]
    for prompt, budget, answer in zip(asked, budgets, answers):
        assert answer.end() == ("done", (budget, "length"))
        assert answer.tokens == alone(model, prompt, budget), prompt


def test_eager_attention_batched_answers_equal_unbatched(base_dir):
    """Eager attention adds its mask to the scores: padding must be -inf there, not 0/1."""
    model, tokenizer = load(base_dir, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    batched_equals_alone(model, tokenizer, budgets=[12, 3, 20, 7, 16, 5])


def test_sliding_window_rows_leaving_keep_their_window(base_dir):
    """A sliding layer holds only the window's last columns: trimming the batch's leading
    columns after a row leaves must cut those layers by what they hold, and shift their
    count of columns seen, as the full layers and the mask are cut."""
    model, tokenizer = load(base_dir, use_sliding_window=True, sliding_window=6,
                            max_window_layers=1, layer_types=["full_attention", "sliding_attention"])
    assert model.config.layer_types[1] == "sliding_attention"
    engine = engine_of(model, tokenizer)
    assert not engine.joins_running  # rows of a sliding-window model wait for an empty batch
    batched_equals_alone(model, tokenizer, budgets=[14, 2, 20, 5, 9], waves=1)


def test_a_failing_step_answers_every_row_running_taken_or_waiting(base_dir):
    """A decoding step that raises (a CUDA out-of-memory, say) reaches the running rows and
    the rows taken from the queue for that step; the engine then serves new rows."""
    model, tokenizer = load(base_dir)
    engine = engine_of(model, tokenizer)
    paused, resume, failing = threading.Event(), threading.Event(), threading.Event()
    advance, decode = engine._advance, engine._decode

    def pausing(batch, logits):
        advance(batch, logits)
        if not paused.is_set():
            paused.set()
            assert resume.wait(WAIT_S)

    def broken():
        if failing.is_set():
            raise RuntimeError("CUDA out of memory (injected)")
        decode()

    engine._advance, engine._decode = pausing, broken
    first = submit(engine, [11, 12, 13], 50)
    assert paused.wait(WAIT_S)
    later = [submit(engine, p, 50) for p in prompts(3)]
    assert engine.load()["waiting"] == 3
    failing.set()
    resume.set()
    for answer in [first, *later]:
        kind, err = answer.end()
        assert kind == "error" and "injected" in str(err)
    assert engine.load() | {"max_rows": 0, "queue_depth": 0} == {
        "running": 0, "waiting": 0, "max_rows": 0, "queue_depth": 0}
    failing.clear()
    assert submit(engine, [11, 12], 4).end() == ("done", (4, "length"))


class DeviceLog(TorchDispatchMode):
    """The devices of every tensor and generator an operation is given."""

    def __init__(self):
        super().__init__()
        self.devices: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for value in [*args, *(kwargs or {}).values()]:
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, (torch.Tensor, torch.Generator)):
                    self.devices.add(item.device.type)
        return func(*args, **(kwargs or {}))


def sampling_row(temperature=None, top_p=None, seed=None) -> Row:
    row = Row(prompt=[1], max_new_tokens=1, adapter=BASE_ROW, mix_key=frozenset(),
              temperature=temperature, top_p=top_p, seed=seed, cancel=threading.Event(),
              report=lambda kind, value: None)
    row.rng = draws(seed) if temperature else None
    return row


def test_sampling_touches_only_the_logits_device():
    """On a GPU the logits are CUDA tensors: every tensor and generator the sampling meets
    must be on their device (a CPU generator fails torch.multinomial on CUDA logits)."""
    logits = torch.empty(4, 50, device="meta")
    rows = [sampling_row(), sampling_row(0.7, 0.9, 1), sampling_row(1.0, None, 2),
            sampling_row(0.5, 0.5, 3)]
    with DeviceLog() as log:
        tokens = next_tokens(logits, rows)
    assert tokens.device.type == "meta" and tokens.shape == (4,)
    assert log.devices == {"meta"}


def test_a_seed_draws_the_same_tokens_whatever_else_is_in_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(60, 3, 40)  # 60 steps of 3 rows
    own = sampling_row(0.8, 0.9, seed=1234)
    alone_tokens = [int(next_tokens(step[1:2], [own])) for step in logits]
    crowd = [sampling_row(), sampling_row(0.8, 0.9, seed=1234), sampling_row(1.3, None, seed=5)]
    crowd_tokens = [next_tokens(step, crowd).tolist()[1] for step in logits]
    assert alone_tokens == crowd_tokens
    assert len(set(alone_tokens)) > 5  # sampled, not greedy


def test_sampling_follows_temperature_and_top_p():
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    logits = probs.log()
    row = sampling_row(1.0, None, seed=0)
    counts = torch.bincount(torch.tensor([int(next_tokens(logits, [row])) for _ in range(6000)]),
                            minlength=3) / 6000
    assert torch.allclose(counts, probs[0], atol=0.025), counts
    nucleus = sampling_row(1.0, 0.8, seed=0)  # 0.1 is within 1 - 0.8: dropped
    counts = torch.bincount(torch.tensor([int(next_tokens(logits, [nucleus])) for _ in range(6000)]),
                            minlength=3) / 6000
    assert counts[2] == 0 and torch.allclose(counts[:2], torch.tensor([2 / 3, 1 / 3]), atol=0.025)
    greedy_rows = [sampling_row(), sampling_row(1e-4, None, seed=0)]  # a tiny temperature: argmax
    assert next_tokens(logits.expand(2, 3), greedy_rows).tolist() == [0, 0]


def test_the_gpu_check_of_the_studio_runs_on_the_cpu(tmp_path):
    """benchmarks/studio_gpu_check.py, which gpu_check.sh runs on a GPU, in its CPU mode:
    the studio's own command line, concurrent greedy and sampled chats to two adapters."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "benchmarks/studio_gpu_check.py", "--device", "cpu",
                           "--requests", "8", "--max-tokens", "8", "--json", str(tmp_path / "s.json")],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["answered"] == 8 and summary["errors"] == [] and summary["model_device"] == "cpu"
    assert summary["greedy_equal_alone"] == "4/4" and summary["seed_equal_alone"]
