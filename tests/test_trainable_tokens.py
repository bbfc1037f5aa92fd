"""`lora.trainable_tokens`: the adapter trains the embedding rows of chat tokens a base model
never learned, and only those; evaluation and merging load them back."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from test_training import make_job, run_training, save_tiny_model, write_data
from workflow_scripts.models.loading import load_model, load_tokenizer

TOKENS = ["<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainable_tokens")
    model_dir = save_tiny_model("qwen2", root / "model")
    data_dir = write_data(root / "data")
    job = make_job(model_dir, training__max_steps=3, lora__trainable_tokens=TOKENS)
    _, out = run_training(job, model_dir, data_dir, root / "run")
    return model_dir, out


def embedding_with_adapter(model_dir: Path, adapter_dir: Path) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(str(model_dir)), str(adapter_dir))
    ids = torch.arange(len(load_tokenizer(str(model_dir))))
    with torch.no_grad():
        return model.get_input_embeddings()(ids)


def test_only_the_named_rows_change(trained):
    model_dir, out = trained
    base = load_model(str(model_dir)).get_input_embeddings().weight.detach()
    tuned = embedding_with_adapter(model_dir, out)
    tokenizer = load_tokenizer(str(model_dir))
    named = [tokenizer.convert_tokens_to_ids(t) for t in TOKENS]
    changed = [i for i in range(base.shape[0]) if not torch.equal(base[i], tuned[i])]
    assert changed == sorted(named)


def test_merged_model_keeps_the_trained_rows(trained, tmp_path):
    from workflow_scripts.training.merge_adapter import main as merge

    model_dir, out = trained
    merge(["--model-dir", str(model_dir), "--adapter-dir", str(out), "--out-dir", str(tmp_path),
           "--config", '{"source": "path", "path": "%s"}' % model_dir])
    merged = load_model(str(tmp_path)).get_input_embeddings().weight.detach()
    assert torch.allclose(merged, embedding_with_adapter(model_dir, out), atol=1e-6)


def test_an_unknown_token_is_refused_naming_the_key(tmp_path):
    from workflow_scripts.training.train_adapter import trainable_token_ids

    model_dir = save_tiny_model("qwen2", tmp_path / "model")
    with pytest.raises(SystemExit, match=r"lora.trainable_tokens: \['<\|nope\|>'\]"):
        trainable_token_ids(str(model_dir), ["<|im_end|>", "<|nope|>"], False)
