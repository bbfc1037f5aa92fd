"""Preference-tune one PEFT adapter (DPO, IPO, hinge, robust DPO, ORPO, SimPO, KTO).

The policy continues from an SFT experiment's adapter (`init_from`), or starts a new adapter
on the base model. Losses that need a reference read its answer log-probs from the reference
job's files (reference_logps.py), computed once by the model the policy starts from: the SFT
adapter, frozen, or the base. No step holds a second model or runs a reference forward pass.
Dropout is off (as TRL's `disable_dropout`), so before the first update the policy scores
exactly its reference's numbers and every reward is 0.

Everything else is SFT's (train_adapter.py): the Trainer, its arguments, length-grouped
seeded batches, checkpoints outside the outputs keyed by the job, resume after a kill, the
run clock and memory peaks, and the output files; trainer_log.jsonl rows add TRL's metric
names (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
logps/rejected, and eval_ ones at each validation). See docs/training.md, "Preference tuning".
"""
from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import write_json, write_jsonl
from workflow_scripts.common.run_info import write_run_info
from workflow_scripts.training import preference_objective
from workflow_scripts.training.preference_logps import PreferenceCollator, batch_logps
from workflow_scripts.training.preference_tokenize import load_split, roles_of
from workflow_scripts.training.reference_logps import read_scores
from workflow_scripts.training.tokenize_dataset import StoredStats
from workflow_scripts.training.train_adapter import (CHECKPOINTING_KWARGS, TIMING_KEYS,
                                                     build_peft_model, is_main_process,
                                                     last_complete_checkpoint, log_last_step,
                                                     prepare_checkpoints, quiet_progress,
                                                     rank_device, run_to_end, train_metrics,
                                                     training_arguments, workflow_trainer_class,
                                                     world_shape)

METRIC_PREFIXES = ("rewards/", "logps/", "log_odds", "nll_loss", "kl")


def with_reference(dataset, reference_file: Path | None, roles: tuple[str, str]):
    """The tokenized rows with the reference's log-probs as `ref_<role>_logp` columns."""
    if reference_file is None:
        return dataset
    scores = read_scores(reference_file, dataset["id"])
    for role in roles:
        dataset = dataset.add_column(f"ref_{role}_logp", scores[f"{role}_logp"])
    return dataset


