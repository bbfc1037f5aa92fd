"""The studio's fast mixed-adapter forward (workflow_scripts/studio/mixed_lora.py) against
PEFT's own, on a random Qwen2 (fp32, CPU): rows of different adapters (different ranks,
trained chat tokens) and the base in one batch get the logits of PEFT's `adapter_names`
forward; a batch of one adapter computes PEFT's single-adapter arithmetic; layers it does
not handle leave it to PEFT."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from random_chat_models import CHAT_TOKENS, random_adapter, random_base

from workflow_scripts.studio.mixed_lora import BASE, MixedAdapters


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return random_base(tmp_path_factory.mktemp("mixed-lora") / "base")


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory) -> dict[str, Path]:
    """Three random adapters that train the chat tokens, as the default config's do."""
    root = tmp_path_factory.mktemp("trained")
    return {f"t{i}": random_adapter(base_dir, root / f"t{i}", seed=i) for i in range(3)}


@pytest.fixture(scope="module")
def plain(base_dir, tmp_path_factory) -> dict[str, Path]:
    """Two plain LoRA adapters of different ranks, the larger on two modules only."""
    root = tmp_path_factory.mktemp("plain")
    return {"r2": plain_adapter(base_dir, root / "r2", rank=2, seed=1),
            "r8": plain_adapter(base_dir, root / "r8", rank=8, seed=2, target_modules=["q_proj", "v_proj"])}


def plain_adapter(base_dir: Path, out: Path, rank: int, seed: int, **extra) -> Path:
    """A LoRA adapter with random non-zero matrices of the given rank (no trained tokens)."""
    from peft import LoraConfig, get_peft_model

    from workflow_scripts.models.loading import load_model

    torch.manual_seed(seed)
    settings = {"target_modules": "all-linear", **extra}
    model = get_peft_model(load_model(str(base_dir)), LoraConfig(
        task_type="CAUSAL_LM", r=rank, lora_alpha=3 * rank, init_lora_weights=False, **settings))
    model.save_pretrained(out)
    return out


def peft_model(base_dir: Path, adapters: dict[str, Path]):
    from peft import PeftModel

    from workflow_scripts.models.loading import load_model

    (first, path), *rest = adapters.items()
    model = PeftModel.from_pretrained(load_model(str(base_dir)), str(path), adapter_name=first)
    for name, path in rest:
        model.load_adapter(str(path), adapter_name=name)
    return model.eval()


def batch(base_dir: Path, rows: int, width: int = 9):
    """Left-padded ids that include the chat tokens (the trained embedding rows)."""
    from workflow_scripts.models.loading import load_tokenizer

    specials = load_tokenizer(str(base_dir)).convert_tokens_to_ids(CHAT_TOKENS)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 200, (rows, width), generator=generator)
    ids[:, 1], ids[:, -2] = specials[0], specials[1]
    mask = torch.ones_like(ids)
    for row in range(1, rows, 2):  # every other row left-padded by its index
        mask[row, :min(row, width - 3)] = 0
    return ids, mask


def mixed_logits(model, mixer, rows: list[str], ids, mask):
    with torch.no_grad(), mixer.applied(rows):
        return model.get_base_model()(input_ids=ids, attention_mask=mask).logits


def assert_same_answers(mine, reference, atol: float = 1e-4):
    """Equal up to float rounding, and the same greedy token at every position."""
    torch.testing.assert_close(mine, reference, atol=atol, rtol=1e-5)
    assert torch.equal(mine.argmax(-1), reference.argmax(-1))


def test_rows_of_three_adapters_and_the_base_match_peft(base_dir, trained):
    paths = trained
    model = peft_model(base_dir, paths)
    rows = ["t0", BASE, "t2", "t1", "t0", BASE, "t1", "t2"]
    ids, mask = batch(base_dir, len(rows))
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, adapter_names=rows).logits
    mixer = MixedAdapters.build(model, list(paths))
    assert mixer is not None and len(mixer.token_sites) == 2  # the embedding and its tied head
    mine = mixed_logits(model, mixer, rows, ids, mask)
    assert_same_answers(mine, reference)
    # Not vacuous: the trained chat tokens change what an adapter's row computes.
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=ids, attention_mask=mask).logits
    assert (reference[0] - base[0]).abs().max() > 1e-2


def test_plain_adapters_of_different_ranks_match_peft(base_dir, plain):
    paths = plain
    model = peft_model(base_dir, paths)
    rows = ["r8", "r2", BASE, "r2", "r8"]
    ids, mask = batch(base_dir, len(rows))
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, adapter_names=rows).logits
    mixer = MixedAdapters.build(model, list(paths))
    assert mixer is not None and not mixer.token_sites
    assert_same_answers(mixed_logits(model, mixer, rows, ids, mask), reference)


