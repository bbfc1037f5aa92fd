"""The chunked loss (token_loss.py) equals the full-logits loss, and its gradients match.

Checked on PEFT models as training builds them (LoRA, DoRA, QLoRA on CPU, trainable tokens
on a tied-embedding base, so that the output layer is the adapted one), on padded and on
packed batches, with chunks small enough that every batch spans several.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from test_training import conversations, make_job, run_training, write_data  # noqa: F401

from workflow_scripts.models.build_base_model import train_tokenizer
from workflow_scripts.training import token_loss
from workflow_scripts.training.chat_tokenize import tokenize_records
from workflow_scripts.training.packing import NUM_TOKENS_KEY, PackedCollator, pack_features
from workflow_scripts.training.token_loss import (IGNORE_INDEX, record_loss_sums, sequence_loss_sums,
                                                  training_loss)
from workflow_scripts.training.train_adapter import build_peft_model, padding_collator

TOKENS = ["<|im_start|>", "<|im_end|>"]


def save_tiny_model(kind: str, path: Path, **settings) -> Path:
    """A tiny random model of `kind` (a transformers model type) with `settings`, and its
    tokenizer, saved to `path`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = train_tokenizer(conversations(), vocab_size=300)
    config = AutoConfig.for_model(kind, vocab_size=len(tokenizer), hidden_size=32,
                                  intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=128, **settings)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2 whose output layer is its input embedding (as Qwen2-0.5B's)."""
    return save_tiny_model("qwen2", tmp_path_factory.mktemp("tied"), tie_word_embeddings=True)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """A few label positions per chunk, so that every batch is cut into several."""
    monkeypatch.setattr(token_loss, "LOGITS_CHUNK_ELEMENTS", 7 * 300)


def peft_model(model_dir: Path, method: str, tokens: list[str]):
    from workflow_scripts.models.loading import load_tokenizer

    job = make_job(model_dir, method=method, lora__trainable_tokens=tokens,
                   lora__target_modules=["q_proj", "v_proj"], lora__dropout=0.0)
    experiment = job["experiment"]
    torch.manual_seed(1)
    model = build_peft_model(str(model_dir), experiment, False)
    with torch.no_grad():  # adapters start as a no-op; make them matter
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    return model, load_tokenizer(str(model_dir))


def features(tokenizer) -> list[dict]:
    records = [{"id": str(i), "messages": m} for i, m in enumerate(conversations())]
    return tokenize_records(tokenizer, records, 64)[0]


def batch(tokenizer, model, packed: bool) -> dict:
    feats = features(tokenizer)[:6]
    if packed:
        rows = pack_features(feats, 96)
        out = PackedCollator(tokenizer.pad_token_id, model.config._attn_implementation)(rows)
        out.pop(NUM_TOKENS_KEY)
        return out
    return dict(padding_collator(tokenizer)(feats))


CASES = [("lora", TOKENS), ("dora", []), ("qlora", TOKENS)]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("method,tokens", CASES, ids=[c[0] for c in CASES])
def test_training_loss_and_gradients_equal_the_full_logits_ones(tied_dir, method, tokens, packed):
    model, tokenizer = peft_model(tied_dir, method, tokens)
    model.train()
    inputs = batch(tokenizer, model, packed)
    labels = inputs.pop("labels")
    n_items = torch.tensor(int((labels[:, 1:] != IGNORE_INDEX).sum()) + 3)
    trainable = [p for p in model.parameters() if p.requires_grad]

    full = model(**inputs, labels=labels, num_items_in_batch=n_items).loss
    full_grads = torch.autograd.grad(full, trainable)
    chunked = training_loss(model, inputs, labels, n_items)
    chunked_grads = torch.autograd.grad(chunked, trainable)

    assert chunked.item() == pytest.approx(full.item(), rel=1e-5)
    for a, b in zip(chunked_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    mean = training_loss(model, inputs, labels)
    assert mean.item() == pytest.approx(model(**inputs, labels=labels).loss.item(), rel=1e-5)


@pytest.mark.parametrize("method,tokens", CASES, ids=[c[0] for c in CASES])
def test_record_loss_sums_equal_the_full_logits_ones(tied_dir, method, tokens):
    model, tokenizer = peft_model(tied_dir, method, tokens)
    feats = features(tokenizer)
    collate = padding_collator(tokenizer)
    chunked = record_loss_sums(model, feats, collate, 5)
    full = record_loss_sums(model, feats, collate, 5, chunked=False)
    assert [n for _, n in chunked] == [n for _, n in full]
    assert all(n > 0 for _, n in chunked)
    for (a, _), (b, _) in zip(chunked, full):
        assert a == pytest.approx(b, rel=1e-5)


def test_the_output_layer_computes_no_logits_over_the_sequence(tied_dir):
    """The model's own forward gets an empty slice: only label positions are projected, and
    through the untouched base layer (trainable tokens' rows replaced after it)."""
    model, tokenizer = peft_model(tied_dir, "lora", TOKENS)
    head = model.get_output_embeddings()
    inputs = batch(tokenizer, model, packed=False)
    labels = inputs.pop("labels")
    probed = []  # the probe, on the first batch: a few positions of one row
    handle = head.token_adapter.base_layer.register_forward_hook(
        lambda m, a, out: probed.append(tuple(out.shape)))
    assert token_loss.chunked_loss_applies(model, inputs)
    handle.remove()
    vocab = head.weight.shape[0]
    assert probed and max(math.prod(s) for s in probed) <= token_loss.PROBE_POSITIONS * vocab
    shapes, chunks = [], []
    handles = [head.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape))),
               head.token_adapter.base_layer.register_forward_hook(
                   lambda m, a, out: chunks.append(tuple(out.shape)))]
    with torch.no_grad():
        token_loss.batch_loss_sums(model, inputs, labels)
    for handle in handles:
        handle.remove()
    n_labels = int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert shapes == [(inputs["input_ids"].shape[0], 0, head.weight.shape[0])]  # the model's own call
    assert chunks[0] == shapes[0]
    chunks = chunks[1:]
    assert sum(s[0] for s in chunks) == n_labels  # then label positions, chunk by chunk
    assert max(s[0] for s in chunks) <= token_loss.chunk_rows(head.weight.shape[0])


