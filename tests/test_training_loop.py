"""The training loop's settings are passed and honoured: schedule, accumulation, evaluation,
checkpointing, batching, token counts, logs, progress events and determinism."""
from __future__ import annotations

import pytest
import torch
from test_training import adapter_weights, data_dir, make_job, qwen2_dir, run_training  # noqa: F401

from workflow_scripts.training import train_adapter
from workflow_scripts.common.io_utils import read_jsonl, write_jsonl
from workflow_scripts.models.loading import load_model, load_tokenizer
from workflow_scripts.training.chat_tokenize import tokenize_records
from workflow_scripts.training.length_sampler import EpochSeededLengthSampler, length_grouped_order
from workflow_scripts.training.token_loss import mean_loss, record_loss_sums
from workflow_scripts.training.train_adapter import (build_trainer, final_training_loss,
                                                     padding_collator, tokenize_here, train,
                                                     training_arguments)


def test_same_config_twice_gives_identical_adapters(qwen2_dir, data_dir, tmp_path):
    job = make_job(qwen2_dir, training__max_steps=3)  # lora dropout 0.05 is on: RNG is seeded too
    runs = [adapter_weights(run_training(job, qwen2_dir, data_dir, tmp_path / r)[1]) for r in "ab"]
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_arguments_come_from_the_config(tmp_path):
    job = make_job(tmp_path, training__grad_accum=3, training__warmup_ratio=0.25,
                   training__weight_decay=0.1, training__max_grad_norm=0.5,
                   training__scheduler="linear", training__eval_steps=2, training__epochs=2,
                   training__max_steps=-1, training__gradient_checkpointing=True)
    args = training_arguments(job["experiment"], 3, tmp_path / "c", tmp_path / "tb")
    assert (args.gradient_accumulation_steps, args.weight_decay, args.max_grad_norm) == (3, 0.1, 0.5)
    assert (args.num_train_epochs, args.max_steps, args.eval_steps) == (2, -1, 2)
    assert args.lr_scheduler_type == "linear" and args.get_warmup_steps(8) == 2
    assert args.activation_checkpointing and args.eval_strategy == "steps"
    assert args.train_sampling_strategy == "group_by_length" and "tensorboard" in args.report_to


def test_schedule_accumulation_eval_logs_and_tensorboard(qwen2_dir, data_dir, tmp_path):
    job = make_job(qwen2_dir, training__max_steps=4, training__batch_size=1, training__grad_accum=2,
                   training__warmup_ratio=0.5, training__scheduler="linear", training__eval_steps=2)
    metrics, out = run_training(job, qwen2_dir, data_dir, tmp_path)
    rows = list(read_jsonl(out / "trainer_log.jsonl"))
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    # the rate each step used: two warmup steps from 0, the peak, then linear decay
    assert [r["learning_rate"] for r in train_rows] == [0.0, 5e-3, 1e-2, 5e-3]
    assert all({"grad_norm", "elapsed_s", "memory_mb", "epoch"} <= r.keys() for r in train_rows)
    assert {r["step"] for r in rows if "eval_loss" in r} == {2, 4}
    # 4 optimizer steps x 2 micro-batches of one sample: 8 samples' tokens, not 4
    assert train_rows[-1]["epoch"] == round(8 / 12, 4)
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
    assert metrics["eval_loss"] is not None


def test_activation_checkpointing_changes_nothing_but_memory(qwen2_dir, data_dir, tmp_path):
    results = []
    for gc in (False, True):
        job = make_job(qwen2_dir, training__max_steps=2, training__gradient_checkpointing=gc)
        results.append(adapter_weights(run_training(job, qwen2_dir, data_dir, tmp_path / str(gc))[1]))
    assert any(w.abs().sum() > 0 for k, w in results[1].items() if "lora_B" in k)
    assert all(torch.allclose(results[0][k], results[1][k], atol=1e-6) for k in results[0])


def test_token_counts_with_and_without_packing(qwen2_dir, data_dir, tmp_path):
    for packing in (False, True):
        job = make_job(qwen2_dir, training__max_steps=-1, training__max_length=128,
                       training__packing=packing)
        metrics, _ = run_training(job, qwen2_dir, data_dir, tmp_path / str(packing))
        tokenization = metrics["tokenization"]
        assert metrics["train_tokens"] == tokenization["tokens"]  # one epoch, no padding counted
        if packing:
            assert tokenization["packed_rows"] < tokenization["kept"]


def varied_lengths_data(path, n: int = 48):
    chats = [{"id": str(i), "messages": [{"role": "user", "content": "问题" * (1 + i % 7)},
                                         {"role": "assistant", "content": "回答" * (1 + 3 * (i % 11))}]}
             for i in range(n)]
    path.mkdir()
    write_jsonl(path / "train.jsonl", chats)
    write_jsonl(path / "valid.jsonl", chats[:4])
    return path


