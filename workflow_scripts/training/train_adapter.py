"""Train one PEFT adapter (LoRA, QLoRA or DoRA) with the transformers Trainer.

The data comes tokenized (workflow_scripts/training/tokenize_dataset.py: Arrow files, memory-mapped,
shared by every experiment with the same tokens). Checkpoints go to a directory outside the
rule's outputs, keyed by a hash of the job's config, its tokenized data's manifest and its base
model's files, so a killed job resumes where it stopped and a changed config, token or model
never resumes from a stale checkpoint. Batches are
length-grouped with dynamic padding (workflow_scripts/training/length_sampler.py), or packed
(`training.packing`, see workflow_scripts/training/packing.py). Every reported validation loss is the
token-weighted loss of workflow_scripts/training/token_loss.py. Under a data-parallel launch
(local_launch or torchrun, WORLD_SIZE > 1) only the global rank 0 writes. See docs/training.md.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import canonical_json, write_json, write_jsonl
from workflow_scripts.common.run_info import write_run_info
from workflow_scripts.launch.local_launch import init_from_launcher
from workflow_scripts.models.content_hash import data_file_hashes, model_file_hashes

LOG_KEYS = ("loss", "learning_rate", "grad_norm", "eval_loss")
TIMING_KEYS = ("elapsed_s", "memory_mb")
# Non-reentrant checkpointing back-propagates into the adapters although the frozen
# embeddings' outputs need no gradient.
CHECKPOINTING_KWARGS = {"use_reentrant": False}
FINAL_LOSS_SHARE = 0.1  # final_loss: the mean training loss over the last 10% of the steps


def is_main_process() -> bool:
    """Global rank 0, or a single-process run."""
    return int(os.environ.get("RANK", "0")) == 0


def rank_device() -> str | None:
    """This rank's own GPU under a data-parallel launch on CUDA; None (the default) otherwise."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


def checkpoint_key(job: dict, data_files: list[Path], model_dir: str | Path,
                   hash_cache: Path | None = None) -> str:
    """Hash of the job's config and the content of its data files and base model files.

    With `hash_cache`, a file whose size, mtime, ctime and inode are unchanged since it was
    last hashed is not read again (models/content_hash.py): ranks and restarts share it.
    """
    digest = hashlib.sha256(canonical_json(job).encode())
    for name, sha in data_file_hashes(data_files, hash_cache):
        digest.update(f"{name}:{sha}\n".encode())
    for name, sha in model_file_hashes(model_dir, hash_cache):
        digest.update(f"{name}:{sha}\n".encode())
    return digest.hexdigest()[:16]


def hash_cache_dir(checkpoint_root: Path) -> Path:
    """Where file digests are cached: beside every experiment's checkpoints."""
    return checkpoint_root.parent / ".hash_cache"


def world_shape(args) -> dict[str, int]:
    """How many processes trained, and how many CUDA devices (0: trained on CPUs)."""
    import torch

    devices = args.world_size * max(args.n_gpu, 1) if torch.cuda.is_available() else 0
    return {"processes": int(args.world_size), "devices": int(devices)}


def packing_fill(train_set, training: dict) -> dict[str, float]:
    """`packing_fill_ratio`: the share of the packed rows' max_length tokens that samples fill."""
    if not training.get("packing", False):
        return {}
    from workflow_scripts.training.packing import fill_ratio

    lengths = train_set["length"]
    return {"packing_fill_ratio": round(fill_ratio(sum(lengths), len(lengths), training["max_length"]), 4)}