@pytest.mark.parametrize("grad", [False, True], ids=["eval", "train"])
def test_trainable_tokens_never_build_a_merged_copy_of_the_embedding(tied_dir, monkeypatch, grad):
    """PEFT's own forward copies the whole (vocabulary, hidden) weight on every call; the
    chunked loss projects through the base and replaces the trained rows' columns instead,
    with the same loss and the same gradients."""
    model, tokenizer = peft_model(tied_dir, "lora", TOKENS)
    layer = model.get_output_embeddings().token_adapter
    inputs = batch(tokenizer, model, packed=False)
    labels = inputs.pop("labels")
    trainable = [p for p in model.parameters() if p.requires_grad]
    full = model(**inputs, labels=labels).loss
    full_grads = torch.autograd.grad(full, trainable)
    merged = []
    real = type(layer).get_merged_weights
    monkeypatch.setattr(type(layer), "get_merged_weights",
                        lambda self, names: merged.append(tuple(names)) or real(self, names))
    model.train(grad)
    with torch.set_grad_enabled(grad):
        loss = training_loss(model, inputs, labels)
        if grad:
            grads = torch.autograd.grad(loss, trainable)
            for a, b in zip(grads, full_grads):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert loss.item() == pytest.approx(full.item(), rel=1e-5)
    assert any(int(t) in layer.token_indices["default"] for t in inputs["input_ids"].flatten())
    assert merged == []  # neither the input embedding nor the head's calls built one


# Models whose forward rescales the output layer's logits, and the setting that does it.
RESCALING = {"granite": {"logits_scaling": 8.0}, "hyperclovax": {"logits_scaling": 0.125},
             "falcon_h1": {"lm_head_multiplier": 0.125, "mamba_d_ssm": 32, "mamba_n_heads": 4,
                           "mamba_d_head": 8, "mamba_d_state": 8, "mamba_chunk_size": 16}}


@pytest.fixture(scope="module")
def granite_dir(tmp_path_factory) -> Path:
    """A tiny Granite: its forward divides the output layer's logits by `logits_scaling`."""
    return save_tiny_model("granite", tmp_path_factory.mktemp("granite"), **RESCALING["granite"])


@pytest.mark.parametrize("kind,packed", [("granite", False), ("granite", True),
                                         ("hyperclovax", False), ("falcon_h1", False)])
def test_a_model_that_rescales_its_logits_takes_the_full_logits_path(kind, packed, granite_dir,
                                                                     tmp_path, caplog):
    """Found by the probe on the first batch, not by the config's names: every loss is then
    the model's own, and the log says why."""
    model_dir = (granite_dir if kind == "granite"
                 else save_tiny_model(kind, tmp_path / kind, **RESCALING[kind]))
    model, tokenizer = peft_model(model_dir, "lora", [])
    inputs = batch(tokenizer, model, packed)
    labels = inputs.pop("labels")
    with caplog.at_level(logging.WARNING, logger=token_loss.__name__):
        model.train()
        assert training_loss(model, inputs, labels) is None  # the Trainer's own loss then
    assert "chunked loss off" in caplog.text and "rescales" in caplog.text
    assert model.training
    feats = features(tokenizer)
    collate = padding_collator(tokenizer)
    chunked = record_loss_sums(model, feats, collate, 5)
    full = record_loss_sums(model, feats, collate, 5, chunked=False)
    assert chunked == full