def padding_share(loader) -> float:
    batches = list(loader)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return 1 - real / sum(b["attention_mask"].numel() for b in batches)


def batch_max_lengths(loader) -> list[int]:
    return [int(b["attention_mask"].sum(dim=1).max()) for b in loader]


def test_batches_are_grouped_by_length_but_not_visited_longest_first(qwen2_dir, tmp_path):
    job = make_job(qwen2_dir, training__max_length=128, training__batch_size=4)
    tokenizer = load_tokenizer(str(qwen2_dir))
    model = load_model(str(qwen2_dir))
    tokenized = tokenize_here(job, str(qwen2_dir), varied_lengths_data(tmp_path / "d", 200),
                              tmp_path / "tokenized")
    trainer, _ = build_trainer(job, model, tokenizer, tokenized, tmp_path / "out", tmp_path / "c")
    loader = trainer.get_train_dataloader()
    grouped = padding_share(loader)
    # 50 batches in mega-batches of 12: walked longest-first, a batch is longer than the one
    # before it only where a mega-batch starts (~6%); in random order a third are (many ties).
    maxima = batch_max_lengths(loader)
    rises = sum(b > a for a, b in zip(maxima, maxima[1:])) / (len(maxima) - 1)
    trainer.args.train_sampling_strategy = "random"
    shuffled = padding_share(trainer.get_train_dataloader())
    assert grouped < 0.1 < shuffled
    assert rises > 0.2


def test_group_order_is_random_and_depends_on_seed_and_epoch_only():
    lengths = torch.randint(1, 1000, (1003,), generator=torch.Generator().manual_seed(1)).tolist()
    order = length_grouped_order(lengths, 5, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(lengths)))
    groups = [order[i:i + 5] for i in range(0, 1000, 5)]
    spans = [max(lengths[i] for i in g) - min(lengths[i] for i in g) for g in groups]
    assert sum(spans) / len(spans) < 50  # 5 of a sorted mega-batch of 250: close lengths
    tops = [max(lengths[i] for i in g) for g in groups[:50]]
    assert 0.3 < sum(b > a for a, b in zip(tops, tops[1:])) / 49 < 0.7
    assert len(order[1000:]) == 3  # the one short group comes last

    sampler = EpochSeededLengthSampler(lengths, 5, seed=7)
    torch.manual_seed(123)  # the global random state plays no part
    first = list(sampler)
    torch.manual_seed(456)
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and list(EpochSeededLengthSampler(lengths, 5, seed=8)) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_final_loss_is_the_mean_over_the_last_tenth_of_the_steps():
    rows = [{"step": s, "loss": float(s)} for s in range(1, 101)]
    assert final_training_loss(rows, 100) == (sum(range(91, 101)) / 10, 10)
    # logged every 4 steps: the windows ending in the last 10 steps, weighted by their steps
    rows = [{"step": s, "loss": float(s)} for s in range(4, 101, 4)]
    assert final_training_loss(rows, 100) == ((92 + 96 + 100) / 3, 12)
    assert final_training_loss([{"step": 3, "loss": 2.0}, {"step": 3, "eval_loss": 1.0}], 3) == (2.0, 3)
    assert final_training_loss([], 0) == (None, 0)


@pytest.mark.parametrize("packing", [False, True])
def test_validation_loss_equals_the_test_loss_on_the_same_records(qwen2_dir, data_dir, tmp_path, packing):
    from peft import PeftModel

    # batches of 3 over 4 validation records: a mean of batch means would differ
    job = make_job(qwen2_dir, training__max_steps=2, training__batch_size=3, training__packing=packing)
    metrics, out = run_training(job, qwen2_dir, data_dir, tmp_path)
    tokenizer = load_tokenizer(str(qwen2_dir))
    model = PeftModel.from_pretrained(load_model(str(qwen2_dir)), out)
    records = list(read_jsonl(data_dir / "valid.jsonl"))
    features, _ = tokenize_records(tokenizer, records, 64)
    test_loss = mean_loss(record_loss_sums(model, features, padding_collator(tokenizer), 2))
    assert metrics["eval_loss"] == pytest.approx(test_loss, rel=1e-5)
    rows = list(read_jsonl(out / "trainer_log.jsonl"))
    assert [r["eval_loss"] for r in rows if "eval_loss" in r] == [metrics["eval_loss"]]