def disable_dropout(model) -> None:
    """Every dropout off: the policy and its reference score the same numbers at step 0."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def policy_model(model_dir: str, experiment: dict, init_adapter: str | None, trust: bool):
    """The SFT adapter, trainable, on its base (4-bit for QLoRA); or a new adapter."""
    if not init_adapter:
        return build_peft_model(model_dir, experiment, trust)
    from peft import PeftModel, prepare_model_for_kbit_training

    from workflow_scripts.models.loading import compute_dtype, load_model

    quantization = "4bit" if experiment["method"] == "qlora" else None
    model = load_model(model_dir, trust_remote_code=trust, quantization=quantization,
                       dtype=compute_dtype(), device=rank_device())
    if quantization:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=experiment["training"]["gradient_checkpointing"],
            gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)
    return PeftModel.from_pretrained(model, init_adapter, is_trainable=True)


def step_outputs(model, inputs: dict, spec: dict, roles: tuple[str, str], chunked: bool):
    """(loss, metrics as floats) of one collated batch, with gradients through the policy."""
    (first, first_n), (second, second_n) = batch_logps(model, inputs, chunked)
    reference = None
    if f"ref_{roles[0]}_logp" in inputs:
        reference = tuple(inputs[f"ref_{role}_logp"].to(first.device, first.dtype)
                          for role in roles)
    extra = {key: inputs[key].to(first.device) for key in ("label", "loss_weight")
             if key in inputs}
    loss, metrics = preference_objective.compute(
        spec, (first, first_n), (second, second_n), reference, **extra)
    return loss, {k: float(v) for k, v in metrics.items()}


def preference_trainer_class():
    """WorkflowTrainer (its sampler, clock and checkpoints) with the preference loss."""
    import torch

    base = workflow_trainer_class()

    class PreferenceTrainer(base):
        """`eval_rows` are the validation rows (with their reference columns); `spec` is the
        experiment's `preference` settings; `roles` the rows' two answers."""

        def __init__(self, *args, spec: dict, roles: tuple[str, str], **kwargs):
            super().__init__(*args, **kwargs)
            self.spec, self.roles = spec, roles
            self.pending: dict[str, list[float]] = defaultdict(list)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                n_tokens = inputs["attention_mask"].sum().to(self.args.device)
                self.state.num_input_tokens_seen += int(self.accelerator.reduce(n_tokens, "sum"))
            loss, metrics = step_outputs(model, inputs, self.spec, self.roles, self.chunked_loss)
            for key, value in metrics.items():
                self.pending[key].append(value)
            return (loss, {}) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs and self.pending:  # a training log: the steps' metric means
                logs.update({k: sum(v) / len(v) for k, v in self.pending.items()})
                self.pending.clear()
            super().log(logs, start_time)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            """Mean loss and metrics over every validation row (each batch weighted by its
            rows), this rank's share, no gradients."""
            args = self.args
            rows = self.eval_features[args.process_index::args.world_size]
            totals: dict[str, float] = defaultdict(float)
            count = 0
            self.model.eval()
            try:
                for start in range(0, len(rows), args.per_device_eval_batch_size):
                    batch = self.eval_collate(rows[start:start + args.per_device_eval_batch_size])
                    with torch.no_grad():
                        loss, metrics = step_outputs(self.model, batch, self.spec, self.roles,
                                                     self.chunked_loss)
                    n = len(batch["input_ids"]) // 2
                    for key, value in {"loss": float(loss), **metrics}.items():
                        totals[key] += value * n
                    count += n
            finally:
                self.model.train()
            metrics = {f"{metric_key_prefix}_{k}": v / max(count, 1) for k, v in totals.items()}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(args, self.state, self.control,
                                                             metrics)
            return metrics

    return PreferenceTrainer


def log_rows(log_history: list[dict], timings: dict[int, dict]) -> list[dict]:
    """trainer_log.jsonl rows: SFT's keys plus the preference metrics (train and eval_)."""
    keep = ("loss", "learning_rate", "grad_norm", "eval_loss")
    rows = []
    for entry in log_history:
        picked = {k: v for k, v in entry.items()
                  if k in keep or k.removeprefix("eval_").startswith(METRIC_PREFIXES)}
        if not picked:
            continue
        row = {"step": entry["step"], "epoch": round(entry.get("epoch", 0.0), 4), **picked}
        row.update({k: v for k, v in timings.get(entry["step"], {}).items() if k in TIMING_KEYS})
        rows.append(row)
    return rows


def build_trainer(job: dict, model, tokenizer, tokenized_dir: Path, reference_dir: Path | None,
                  out_dir: Path, checkpoint_dir: Path, clock):
    from transformers.trainer_callback import ProgressCallback

    from workflow_scripts.common.io_utils import read_json

    experiment = job["experiment"]
    train_set, kind = load_split(tokenized_dir, "train")
    valid_set, _ = load_split(tokenized_dir, "valid")
    roles = roles_of(kind)
    ref = (lambda split: reference_dir / f"{split}.parquet") if reference_dir else (lambda s: None)
    train_set = with_reference(train_set, ref("train"), roles)
    valid_rows = with_reference(valid_set, ref("valid"), roles).to_list()
    args = training_arguments(experiment, job["seed"], checkpoint_dir, out_dir / "tensorboard",
                              evaluate=bool(valid_rows))
    args.remove_unused_columns = False  # the rows are not the model's forward arguments
    args.include_num_input_tokens_seen = "no"  # counted in compute_loss: both answers' tokens
    collate = PreferenceCollator(tokenizer.pad_token_id, roles)
    trainer = preference_trainer_class()(
        model=model, args=args, train_dataset=train_set, eval_dataset=valid_rows or None,
        data_collator=collate, processing_class=tokenizer, eval_features=valid_rows,
        eval_collate=collate, clock=clock, chunked_loss=experiment["training"].get("chunked_loss", True),
        spec=experiment["preference"], roles=roles)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(quiet_progress())
    trainer.add_callback(log_last_step())
    return trainer, StoredStats(read_json(tokenized_dir / "stats.json")["train"])


