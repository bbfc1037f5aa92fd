"""Train one PEFT adapter (LoRA, QLoRA or DoRA) with the transformers Trainer.

Checkpoints go to a directory outside the rule's outputs, keyed by a hash of the job's
config, so a killed job resumes where it stopped and a changed config never resumes from a
stale checkpoint. Batches are length-grouped with dynamic padding, or packed
(`training.packing`, see workflow_scripts/packing.py). See docs/training.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from workflow_scripts.io_utils import canonical_json, read_jsonl, write_json, write_jsonl
from workflow_scripts.resource_usage import peak_memory_mb
from workflow_scripts.run_info import write_run_info

LOG_KEYS = ("loss", "learning_rate", "grad_norm", "eval_loss")
# Non-reentrant checkpointing back-propagates into the adapters although the frozen
# embeddings' outputs need no gradient.
CHECKPOINTING_KWARGS = {"use_reentrant": False}


def config_hash(job_config: dict) -> str:
    return hashlib.sha256(canonical_json(job_config).encode()).hexdigest()[:16]


def lora_config(method: str, lora: dict):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        use_dora=method == "dora",
        use_rslora=lora.get("rslora", False),
    )


def build_peft_model(model_dir: str, experiment: dict, trust_remote_code: bool):
    """Base model (4-bit for QLoRA) wrapped with the experiment's adapter."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from workflow_scripts.model_loading import load_model

    quantization = "4bit" if experiment["method"] == "qlora" else None
    model = load_model(model_dir, trust_remote_code=trust_remote_code, quantization=quantization)
    if quantization:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=experiment["training"]["gradient_checkpointing"],
            gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS,
        )
    return get_peft_model(model, lora_config(experiment["method"], experiment["lora"]))


def load_split(tokenizer, path: Path, training: dict):
    from datasets import Dataset

    from workflow_scripts.chat_tokenize import tokenize_records
    from workflow_scripts.packing import pack_features

    records = list(read_jsonl(path))
    features, stats = tokenize_records(
        tokenizer, records, training["max_length"], training.get("overflow", "truncate")
    )
    if not features:
        raise SystemExit(f"{path}: no record left to train on after tokenization ({stats.as_dict()})")
    if training.get("packing", False):
        features = pack_features(features, training["max_length"])
        stats.packed_rows = len(features)
    for feature in features:
        feature["length"] = len(feature["input_ids"])
    return Dataset.from_list(features), stats


def training_arguments(experiment: dict, seed: int, checkpoint_dir: Path, tensorboard_dir: Path):
    import os

    import torch
    from transformers import TrainingArguments

    from workflow_scripts.model_loading import compute_dtype

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(tensorboard_dir)

    t = experiment["training"]
    packing = t.get("packing", False)
    bf16 = compute_dtype() == torch.bfloat16
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=t["batch_size"],
        per_device_eval_batch_size=t["batch_size"],
        gradient_accumulation_steps=t["grad_accum"],
        learning_rate=t["learning_rate"],
        num_train_epochs=t["epochs"],
        max_steps=t["max_steps"],
        lr_scheduler_type=t["scheduler"],
        warmup_steps=t["warmup_ratio"],  # below 1: a share of the total steps
        weight_decay=t["weight_decay"],
        max_grad_norm=t["max_grad_norm"],
        activation_checkpointing=t["gradient_checkpointing"],
        activation_checkpointing_kwargs=CHECKPOINTING_KWARGS,
        logging_steps=t["logging_steps"],
        eval_strategy="steps" if t["eval_steps"] else "no",
        eval_steps=t["eval_steps"] or None,
        save_strategy="steps",
        save_steps=t["save_steps"],
        save_total_limit=2,
        # Packed rows are all about max_length long: nothing to group.
        train_sampling_strategy="random" if packing else "group_by_length",
        include_num_input_tokens_seen="no" if packing else "non_padding",
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        data_seed=seed,
        full_determinism=True,
        report_to=["tensorboard"],
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