@pytest.mark.parametrize("valid", ["empty", "missing"])
def test_training_without_validation_records(qwen2_dir, data_dir, tmp_path, valid):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_bytes((data_dir / "train.jsonl").read_bytes())
    if valid == "empty":
        (data / "valid.jsonl").write_text("")
    job = make_job(qwen2_dir, training__max_steps=2, training__eval_steps=1)
    metrics, out = run_training(job, qwen2_dir, data, tmp_path)
    assert metrics["steps"] == 2 and metrics["eval_loss"] is None
    assert not any("eval_loss" in r for r in read_jsonl(out / "trainer_log.jsonl"))


def test_a_changed_data_file_never_resumes_an_old_checkpoint(qwen2_dir, data_dir, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "valid.jsonl"):
        (data / name).write_bytes((data_dir / name).read_bytes())
    job = make_job(qwen2_dir, training__max_steps=2, training__save_steps=1)
    # a job killed after its checkpoints: here, one that does not clean them up
    monkeypatch.setattr(train_adapter.shutil, "rmtree", lambda *a, **k: None)
    train(job, str(qwen2_dir), data, tmp_path / "a", tmp_path / "checkpoints")
    (stale,) = (tmp_path / "checkpoints").iterdir()
    monkeypatch.undo()
    records = list(read_jsonl(data / "train.jsonl"))
    write_jsonl(data / "train.jsonl", records[1:])

    metrics = train(job, str(qwen2_dir), data, tmp_path / "b", tmp_path / "checkpoints")
    assert metrics["resumed_from_checkpoint"] is False
    assert not stale.exists()


def test_progress_file_gets_one_line_per_event(qwen2_dir, data_dir, tmp_path):
    job = make_job(qwen2_dir, training__max_steps=3, training__eval_steps=2)
    progress = tmp_path / "logs" / "progress.jsonl"
    (tmp_path / "adapter").mkdir()
    metrics = train(job, str(qwen2_dir), data_dir, tmp_path / "adapter", tmp_path / "c", progress)
    events = list(read_jsonl(progress))
    assert [e["event"] for e in events] == ["start", "log", "log", "eval", "log", "eval", "end"]
    assert events[0] | {"time": 0} == {"event": "start", "time": 0, "step": 0, "max_steps": 3,
                                       "epochs": 1, "resumed": False}
    logs = [e for e in events if e["event"] == "log"]
    assert all(e.keys() == {"event", "time", "step", "max_steps", "epoch", "loss", "learning_rate",
                            "grad_norm", "elapsed_s", "train_tokens", "tokens_per_s"} for e in logs)
    assert [e["step"] for e in logs] == [1, 2, 3] and logs[-1]["train_tokens"] == metrics["train_tokens"]
    assert events[-2]["eval_loss"] == metrics["eval_loss"]
    assert events[-1]["wall_time_s"] == metrics["wall_time_s"]
    times = [e["time"] for e in events]
    assert times == sorted(times)
    assert metrics["tokens_per_s"] == round(metrics["train_tokens"] / metrics["train_step_time_s"], 2)
    assert 0 < metrics["train_step_time_s"] < metrics["wall_time_s"]


def test_final_loss_covers_the_last_step_of_a_short_run(qwen2_dir, data_dir, tmp_path):
    # 3 steps, logged every 5: without a log at the last step there is no loss at all
    job = make_job(qwen2_dir, training__max_steps=3, training__logging_steps=5)
    metrics, out = run_training(job, qwen2_dir, data_dir, tmp_path / "short")
    logged = [r["step"] for r in read_jsonl(out / "trainer_log.jsonl") if "loss" in r]
    assert logged == [3]
    assert metrics["final_loss"] is not None and metrics["final_loss_window_steps"] == 3
    # 7 steps, logged every 5: the last two steps are logged too, and final_loss is theirs
    job = make_job(qwen2_dir, training__max_steps=7, training__logging_steps=5)
    metrics, out = run_training(job, qwen2_dir, data_dir, tmp_path / "odd")
    rows = [r for r in read_jsonl(out / "trainer_log.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [5, 7]
    assert metrics["final_loss"] == pytest.approx(rows[-1]["loss"])


def test_the_base_is_loaded_in_the_compute_dtype_not_the_checkpoints(qwen2_dir, monkeypatch):
    """On a GPU the checkpoint's own dtype could be fp16 (trained without a loss scaler) or
    bf16 on a card without it: training, and evaluation with it, load the base in the compute
    dtype. Here a bf16 GPU's compute dtype stands in for the GPU; the checkpoint is fp32."""
    from workflow_scripts.evaluation.generation import load_for_eval
    from workflow_scripts.models import loading

    monkeypatch.setattr(loading, "compute_dtype", lambda: torch.bfloat16)
    experiment = make_job(qwen2_dir)["experiment"]
    model = train_adapter.build_peft_model(str(qwen2_dir), experiment, False)
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    model, _ = load_for_eval(str(qwen2_dir), None, False, None)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