def lora_config(method: str, lora: dict, token_ids: list[int] | None = None):
    """The PEFT config; `token_ids` are embedding rows trained beside the LoRA matrices."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        use_dora=method == "dora",
        use_rslora=lora.get("rslora", False),
        trainable_token_indices=token_ids or None,
    )


def trainable_token_ids(model_dir: str, tokens: list[str], trust_remote_code: bool) -> list[int]:
    """Ids of `lora.trainable_tokens`: chat-format tokens a base model never learned (the
    scratch model's <|im_start|> and <|im_end|>), whose embedding rows the adapter trains."""
    if not tokens:
        return []
    from workflow_scripts.models.loading import load_tokenizer

    vocab = load_tokenizer(model_dir, trust_remote_code=trust_remote_code).get_vocab()
    unknown = [t for t in tokens if t not in vocab]
    if unknown:
        raise SystemExit(f"lora.trainable_tokens: {unknown} not in the vocabulary of {model_dir}")
    return sorted(vocab[t] for t in tokens)


def build_peft_model(model_dir: str, experiment: dict, trust_remote_code: bool):
    """Base model (4-bit for QLoRA) wrapped with the experiment's adapter, on this rank's device."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from workflow_scripts.models.loading import compute_dtype, load_model

    quantization = "4bit" if experiment["method"] == "qlora" else None
    # the compute dtype, not the checkpoint's: bf16 where the GPU has it (the Trainer's bf16
    # autocast), else fp32 (an fp16 checkpoint would train without a loss scaler)
    model = load_model(model_dir, trust_remote_code=trust_remote_code, quantization=quantization,
                       dtype=compute_dtype(), device=rank_device())
    if quantization:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=experiment["training"]["gradient_checkpointing"],
            gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS,
        )
    token_ids = trainable_token_ids(model_dir, experiment["lora"].get("trainable_tokens", []),
                                    trust_remote_code)
    return get_peft_model(model, lora_config(experiment["method"], experiment["lora"], token_ids))


def tokenize_here(job: dict, model_dir: str, data_dir: Path, out_dir: Path) -> Path:
    """Tokenize `data_dir` for this job into `out_dir`, as the workflow's tokenize_dataset job
    does once for every experiment with the same tokens; for runs outside the workflow."""
    from workflow_scripts.training.tokenize_dataset import token_settings, tokenize

    settings = token_settings(job["experiment"]["training"])
    settings["trust_remote_code"] = job["base_model"].get("trust_remote_code", False)
    tokenize(data_dir, model_dir, settings, out_dir)
    return out_dir


def training_arguments(experiment: dict, seed: int, checkpoint_dir: Path, tensorboard_dir: Path,
                       evaluate: bool = True):
    """The Trainer's arguments; `evaluate` False (no validation records) turns evaluation off."""
    import torch
    from transformers import TrainingArguments

    from workflow_scripts.models.loading import compute_dtype

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(tensorboard_dir)

    t = experiment["training"]
    packing = t.get("packing", False)
    bf16 = compute_dtype() == torch.bfloat16
    eval_steps = t["eval_steps"] if evaluate else 0
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
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps or None,
        save_strategy="steps",
        save_steps=t["save_steps"],
        save_total_limit=2,
        # WorkflowTrainer's sampler: batches of similar length in random order, seeded per epoch.
        train_sampling_strategy="group_by_length",
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
            if state.is_world_process_zero:
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


def log_last_step():
    """A callback that logs the training loss at the last step too: otherwise a run that
    ends between two `logging_steps` leaves its last steps out of final_loss, and one
    shorter than `logging_steps` has no logged loss at all."""
    from transformers import TrainerCallback

    class LogLastStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_log = True

    return LogLastStep()


def workflow_trainer_class():
    """The Trainer with this workflow's sampler, validation loss, token count and clock.

    Defined in a function so that importing this module needs no transformers.
    """
    import torch
    from transformers import Trainer
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from workflow_scripts.training.length_sampler import EpochSeededLengthSampler
    from workflow_scripts.training.packing import NUM_TOKENS_KEY
    from workflow_scripts.training.progress import save_clock
    from workflow_scripts.training.token_loss import mean_loss, record_loss_sums, training_loss

    class WorkflowTrainer(Trainer):
        """`eval_features` are unpacked tokenized validation records, `eval_collate` pads them
        as the test-loss code does; `clock` is the run's RunClock; `chunked_loss` computes the
        training and validation losses without full-vocabulary logits (token_loss.py)."""

        def __init__(self, *args, eval_features, eval_collate, clock, chunked_loss=True, **kwargs):
            super().__init__(*args, **kwargs)
            self.eval_features, self.eval_collate, self.clock = eval_features, eval_collate, clock
            self.chunked_loss = chunked_loss

        def _get_train_sampler(self, train_dataset=None):
            if self.args.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(train_dataset)
            args = self.args
            group = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
            return EpochSeededLengthSampler(self.train_dataset["length"], group, args.data_seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # A packed batch's 4D mask does not say how many real tokens it holds: the
            # collator's count does (the Trainer's own count is off for packing).
            n_tokens = inputs.pop(NUM_TOKENS_KEY, None)
            if n_tokens is not None and model.training:
                n_tokens = torch.as_tensor(n_tokens, device=self.args.device)
                self.state.num_input_tokens_seen += int(self.accelerator.reduce(n_tokens, "sum"))
            if self.chunked_loss and not return_outputs and "labels" in inputs:
                loss = self.chunked_compute_loss(model, inputs, num_items_in_batch)
                if loss is not None:
                    return loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def chunked_compute_loss(self, model, inputs, num_items_in_batch):
            """The loss the Trainer's own path gives, from chunks of label positions
            (token_loss.training_loss) instead of full-vocabulary logits."""
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
            loss = training_loss(model, inputs, labels, num_items_in_batch if scaled else None)
            if loss is not None and self.args.average_tokens_across_devices and scaled:
                loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1
                               else self.args.n_gpu)
            return loss

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            """Token-weighted loss over the validation records' assistant tokens, each rank
            scoring its share with the unwrapped model (no collective inside the loop)."""
            args = self.args
            shard = self.eval_features[args.process_index::args.world_size]
            sums = record_loss_sums(self.model, shard, self.eval_collate, args.per_device_eval_batch_size,
                                    self.chunked_loss)
            if args.world_size > 1:
                totals = torch.tensor([sum(s for s, _ in sums), sum(n for _, n in sums)],
                                      dtype=torch.float64, device=args.device)
                totals = self.accelerator.reduce(totals, "sum")
                sums = [(float(totals[0]), int(totals[1]))]
            metrics = {f"{metric_key_prefix}_loss": mean_loss(sums)}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(args, self.state, self.control, metrics)
            return metrics

        def _maybe_log_save_evaluate(self, *args, **kwargs):
            # Called after every optimizer step: the training-step clock stops for logging,
            # evaluation and saving.
            self.clock.step_end()
            try:
                return super()._maybe_log_save_evaluate(*args, **kwargs)
            finally:
                self.clock.step_begin()

        def _save_checkpoint(self, model, trial):
            if self.args.should_save:
                folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                save_clock(Path(self._get_output_dir(trial=trial)) / folder, self.clock)
            super()._save_checkpoint(model, trial)

    return WorkflowTrainer


def last_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoint-N that was written to the end (trainer_state.json comes last).

    A job killed while saving leaves a partial checkpoint, which is skipped.
    """
    done = [p for p in checkpoint_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def remove_other_checkpoints(checkpoint_root: Path, key: str) -> None:
    """Checkpoints of other keys (an older config, data or model) can never be resumed."""
    if checkpoint_root.is_dir():
        for path in checkpoint_root.iterdir():
            if path.is_dir() and path.name != key:
                shutil.rmtree(path, ignore_errors=True)


def log_rows(log_history: list[dict], timings: dict[int, dict]) -> list[dict]:
    """trainer_log.jsonl rows: the Trainer's own log history plus wall time and memory."""
    rows = []
    for entry in log_history:
        if not any(key in entry for key in LOG_KEYS):
            continue
        row = {"step": entry["step"], "epoch": round(entry.get("epoch", 0.0), 4)}
        row.update({k: entry[k] for k in LOG_KEYS if k in entry})
        row.update({k: v for k, v in timings.get(entry["step"], {}).items() if k in TIMING_KEYS})
        rows.append(row)
    return rows


def final_training_loss(rows: list[dict], steps: int) -> tuple[float | None, int]:
    """Mean logged training loss over the last 10% of `steps` (at least the last logged
    window), each logged value weighted by the steps it covers; and how many steps that is."""
    logged = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    if not logged:
        return None, 0
    window_start = min(steps - max(1, math.ceil(FINAL_LOSS_SHARE * steps)), logged[-1][0] - 1)
    previous, weighted = 0, []
    for step, loss in logged:
        if step > window_start:
            weighted.append((loss, step - previous))
        previous = step
    covered = sum(n for _, n in weighted)
    return sum(loss * n for loss, n in weighted) / covered, covered


def last_value(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return values[-1] if values else None


def train_metrics(model, trainer, rows, recorder, stats, method) -> dict[str, Any]:
    import torch

    trainable, total = model.get_nb_trainable_parameters()
    tokens = int(trainer.state.num_input_tokens_seen)
    clock = recorder.clock
    step_time = round(clock.step_time, 3)
    final_loss, window = final_training_loss(rows, trainer.state.global_step)
    return {
        "method": method,
        "trainable_params": int(trainable),
        "total_params": int(total),
        "trainable_share": trainable / total,
        "steps": trainer.state.global_step,
        "wall_time_s": round(clock.elapsed(), 3),
        "train_tokens": tokens,
        "train_step_time_s": step_time,
        "tokens_per_s": round(tokens / step_time, 2) if step_time else None,
        **recorder.peaks(),
        "final_loss": final_loss,
        "final_loss_window_steps": window,
        "eval_loss": last_value(rows, "eval_loss"),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "tokenization": stats.as_dict(),
    }


def data_collator(tokenizer, training: dict, model):
    """Dynamic padding to the batch's longest sample, or packed rows with their 4D mask."""
    from workflow_scripts.training.packing import PackedCollator

    if training.get("packing", False):
        return PackedCollator(tokenizer.pad_token_id, model.config._attn_implementation)
    return padding_collator(tokenizer)


def padding_collator(tokenizer):
    """Right padding to the longest sample, labels padded with IGNORE_INDEX (as the test loss)."""
    from transformers import DataCollatorForSeq2Seq

    from workflow_scripts.training.token_loss import IGNORE_INDEX

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)


def build_trainer(job: dict, model, tokenizer, tokenized_dir: Path, out_dir: Path,
                  checkpoint_dir: Path, clock=None):
    """The configured Trainer and the tokenization stats of the train split, from a tokenized
    dataset (tokenize_dataset's Arrow files, memory-mapped).

    Without validation records (an empty or missing valid.jsonl) the Trainer never evaluates.
    """
    from transformers.trainer_callback import ProgressCallback

    from workflow_scripts.training.progress import RunClock
    from workflow_scripts.training.tokenize_dataset import load_tokenized

    experiment = job["experiment"]
    training = experiment["training"]
    train_set, valid_features, stats = load_tokenized(tokenized_dir)
    args = training_arguments(experiment, job["seed"], checkpoint_dir, out_dir / "tensorboard",
                              evaluate=bool(valid_features))
    trainer = workflow_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=valid_features or None,
        data_collator=data_collator(tokenizer, training, model),
        processing_class=tokenizer,
        eval_features=valid_features,
        eval_collate=padding_collator(tokenizer),
        clock=clock or RunClock(),
        chunked_loss=training.get("chunked_loss", True),
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(quiet_progress())
    trainer.add_callback(log_last_step())
    return trainer, stats


def prepare_checkpoints(job: dict, model_dir: str, tokenized_dir: Path, checkpoint_root: Path,
                        more_inputs: list[Path] = ()) -> Path:
    """This job's checkpoint directory; the main process removes those of other keys.

    The tokenized data's manifest names its settings, tokenizer and the SHA-256 of its
    sources and Arrow files: other tokens never resume this checkpoint, nor do other
    `more_inputs` (a preference job's reference scores and starting adapter)."""
    data_files = [tokenized_dir / "manifest.json", *more_inputs]
    key = checkpoint_key(job, data_files, model_dir, hash_cache_dir(checkpoint_root))
    checkpoint_dir = checkpoint_root / key
    if is_main_process():
        remove_other_checkpoints(checkpoint_root, key)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    return checkpoint_dir


def run_to_end(trainer, clock, checkpoint_dir: Path, checkpoint: Path | None,
               progress_file: Path | None, callbacks: list = ()):
    """Train (from `checkpoint` when resuming) and validate at the last step if the schedule
    did not; (the run's RunRecorder, its ProgressFile), or None off the main process."""
    from workflow_scripts.training.progress import ProgressFile, RunRecorder

    writes = trainer.is_world_process_zero()
    progress = ProgressFile(progress_file if writes else None)
    recorder = RunRecorder(clock, checkpoint_dir / "timings.jsonl", progress, checkpoint is not None)
    for callback in (recorder, *callbacks):
        trainer.add_callback(callback)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    evaluated = [e["step"] for e in trainer.state.log_history if "eval_loss" in e]
    if trainer.eval_features and evaluated[-1:] != [trainer.state.global_step]:
        trainer.evaluate()
    return (recorder, progress) if writes else None


def train(job: dict, model_dir: str, data_dir: Path, out_dir: Path, checkpoint_root: Path,
          progress_file: Path | None = None, tokenized_dir: Path | None = None) -> dict | None:
    """Train, evaluate and write the adapter and its logs; the metrics (None off rank 0).

    The data is `tokenized_dir` (the workflow's tokenize_dataset output) or, without one,
    `data_dir`'s JSONL tokenized here into a temporary directory."""
    if tokenized_dir is not None:
        return train_tokenized(job, model_dir, tokenized_dir, out_dir, checkpoint_root,
                               progress_file)
    with tempfile.TemporaryDirectory(prefix="tokenized-") as tmp:
        tokenized = tokenize_here(job, model_dir, data_dir, Path(tmp))
        return train_tokenized(job, model_dir, tokenized, out_dir, checkpoint_root, progress_file)


def train_tokenized(job: dict, model_dir: str, tokenized_dir: Path, out_dir: Path,
                    checkpoint_root: Path, progress_file: Path | None = None) -> dict | None:
    """`train` on a tokenized dataset."""
    from transformers import set_seed

    from workflow_scripts.models.loading import load_tokenizer
    from workflow_scripts.training.progress import RunClock, load_clock
    from workflow_scripts.training.stop_rules import StopRules

    experiment, seed = job["experiment"], job["seed"]
    trust = job["base_model"].get("trust_remote_code", False)
    set_seed(seed)
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust)
    model = build_peft_model(model_dir, experiment, trust)

    checkpoint_dir = prepare_checkpoints(job, model_dir, tokenized_dir, checkpoint_root)
    checkpoint = last_complete_checkpoint(checkpoint_dir)
    clock = RunClock(load_clock(checkpoint))
    trainer, stats = build_trainer(job, model, tokenizer, tokenized_dir, out_dir, checkpoint_dir,
                                   clock)
    stop_rules = StopRules(job["stop"]) if "stop" in job else None  # search trials only
    ran = run_to_end(trainer, clock, checkpoint_dir, checkpoint, progress_file,
                     [stop_rules] if stop_rules else [])
    if ran is None:
        return None
    recorder, progress = ran
    rows = log_rows(trainer.state.log_history, recorder.rows)
    model.save_pretrained(out_dir)
    write_jsonl(out_dir / "trainer_log.jsonl", rows)
    metrics = train_metrics(model, trainer, rows, recorder, stats, experiment["method"])
    metrics["resumed_from_checkpoint"] = checkpoint is not None
    if stop_rules:
        metrics["stop"] = stop_rules.stopped
    metrics.update(world_shape(trainer.args) | packing_fill(trainer.train_dataset, experiment["training"]))
    write_json(out_dir / "train_metrics.json", metrics)
    progress.write("end", step=metrics["steps"], wall_time_s=metrics["wall_time_s"])
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--config", required=True, help="the job's config slice as JSON")
    parser.add_argument("--model-dir", required=True, help="the base model's directory")
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="the prepared dataset (train.jsonl, valid.jsonl)")
    parser.add_argument("--tokenized-dir", type=Path, default=None,
                        help="its tokenized form (tokenize_dataset's output); without it, "
                        "--data-dir is tokenized here")
    parser.add_argument("--out-dir", required=True, type=Path,
                        help="where the adapter, trainer_log.jsonl and train_metrics.json go")
    parser.add_argument("--checkpoint-dir", required=True, type=Path,
                        help="checkpoints, one folder per config hash: a rerun resumes from here")
    parser.add_argument("--progress-file", type=Path, default=None,
                        help="JSON lines appended as training goes (start, log, eval, end)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per process (default: torch's own choice)")
    args = parser.parse_args(argv)
    job = json.loads(args.config)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    init_from_launcher()  # ranks of local_launch join their group; a no-op otherwise
    if is_main_process():
        args.out_dir.mkdir(parents=True, exist_ok=True)
    metrics = train(job, args.model_dir, args.data_dir, args.out_dir, args.checkpoint_dir,
                    args.progress_file, args.tokenized_dir)
    if metrics is None:
        return
    data_files = [args.data_dir / name for name in ("train.jsonl", "valid.jsonl")]
    if args.tokenized_dir is not None:
        data_files.append(args.tokenized_dir / "manifest.json")
    write_run_info(args.out_dir, job, job["seed"], [p for p in data_files if p.exists()],
                   extra={k: metrics[k] for k in ("processes", "devices")})
    print(json.dumps({k: metrics[k] for k in ("steps", "final_loss", "eval_loss", "wall_time_s")}))


if __name__ == "__main__":
    main()