class StepTimer:
    """Trainer callback that records wall time and memory per logged step.

    The rows are kept next to the checkpoints, so a resumed run continues the clock.
    """

    def __init__(self, path: Path):
        from transformers import TrainerCallback

        self.path = path
        self.rows = {r["step"]: r for r in read_jsonl(path)} if path.exists() else {}
        self.offset = 0.0
        self.start = time.perf_counter()
        timer = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                done = [r for s, r in timer.rows.items() if s <= state.global_step]
                timer.offset = max((r["elapsed_s"] for r in done), default=0.0)
                timer.start = time.perf_counter()

            def on_log(self, args, state, control, logs=None, **kwargs):
                elapsed = timer.offset + time.perf_counter() - timer.start
                row = {"step": state.global_step, "elapsed_s": round(elapsed, 3),
                       "memory_mb": round(peak_memory_mb(), 1)}
                timer.rows[state.global_step] = row
                with open(timer.path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")

        self.callback = _Callback()


def quiet_progress():
    """The Trainer's progress bar, without a printed dict per log step.

    The bar shows the last loss; the rows go to trainer_log.jsonl. When stderr is a file (the
    rule's log), the bar is redrawn once a minute and evaluation gets no bar of its own.
    """
    from tqdm.auto import tqdm
    from transformers.trainer_callback import ProgressCallback

    interactive = sys.stderr.isatty()

    class QuietProgress(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.current_step = state.global_step
            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step,
                                     dynamic_ncols=True, mininterval=0.1 if interactive else 60)

        def on_prediction_step(self, args, state, control, **kwargs):
            if interactive:
                super().on_prediction_step(args, state, control, **kwargs)

        def on_log(self, args, state, control, logs=None, **kwargs):
            shown = {k: f"{v:.4g}" for k, v in (logs or {}).items() if k in ("loss", "eval_loss")}
            if self.training_bar is not None and shown:
                self.training_bar.set_postfix(shown, refresh=False)

    return QuietProgress()


def token_counting_trainer():
    """A Trainer that counts packed batches' real tokens from the collator's count.

    With a 4D mask the Trainer's own non-padding count (the 2D mask's sum) does not apply.
    """
    from transformers import Trainer

    from workflow_scripts.packing import NUM_TOKENS_KEY

    class TokenCountingTrainer(Trainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            n_tokens = inputs.pop(NUM_TOKENS_KEY, None)
            if n_tokens is not None and model.training:
                self.state.num_input_tokens_seen += int(n_tokens)
            return super().compute_loss(model, inputs, *args, **kwargs)

    return TokenCountingTrainer


def last_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoint-N that was written to the end (trainer_state.json comes last).

    A job killed while saving leaves a partial checkpoint, which is skipped.
    """
    done = [p for p in checkpoint_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def log_rows(log_history: list[dict], timings: dict[int, dict]) -> list[dict]:
    """trainer_log.jsonl rows: the Trainer's own log history plus wall time and memory."""
    rows = []
    for entry in log_history:
        if not any(key in entry for key in LOG_KEYS):
            continue
        row = {"step": entry["step"], "epoch": round(entry.get("epoch", 0.0), 4)}
        row.update({k: entry[k] for k in LOG_KEYS if k in entry})
        row.update({k: v for k, v in timings.get(entry["step"], {}).items() if k != "step"})
        rows.append(row)
    return rows


def last_value(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return values[-1] if values else None


def train_metrics(model, trainer, rows, wall_time, stats, method) -> dict[str, Any]:
    import torch

    trainable, total = model.get_nb_trainable_parameters()
    tokens = int(trainer.state.num_input_tokens_seen)
    return {
        "method": method,
        "trainable_params": int(trainable),
        "total_params": int(total),
        "trainable_share": trainable / total,
        "steps": trainer.state.global_step,
        "wall_time_s": round(wall_time, 3),
        "train_tokens": tokens,
        "tokens_per_s": round(tokens / wall_time, 2) if wall_time else None,
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "final_loss": last_value(rows, "loss"),
        "eval_loss": last_value(rows, "eval_loss"),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "tokenization": stats.as_dict(),
    }


def data_collator(tokenizer, training: dict, model):
    """Dynamic padding to the batch's longest sample, or packed rows with their 4D mask."""
    from transformers import DataCollatorForSeq2Seq

    from workflow_scripts.packing import PackedCollator

    if training.get("packing", False):
        return PackedCollator(tokenizer.pad_token_id, model.config._attn_implementation)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)


def build_trainer(job: dict, model, tokenizer, data_dir: Path, out_dir: Path, checkpoint_dir: Path):
    """The configured Trainer and the tokenization stats of the train split."""
    from transformers.trainer_callback import ProgressCallback

    experiment = job["experiment"]
    training = experiment["training"]
    train_set, stats = load_split(tokenizer, data_dir / "train.jsonl", training)
    valid_set, _ = load_split(tokenizer, data_dir / "valid.jsonl", training)
    trainer = token_counting_trainer()(
        model=model,
        args=training_arguments(experiment, job["seed"], checkpoint_dir, out_dir / "tensorboard"),
        train_dataset=train_set,
        eval_dataset=valid_set,
        data_collator=data_collator(tokenizer, training, model),
        processing_class=tokenizer,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(quiet_progress())
    return trainer, stats


def train(job: dict, model_dir: str, data_dir: Path, out_dir: Path, checkpoint_root: Path) -> dict:
    from transformers import set_seed

    from workflow_scripts.model_loading import load_tokenizer

    experiment, seed = job["experiment"], job["seed"]
    trust = job["base_model"].get("trust_remote_code", False)
    set_seed(seed)
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust)
    model = build_peft_model(model_dir, experiment, trust)

    checkpoint_dir = checkpoint_root / config_hash(job)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    trainer, stats = build_trainer(job, model, tokenizer, data_dir, out_dir, checkpoint_dir)
    timer = StepTimer(checkpoint_dir / "timings.jsonl")
    trainer.add_callback(timer.callback)
    checkpoint = last_complete_checkpoint(checkpoint_dir)
    resume = checkpoint is not None
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if resume else None)
    trainer.evaluate()
    wall_time = timer.offset + time.perf_counter() - started

    rows = log_rows(trainer.state.log_history, timer.rows)
    model.save_pretrained(out_dir)
    write_jsonl(out_dir / "trainer_log.jsonl", rows)
    metrics = train_metrics(model, trainer, rows, wall_time, stats, experiment["method"])
    metrics["resumed_from_checkpoint"] = resume
    write_json(out_dir / "train_metrics.json", metrics)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="the job's config slice as JSON")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--checkpoint-dir", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    job = json.loads(args.config)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    metrics = train(job, args.model_dir, args.data_dir, args.out_dir, args.checkpoint_dir)
    write_run_info(args.out_dir, job, job["seed"],
                   [args.data_dir / "train.jsonl", args.data_dir / "valid.jsonl"])
    print(json.dumps({k: metrics[k] for k in ("steps", "final_loss", "eval_loss", "wall_time_s")}))


if __name__ == "__main__":
    main()