class AfterHead(torch.nn.Module):
    """`model` with `change` applied to its logits after its output layer."""

    def __init__(self, model, change):
        super().__init__()
        self.model, self.change = model, change

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def forward(self, **inputs):
        out = self.model(**inputs)
        out.logits = self.change(out.logits)
        return out


def test_the_probe_passes_a_cast_and_fails_a_small_rescaling(tied_dir):
    model, tokenizer = peft_model(tied_dir, "lora", [])
    inputs = batch(tokenizer, model, packed=False)
    inputs.pop("labels")
    assert token_loss.probe_agrees(model, inputs)
    assert token_loss.probe_agrees(AfterHead(model, lambda out: out.bfloat16().float()), inputs)
    assert not token_loss.probe_agrees(AfterHead(model, lambda out: out * 1.01), inputs)
    assert not token_loss.probe_agrees(AfterHead(model, lambda out: out[..., 1:]), inputs)


def test_the_probe_takes_the_first_real_tokens_of_the_first_row():
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])  # left padding
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    probe = token_loss.probe_inputs({"input_ids": ids, "attention_mask": mask}, 2)
    assert probe["input_ids"].tolist() == [[5, 6]] and probe["attention_mask"].tolist() == [[1, 1]]
    packed = {"input_ids": ids, "position_ids": torch.tensor([[0, 1, 0, 1, 2]] * 2),
              "attention_mask": torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()}
    probe = token_loss.probe_inputs(packed, 3)
    assert probe["input_ids"].tolist() == [[0, 0, 5]] and probe["position_ids"].tolist() == [[0, 1, 0]]
    assert probe["attention_mask"].shape == (1, 1, 3, 3)


def test_sequence_loss_sums_is_the_reference():
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[IGNORE_INDEX, 3, 4, IGNORE_INDEX, 1], [IGNORE_INDEX] * 4 + [2]])
    sums, counts = sequence_loss_sums(logits, labels)
    expected = torch.nn.functional.cross_entropy(logits[0, [0, 1, 3]], torch.tensor([3, 4, 1]),
                                                 reduction="sum")
    assert counts == [3, 1]
    assert sums[0] == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("base", ["tied_dir", "granite_dir"])
def test_training_with_and_without_chunked_loss_logs_the_same_losses(base, request, tmp_path):
    """Also on a model that rescales its logits (Granite), where the probe turns it off."""
    model_dir = request.getfixturevalue(base)
    data = write_data(tmp_path / "data")
    runs = {}
    for chunked in (True, False):
        job = make_job(model_dir, training__max_steps=2, training__chunked_loss=chunked,
                       lora__trainable_tokens=TOKENS)
        runs[chunked], _ = run_training(job, model_dir, data, tmp_path / str(chunked))
    assert runs[True]["final_loss"] == pytest.approx(runs[False]["final_loss"], rel=1e-5)
    assert runs[True]["eval_loss"] == pytest.approx(runs[False]["eval_loss"], rel=1e-5)


def test_trained_rows_are_put_in_on_the_device_of_the_embedding_output():
    """A forward hook sees the ids as the caller passed them (on the CPU) while the layer's
    output lives on the layer's device (under a device map): the lookup follows the output.
    Here that device is `meta`, which any CPU tensor meeting it would make fail."""
    from types import SimpleNamespace

    from workflow_scripts.training.lean_tokens import _embed_trained_rows

    layer = SimpleNamespace(active_adapters=["default"], base_layer=torch.nn.Embedding(10, 4),
                            trainable_tokens_delta={"default": torch.ones(2, 4)},
                            token_indices={"default": [1, 3]})
    ids = torch.tensor([[0, 1, 2, 3, 4]])
    out = _embed_trained_rows(layer, (ids,), torch.zeros(1, 5, 4, device="meta"))
    assert out.device.type == "meta" and out.shape == (1, 5, 4)
    on_cpu = _embed_trained_rows(layer, (ids,), torch.zeros(1, 5, 4))  # and the values
    assert on_cpu[0, :, 0].tolist() == [0, 1, 0, 1, 0]