def train(job: dict, model_dir: str, tokenized_dir: Path, reference_dir: Path | None,
          init_adapter: str | None, out_dir: Path, checkpoint_root: Path,
          progress_file: Path | None = None) -> dict | None:
    """Train and write the adapter, trainer_log.jsonl and train_metrics.json (None off rank 0)."""
    from transformers import set_seed

    from workflow_scripts.models.loading import load_tokenizer
    from workflow_scripts.training.progress import RunClock, load_clock

    experiment, seed = job["experiment"], job["seed"]
    trust = job["base_model"].get("trust_remote_code", False)
    set_seed(seed)
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust)
    model = policy_model(model_dir, experiment, init_adapter, trust)
    disable_dropout(model)
    more = [reference_dir / "manifest.json"] if reference_dir else []
    more += [Path(init_adapter) / "adapter_model.safetensors"] if init_adapter else []
    checkpoint_dir = prepare_checkpoints(job, model_dir, tokenized_dir, checkpoint_root, more)
    checkpoint = last_complete_checkpoint(checkpoint_dir)
    clock = RunClock(load_clock(checkpoint))
    trainer, stats = build_trainer(job, model, tokenizer, tokenized_dir, reference_dir, out_dir,
                                   checkpoint_dir, clock)
    ran = run_to_end(trainer, clock, checkpoint_dir, checkpoint, progress_file)
    if ran is None:
        return None
    recorder, progress = ran
    rows = log_rows(trainer.state.log_history, recorder.rows)
    model.save_pretrained(out_dir)
    write_jsonl(out_dir / "trainer_log.jsonl", rows)
    metrics = train_metrics(model, trainer, rows, recorder, stats, experiment["method"])
    metrics.update(stage="preference", loss_type=experiment["preference"]["loss"],
                   resumed_from_checkpoint=checkpoint is not None,
                   **final_preference_metrics(rows), **world_shape(trainer.args))
    write_json(out_dir / "train_metrics.json", metrics)
    progress.write("end", step=metrics["steps"], wall_time_s=metrics["wall_time_s"])
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return metrics


def final_preference_metrics(rows: list[dict]) -> dict[str, Any]:
    """The last validation's preference metrics (eval_rewards/accuracies, ...)."""
    last = [r for r in rows if "eval_loss" in r][-1:]
    return {k: v for k, v in (last[0] if last else {}).items()
            if k.startswith("eval_") and k != "eval_loss"}


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--config", required=True, help="the job's config slice as JSON")
    parser.add_argument("--model-dir", required=True, help="the base model's directory")
    parser.add_argument("--tokenized-dir", required=True, type=Path,
                        help="preference_tokenize's output")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the prepared dataset, whose pairs files run_info.json records")
    parser.add_argument("--reference-dir", type=Path, default=None,
                        help="reference_logps's output (none for reference-free losses)")
    parser.add_argument("--init-adapter", default=None, help="the SFT adapter to continue")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--checkpoint-dir", required=True, type=Path)
    parser.add_argument("--progress-file", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    job = json.loads(args.config)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if is_main_process():
        args.out_dir.mkdir(parents=True, exist_ok=True)
    metrics = train(job, args.model_dir, args.tokenized_dir, args.reference_dir, args.init_adapter,
                    args.out_dir, args.checkpoint_dir, args.progress_file)
    if metrics is None:
        return
    inputs = [args.data_dir / f"{split}.pairs.jsonl" for split in ("train", "valid")] \
        if args.data_dir else []
    inputs += [args.tokenized_dir / "manifest.json"]
    inputs += [args.reference_dir / "manifest.json"] if args.reference_dir else []
    write_run_info(args.out_dir, job, job["seed"], [p for p in inputs if p.exists()],
                   extra={k: metrics[k] for k in ("processes", "devices")})
    print(json.dumps({k: metrics[k] for k in ("steps", "final_loss", "eval_loss", "wall_time_s")}))


if __name__ == "__main__":
    main()