def test_a_batch_of_one_adapter_computes_what_peft_computes_for_it(base_dir, trained):
    paths = {name: trained[name] for name in ("t0", "t1")}
    model = peft_model(base_dir, paths)
    mixer = MixedAdapters.build(model, list(paths))
    ids, mask = batch(base_dir, 3)
    for adapter in ["t1", BASE]:
        with torch.no_grad():
            if adapter == BASE:
                with model.disable_adapter():
                    reference = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            else:
                model.set_adapter(adapter)
                reference = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            with mixer.applied([adapter] * 3):
                mine = model.get_base_model()(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        # The layers' arithmetic is PEFT's own, bit for bit; only the trained tokens' logits
        # come from a separate product (h . trained row) rather than the merged head.
        for theirs, ours in zip(reference.hidden_states, mine.hidden_states):
            assert torch.equal(theirs, ours)
        assert_same_answers(mine.logits, reference.logits)
        if adapter == BASE:
            assert torch.equal(mine.logits, reference.logits)


def test_the_modules_are_peft_s_again_after_a_pass(base_dir, trained):
    paths = {"t0": trained["t0"]}
    model = peft_model(base_dir, paths)
    mixer = MixedAdapters.build(model, list(paths))
    ids, mask = batch(base_dir, 2)
    with pytest.raises(RuntimeError), mixer.applied(["t0", BASE]):
        raise RuntimeError("a failed step")
    assert not any("forward" in vars(site.module) for site in mixer.lora_sites + mixer.token_sites)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        mixed_logits(model, mixer, ["t0", BASE], ids, mask)
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, before)


def test_layers_it_does_not_handle_are_left_to_peft(base_dir, tmp_path):
    paths = {"dora": plain_adapter(base_dir, tmp_path / "dora", rank=4, seed=4, use_dora=True)}
    assert MixedAdapters.build(peft_model(base_dir, paths), list(paths)) is None


def test_an_adapter_without_trained_tokens_loads_beside_ones_with_them(base_dir, trained, tmp_path):
    """PEFT alone refuses it (KeyError on the token wrapper's rows); loaded, each adapter
    answers as it does alone, and their rows share a batch."""
    from peft import PeftModel

    from workflow_scripts.models.loading import load_model
    from workflow_scripts.studio.mixed_lora import loading_beside_trained_tokens

    paths = {"t0": trained["t0"],
             "p0": random_adapter(base_dir, tmp_path / "p0", seed=6, trainable_tokens=False)}
    with pytest.raises(KeyError):
        peft_model(base_dir, paths)
    model = PeftModel.from_pretrained(load_model(str(base_dir)), str(paths["t0"]), adapter_name="t0")
    with loading_beside_trained_tokens(model, str(paths["p0"]), "p0"):
        model.load_adapter(str(paths["p0"]), adapter_name="p0")
    model.eval()
    ids, mask = batch(base_dir, 3)
    alone = {}
    for name, path in paths.items():
        with torch.no_grad():
            alone[name] = peft_model(base_dir, {name: path})(input_ids=ids, attention_mask=mask).logits
            model.set_adapter(name)
            assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, alone[name])
    rows = ["p0", "t0", "p0"]
    mine = mixed_logits(model, MixedAdapters.build(model, list(paths)), rows, ids, mask)
    for i, name in enumerate(rows):
        assert_same_answers(mine[i], alone[name][i])


def test_a_bf16_base_with_fp32_adapters_answers_as_each_adapter_alone(base_dir, trained):
    """As on an accelerator: the checkpoint's bf16 base, PEFT's adapters kept in fp32. Each
    mixed row gets what PEFT computes for its adapter alone, the unbatched path (closer
    than PEFT's own mixed forward gets in bf16: 0.3 apart on these logits)."""
    from peft import PeftModel

    from workflow_scripts.models.loading import load_model

    paths = {name: trained[name] for name in ("t0", "t1")}
    model = PeftModel.from_pretrained(load_model(str(base_dir), dtype=torch.bfloat16),
                                      str(paths["t0"]), adapter_name="t0")
    model.load_adapter(str(paths["t1"]), adapter_name="t1")
    model.eval()
    assert model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["t0"].weight.dtype == torch.float32
    rows = ["t1", BASE, "t0"]
    ids, mask = batch(base_dir, len(rows))
    mine = mixed_logits(model, MixedAdapters.build(model, list(paths)), rows, ids, mask)
    assert mine.dtype == torch.bfloat16
    for i, adapter in enumerate(rows):
        with torch.no_grad():
            if adapter == BASE:
                with model.disable_adapter():
                    alone = model(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1]).logits[0]
            else:
                model.set_adapter(adapter)
                alone = model(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1]).logits[0]
        unpadded = mask[i].bool()
        assert_same_answers(mine[i][unpadded].float(), alone[unpadded].float(), atol=2e-2)


def test_a_composition_too_large_to_keep_is_gathered_per_layer(base_dir, plain, monkeypatch):
    """Many rows of large-rank adapters on a large model: the gathered matrices are not kept
    (GATHER_BYTES); each layer gathers its own as it runs, to the same result."""
    from workflow_scripts.studio import mixed_lora

    model = peft_model(base_dir, plain)
    paths = plain
    mixer = MixedAdapters.build(model, list(paths))
    rows = ["r8", BASE, "r2", "r8"]
    ids, mask = batch(base_dir, len(rows))
    kept = mixed_logits(model, mixer, rows, ids, mask)
    assert mixer.plan(rows).lora is not None
    monkeypatch.setattr(mixed_lora, "GATHER_BYTES", 0)
    mixer.plans.clear()
    assert mixer.plan(rows).lora is None
    assert torch.equal(mixed_logits(model, mixer, rows, ids, mask), kept)
