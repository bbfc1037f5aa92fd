"""The training loop's settings are passed and honoured: schedule, accumulation, evaluation,
checkpointing, batching, token counts, logs and determinism."""
from __future__ import annotations

import torch
from test_training import adapter_weights, data_dir, make_job, qwen2_dir, run_training  # noqa: F401

from workflow_scripts.io_utils import read_jsonl, write_jsonl
from workflow_scripts.model_loading import load_model, load_tokenizer
from workflow_scripts.train_adapter import build_trainer, training_arguments


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


def varied_lengths_data(path):
    chats = [{"id": str(i), "messages": [{"role": "user", "content": "问题" * (1 + i % 7)},
                                         {"role": "assistant", "content": "回答" * (1 + 3 * (i % 11))}]}
             for i in range(48)]
    path.mkdir()
    write_jsonl(path / "train.jsonl", chats)
    write_jsonl(path / "valid.jsonl", chats[:4])
    return path


def padding_share(loader) -> float:
    batches = list(loader)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return 1 - real / sum(b["attention_mask"].numel() for b in batches)


def test_batches_are_grouped_by_length(qwen2_dir, tmp_path):
    job = make_job(qwen2_dir, training__max_length=128)
    tokenizer = load_tokenizer(str(qwen2_dir))
    model = load_model(str(qwen2_dir))
    trainer, _ = build_trainer(job, model, tokenizer, varied_lengths_data(tmp_path / "d"),
                               tmp_path / "out", tmp_path / "c")
    grouped = padding_share(trainer.get_train_dataloader())
    trainer.args.train_sampling_strategy = "random"
    shuffled = padding_share(trainer.get_train_dataloader())
    assert grouped < 0.1 < shuffled
