"""QLoRA behaves the same on CPUs with and without AVX512-BF16.

On such a CPU bitsandbytes repacks a 4-bit layer into a bf16 inference layout the first time
it runs in eval mode without gradients (`Linear4bit.forward`). Every layer reads the CPU
feature once, when it is built, from `bitsandbytes.nn.modules.has_avx512bf16`; these tests
patch that function both ways, so they take both branches on any CPU: "avx512bf16" is the
branch such a CPU takes, "plain" the branch of a CPU without it.
"""
from __future__ import annotations

import pytest
import torch
from test_training import adapter_weights, data_dir, make_job, run_training, save_tiny_model  # noqa: F401

from workflow_scripts.models import loading as model_loading
from workflow_scripts.common.io_utils import read_jsonl
from workflow_scripts.models.loading import load_model

CPU_KINDS = {"avx512bf16": True, "plain": False}
IDS = torch.tensor([[5, 17, 42, 99, 3, 25, 7, 1], [8, 6, 4, 2, 9, 11, 13, 0]])


def pretend_cpu(monkeypatch: pytest.MonkeyPatch, kind: str) -> list[str]:
    """Make 4-bit layers built from now on see CPU `kind`; returns the list that collects
    the shape of every weight bitsandbytes repacks."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: CPU_KINDS[kind])
    repacked: list[str] = []
    convert = bnb_modules._convert_weight_packed_for_cpu

    def spy(weight, quant_state, *args, **kwargs):
        repacked.append(str(list(quant_state.shape)))
        return convert(weight, quant_state, *args, **kwargs)

    monkeypatch.setattr(bnb_modules, "_convert_weight_packed_for_cpu", spy)
    return repacked


def packed_layers(model) -> list[str]:
    import bitsandbytes as bnb

    return [name for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)
            and getattr(m.weight.quant_state, "packing_format_for_cpu", False)]


def save_biased_model(arch: str, hidden: int, path) -> str:
    """A random one-layer model whose attention projections have a bias (Qwen2's q/k/v do;
    LLaMA is configured with biases everywhere)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = dict(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64)
    config = (Qwen2Config(**common) if arch == "qwen2"
              else LlamaConfig(attention_bias=True, mlp_bias=True, **common))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return str(path)


def eval_then_train_logits(model_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of an eval-mode forward without gradients, then of a training forward."""
    model = load_model(model_dir, quantization="4bit", device="cpu")
    model.eval()
    with torch.no_grad():
        evaluated = model(input_ids=IDS).logits
    assert packed_layers(model) == []
    model.train()
    trained = model(input_ids=IDS).logits
    assert packed_layers(model) == []
    return evaluated, trained.detach()


@pytest.mark.parametrize("hidden", [32, 64])
def test_without_the_fix_the_avx512bf16_branch_repacks(hidden, tmp_path, monkeypatch):
    """The branch the fix closes is really taken here: the tests below would see a regression."""
    model_dir = save_biased_model("qwen2", hidden, tmp_path)
    repacked = pretend_cpu(monkeypatch, "avx512bf16")
    monkeypatch.setattr(model_loading, "keep_4bit_layers_unpacked", lambda model: 0)
    model = load_model(model_dir, quantization="4bit", device="cpu").eval()
    with torch.no_grad():
        if hidden < 64:  # narrower than a quantization block: the conversion crashes
            with pytest.raises(RuntimeError, match="shape"):
                model(input_ids=IDS)
            return
        model(input_ids=IDS)
    assert len(packed_layers(model)) == len(repacked) == 7


@pytest.mark.parametrize("hidden", [32, 64])
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_4bit_layers_keep_their_layout_and_outputs_on_both_cpu_kinds(arch, hidden, tmp_path):
    model_dir = save_biased_model(arch, hidden, tmp_path)
    results = {}
    for kind in CPU_KINDS:
        with pytest.MonkeyPatch.context() as monkeypatch:
            repacked = pretend_cpu(monkeypatch, kind)
            results[kind] = eval_then_train_logits(model_dir)
            assert repacked == []
    for evaluated, trained in results.values():
        assert torch.equal(evaluated, trained)  # evaluation runs training's kernels
    assert torch.equal(results["avx512bf16"][0], results["plain"][0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):  # noqa: F811
    """A QLoRA adapter trained four steps, with an evaluation after the second, on each
    kind of CPU, from a Qwen2 with the smoke model's hidden size 32."""
    root = tmp_path_factory.mktemp("qlora")
    model_dir = save_tiny_model("qwen2", root / "model")
    job = make_job(model_dir, "qlora", training__max_steps=4, training__eval_steps=2)
    runs = {}
    for kind in CPU_KINDS:
        with pytest.MonkeyPatch.context() as monkeypatch:
            repacked = pretend_cpu(monkeypatch, kind)
            metrics, out = run_training(job, model_dir, data_dir, root / kind)
            runs[kind] = {"metrics": metrics, "out": out, "repacked": repacked}
    return model_dir, runs


def test_qlora_training_with_evaluation_is_identical_on_both_cpu_kinds(trained):
    _, runs = trained
    assert all(run["repacked"] == [] for run in runs.values())
    logs = {kind: list(read_jsonl(run["out"] / "trainer_log.jsonl")) for kind, run in runs.items()}
    assert {r["step"] for r in logs["plain"] if "eval_loss" in r} == {2, 4}
    losses = {kind: [(r["step"], r.get("loss"), r.get("eval_loss"), r.get("grad_norm"))
                     for r in rows] for kind, rows in logs.items()}
    assert losses["avx512bf16"] == losses["plain"]
    weights = {kind: adapter_weights(run["out"]) for kind, run in runs.items()}
    assert weights["plain"].keys() == weights["avx512bf16"].keys()
    assert all(torch.equal(weights["plain"][k], weights["avx512bf16"][k]) for k in weights["plain"])
    assert any(w.abs().sum() > 0 for k, w in weights["plain"].items() if "lora_B" in k)


def test_evaluation_after_training_is_identical_on_both_cpu_kinds(trained):
    """What evaluation, comparison and the studio do: a 4-bit base plus the adapter, scored
    and decoded greedily without gradients."""
    from peft import PeftModel

    model_dir, runs = trained
    results = {}
    for kind in CPU_KINDS:
        with pytest.MonkeyPatch.context() as monkeypatch:
            repacked = pretend_cpu(monkeypatch, kind)
            base = load_model(str(model_dir), quantization="4bit", device="cpu")
            model = PeftModel.from_pretrained(base, str(runs["plain"]["out"])).eval()
            with torch.no_grad():
                logits = model(input_ids=IDS).logits
                tokens = model.generate(input_ids=IDS, max_new_tokens=5, do_sample=False)
            assert repacked == [] and packed_layers(model) == []
            results[kind] = (logits, tokens)
    assert torch.equal(results["plain"][0], results["avx512bf16"][0])
    assert torch.equal(results["plain"][1], results["avx512bf16"][1])


def test_qlora_adapters_from_both_cpu_kinds_merge_into_the_same_model(trained, tmp_path):
    from safetensors.torch import load_file

    from workflow_scripts.training.merge_adapter import merge

    model_dir, runs = trained
    merged = {}
    for kind, run in runs.items():
        merge(str(model_dir), str(run["out"]), tmp_path / kind)
        merged[kind] = load_file(tmp_path / kind / "model.safetensors")
    assert all(torch.equal(merged["plain"][k], merged["avx512bf16"][k]) for k in merged["plain"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_fix_changes_nothing(tmp_path, monkeypatch):
    """The repacking branch is CPU-only: on CUDA a layer that keeps bitsandbytes' own flag
    computes exactly what a fixed one does."""
    model_dir = save_biased_model("qwen2", 64, tmp_path)
    fixed = load_model(model_dir, quantization="4bit", device="cuda").eval()
    monkeypatch.setattr(model_loading, "keep_4bit_layers_unpacked", lambda model: 0)
    stock = load_model(model_dir, quantization="4bit", device="cuda").eval()
    with torch.no_grad():
        assert torch.equal(fixed(input_ids=IDS.cuda()).logits, stock(input_ids=IDS.cuda()).logits)
    assert packed_layers(fixed) == packed_layers(stock) == []
