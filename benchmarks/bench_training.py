"""Training throughput and memory: this workflow's trainer against two common setups.

    python benchmarks/bench_training.py [--samples 96] [--batch 8] [--mem-layers 16] [--parts speed]

Data: data/raw/alpaca_zh_demo.json through workflow_scripts.prepare_dataset (the train
split), a byte-level BPE trained on it, and randomly initialised Qwen2 models (their speed
and memory do not depend on the weights). Every measurement runs in its own process, so each
peak RSS is that run's own.

Speed: one LoRA model (r=8, all-linear), the learning rate and batch size, and one epoch over
the same `--samples` records drawn at random from the train split (seeded), for

- workflow: train_adapter's own trainer (length-grouped batches in random order, dynamic
  padding), and the same with `training.packing: true` (fewer, fuller rows);
- padded: the tutorial setup, transformers Trainer with every sample padded to 512 tokens;
- trl: TRL's SFTTrainer with its defaults (conversational dataset, padding to the longest
  sample in a random batch, max_length 1024), except bf16 (off: CPU) and gradient
  checkpointing (off, as in the other runs);
- ceiling: forward, backward and AdamW step of the same LoRA model on full batches (`--batch`
  rows of the records' mean length) cut from the same records' tokens: no padding, no
  masking, no Trainer. A setup's share of it says how much padding and overhead cost.

Measured: non-padding tokens per second over `trainer.train()` (model loading and
tokenization excluded; no evaluation and no checkpoint in any setup) and the process's peak
RSS. Every setup sees every record once: an earlier version timed 12 steps, which under
length grouping were the longest batches of the first mega-batch, and flattered it.

Memory: a ~270M-parameter Qwen2 (bf16 checkpoint, as real ones are) trained for two steps
through train_adapter.train as LoRA (fp32 weights on the CPU) and as QLoRA (NF4 + double
quantization), with the same data and hyperparameters, once without and once with gradient
checkpointing. Each run's peak RSS is its whole process's (imports, loading, training), read
from the child's rusage by the parent; QLoRA / LoRA is checked against the issue's 0.6.

TRL: installed outside the project's venv (`pip install --target /tmp/trl-site trl`); tested
with trl==1.16.0 on transformers 5.23. `--trl-site` points at it; without it the TRL row is
skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAX_LENGTH = 512
LEARNING_RATE = 2e-4
SPEED_MODEL = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2)


def prepare_data(work: Path) -> Path:
    """The demo file cleaned and split by the workflow's own data step."""
    from workflow_scripts.prepare_dataset import prepare

    spec = {"format": "alpaca", "files": [str(ROOT / "data/raw/alpaca_zh_demo.json")]}
    prepare("alpaca_zh", spec, {}, {"valid": 0.05, "test": 0.05}, 42, work / "data", workers=1)
    return work / "data"


def save_model(path: Path, tokenizer, dtype: str, **shape) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=len(tokenizer), tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         max_position_embeddings=2048, **shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def job(model_dir: Path, method: str, **training) -> dict:
    """A train_adapter job with the schema's defaults filled in."""
    from workflow_scripts.experiment_config import resolve_experiments

    config = {"datasets": {"d": {"format": "alpaca", "files": ["x"]}},
              "base_models": {"m": {"source": "path", "path": str(model_dir)}},
              "experiments": {"e": {"base_model": "m", "dataset": "d", "method": method,
                                    "lora": {"r": 8, "alpha": 16}, "training": training}}}
    return {"experiment": resolve_experiments(config)["e"], "seed": 0,
            "base_model": {"source": "path", "path": str(model_dir)}}


def speed_training(batch: int, **extra) -> dict:
    """One epoch, no evaluation (speed-data has no valid split), no checkpoint."""
    return dict(learning_rate=LEARNING_RATE, max_steps=-1, epochs=1, batch_size=batch,
                max_length=MAX_LENGTH, warmup_ratio=0.0, logging_steps=1000,
                save_steps=100000, eval_steps=0, **extra)


def timed_train(trainer) -> dict:
    from workflow_scripts.resource_usage import peak_rss_mb

    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"tokens": int(trainer.state.num_input_tokens_seen), "seconds": seconds,
            "peak_rss_mb": peak_rss_mb()}


def run_workflow(work: Path, batch: int, packing: bool) -> dict:
    from transformers import set_seed

    from workflow_scripts.model_loading import load_tokenizer
    from workflow_scripts.train_adapter import build_peft_model, build_trainer

    model_dir = work / "speed-model"
    spec = job(model_dir, "lora", **speed_training(batch, packing=packing))
    set_seed(0)
    model = build_peft_model(str(model_dir), spec["experiment"], False)
    name = f"workflow-{packing}"
    trainer, _ = build_trainer(spec, model, load_tokenizer(str(model_dir)), work / "speed-data",
                               work / name, work / f"{name}-checkpoints")
    trainer.args.save_strategy = "no"  # no checkpoint at the end either, as in the baselines
    return timed_train(trainer)


def lora_model(model_dir: Path):
    from peft import get_peft_model

    from workflow_scripts.model_loading import load_model
    from workflow_scripts.train_adapter import lora_config

    experiment = job(model_dir, "lora")["experiment"]
    return get_peft_model(load_model(str(model_dir)), lora_config("lora", experiment["lora"]))


def baseline_arguments(cls, work: Path, batch: int, **extra):
    """The same optimizer settings as the workflow's run, for Trainer or SFTTrainer."""
    return cls(output_dir=str(work / "baseline"), num_train_epochs=1,
               per_device_train_batch_size=batch, learning_rate=LEARNING_RATE,
               lr_scheduler_type="cosine", logging_steps=1000, save_strategy="no",
               report_to="none", use_cpu=True, seed=0,
               include_num_input_tokens_seen="non_padding", **extra)


def chats(work: Path) -> list[list[dict]]:
    from workflow_scripts.io_utils import read_jsonl

    return [r["messages"] for r in read_jsonl(work / "speed-data" / "train.jsonl")]


def run_padded(work: Path, batch: int) -> dict:
    """The tutorial recipe: every sample padded to max_length, loss on every real token."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator, set_seed

    from workflow_scripts.model_loading import load_tokenizer

    model_dir = work / "speed-model"
    tokenizer = load_tokenizer(str(model_dir))
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in chats(work)]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=MAX_LENGTH)
    enc["labels"] = [[t if keep else -100 for t, keep in zip(ids, mask)]
                     for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
    set_seed(0)
    trainer = Trainer(model=lora_model(model_dir),
                      args=baseline_arguments(TrainingArguments, work, batch),
                      train_dataset=Dataset.from_dict(dict(enc)),
                      data_collator=default_data_collator)
    return timed_train(trainer)


def run_trl(work: Path, batch: int, trl_site: str) -> dict:
    sys.path.insert(0, trl_site)
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from workflow_scripts.model_loading import load_model, load_tokenizer
    from workflow_scripts.train_adapter import lora_config

    model_dir = work / "speed-model"
    experiment = job(model_dir, "lora")["experiment"]
    set_seed(0)
    args = baseline_arguments(SFTConfig, work, batch, bf16=False,
                              gradient_checkpointing=False)
    trainer = SFTTrainer(model=load_model(str(model_dir)), args=args,
                         train_dataset=Dataset.from_list([{"messages": m} for m in chats(work)]),
                         processing_class=load_tokenizer(str(model_dir)),
                         peft_config=lora_config("lora", experiment["lora"]))
    return timed_train(trainer)


def run_ceiling(work: Path, batch: int) -> dict:
    """Forward, backward and optimizer step on full rows of the records' real tokens."""
    import torch
    from transformers import set_seed

    from workflow_scripts.chat_tokenize import tokenize_records
    from workflow_scripts.model_loading import load_tokenizer
    from workflow_scripts.resource_usage import peak_rss_mb

    model_dir = work / "speed-model"
    records = [{"messages": m} for m in chats(work)]
    features, stats = tokenize_records(load_tokenizer(str(model_dir)), records, MAX_LENGTH)
    width = round(stats.tokens / len(features))
    stream = torch.tensor([t for f in features for t in f["input_ids"]])
    rows = stream[: len(stream) // width * width].view(-1, width)
    set_seed(0)
    model = lora_model(model_dir).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    start = time.perf_counter()
    for first in range(0, len(rows), batch):
        ids = rows[first:first + batch]
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - start
    return {"tokens": rows.numel(), "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
            "row_length": width}


def vm_rss_mb() -> float:
    """Resident set size now (Linux VmRSS)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def record_rss_at_train_start(rss: dict) -> None:
    """Note the RSS when `Trainer.train` starts: the model, adapter and data are loaded."""
    import transformers

    train = transformers.Trainer.train

    def measured(self, *args, **kwargs):
        rss["loaded_rss_mb"] = vm_rss_mb()
        return train(self, *args, **kwargs)

    transformers.Trainer.train = measured


def memory_training(checkpointing: bool) -> dict:
    return dict(max_steps=2, batch_size=2, max_length=128, save_steps=100, logging_steps=1,
                warmup_ratio=0.0, gradient_checkpointing=checkpointing)


def run_memory(work: Path, method: str, checkpointing: bool) -> dict:
    """Two optimizer steps of train_adapter.train on the big model. The process's peak RSS
    is read by the parent (`in_subprocess`), so it covers imports, loading and training."""
    from workflow_scripts.train_adapter import train

    rss: dict = {}
    record_rss_at_train_start(rss)
    model_dir = work / "memory-model"
    spec = job(model_dir, method, **memory_training(checkpointing))
    name = f"mem-{method}-{checkpointing}"
    metrics = train(spec, str(model_dir), work / "memory-data", work / name,
                    work / f"{name}-checkpoints")
    return {"seconds": metrics["wall_time_s"], **rss}


def speed_sample(data: Path, out: Path, samples: int) -> int:
    """`samples` train records drawn at random (seed 0): every speed setup trains on them."""
    import random

    from workflow_scripts.io_utils import read_jsonl, write_jsonl

    records = list(read_jsonl(data / "train.jsonl"))
    out.mkdir()
    return write_jsonl(out / "train.jsonl", random.Random(0).sample(records, min(samples, len(records))))


def setup(work: Path, mem_layers: int, samples: int, parts: str) -> dict:
    """Data, tokenizer and the random models `parts` needs; what the table reports of them."""
    from workflow_scripts.build_base_model import train_tokenizer
    from workflow_scripts.io_utils import read_jsonl, write_jsonl

    data = prepare_data(work)
    speed_samples = speed_sample(data, work / "speed-data", samples)
    conversations = [r["messages"] for r in read_jsonl(data / "train.jsonl")]
    tokenizer = train_tokenizer(conversations, vocab_size=8000)
    save_model(work / "speed-model", tokenizer, "float32", **SPEED_MODEL)
    if "memory" in parts:
        save_model(work / "memory-model", tokenizer, "bfloat16", hidden_size=1024,
                   intermediate_size=4096, num_hidden_layers=mem_layers, num_attention_heads=16,
                   num_key_value_heads=16)
    records = list(read_jsonl(data / "train.jsonl"))
    (work / "memory-data").mkdir()
    write_jsonl(work / "memory-data" / "train.jsonl", records[:32])
    write_jsonl(work / "memory-data" / "valid.jsonl", records[32:36])
    return {"train_samples": len(records), "speed_samples": speed_samples, "vocab": len(tokenizer)}


def in_subprocess(work: Path, name: str, args: argparse.Namespace) -> dict:
    """The worker's JSON result plus its whole-process peak RSS, from its own rusage."""
    cmd = [sys.executable, __file__, "--worker", name, "--work", str(work),
           "--batch", str(args.batch), "--trl-site", args.trl_site or ""]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{err.read()[-3000:]}")
        result = json.loads(out.read().strip().splitlines()[-1])
    return result | {"process_peak_rss_mb": usage.ru_maxrss / 1024}


def worker(name: str, work: Path, args: argparse.Namespace) -> dict:
    if name.startswith("memory-"):
        _, method, checkpointing = name.split("-")
        return run_memory(work, method, checkpointing == "checkpointing")
    if name == "padded":
        return run_padded(work, args.batch)
    if name == "trl":
        return run_trl(work, args.batch, args.trl_site)
    if name == "ceiling":
        return run_ceiling(work, args.batch)
    return run_workflow(work, args.batch, packing=name == "workflow+packing")


def print_speed(speed: dict[str, dict], info: dict) -> None:
    rate = {name: r["tokens"] / r["seconds"] for name, r in speed.items()}
    print(f"\nspeed: one epoch over {info['speed_samples']} of the {info['train_samples']} alpaca_zh "
          f"train samples, batch {info['batch']}, LoRA r=8 all-linear on a random Qwen2 "
          f"({SPEED_MODEL}); ceiling rows of {speed['ceiling']['row_length']} tokens")
    print(f"{'setup':<18}{'tokens':>8}{'s':>8}{'tok/s':>9}{'peak RSS MB':>13}"
          f"{'vs padded':>11}{'vs trl':>8}{'of ceiling':>12}")
    for name, r in speed.items():
        vs_trl = f"{rate[name] / rate['trl']:.2f}x" if "trl" in rate else "-"
        print(f"{name:<18}{r['tokens']:>8}{r['seconds']:>8.1f}{rate[name]:>9.0f}"
              f"{r['peak_rss_mb']:>13.0f}{rate[name] / rate['padded']:>10.2f}x{vs_trl:>8}"
              f"{rate[name] / rate['ceiling']:>12.2f}")


MEMORY_TARGET = 0.6  # the bound on QLoRA / LoRA peak RSS


def memory_names(checkpointing: str) -> list[str]:
    return [f"memory-{method}-{checkpointing}" for method in ("lora", "qlora")]


def print_memory(memory: dict[str, dict], info: dict) -> None:
    print(f"\nmemory: 2 steps x batch 2 x <=128 tokens, {info['memory_params'] / 1e6:.0f}M-parameter "
          "random Qwen2 (bf16 checkpoint); peak RSS of each whole training process")
    for name, r in memory.items():
        print(f"{name:<32} peak RSS {r['process_peak_rss_mb']:>7.0f} MB (RSS at train start "
              f"{r['loaded_rss_mb']:>6.0f} MB)   {r['seconds']:>6.1f} s")
    for checkpointing in ("plain", "checkpointing"):
        lora, qlora = (memory[n]["process_peak_rss_mb"] for n in memory_names(checkpointing))
        ratio = qlora / lora
        verdict = "PASS" if ratio <= MEMORY_TARGET else "MISSED"
        print(f"QLoRA / LoRA peak RSS ({checkpointing}): {ratio:.2f} "
              f"(target <= {MEMORY_TARGET}) {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=96, help="records every speed setup trains on")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mem-layers", type=int, default=16, help="layers of the memory model")
    parser.add_argument("--trl-site", default="/tmp/trl-site", help="where trl is installed")
    parser.add_argument("--parts", default="speed,memory", help="speed, memory or both")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.work, args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        info = setup(work, args.mem_layers, args.samples, args.parts) | {"batch": args.batch}
        names = ["workflow", "workflow+packing", "padded", "ceiling"]
        names += ["trl"] if args.trl_site and Path(args.trl_site, "trl").exists() else []
        if "speed" in args.parts:
            print_speed({name: in_subprocess(work, name, args) for name in names}, info)
        if "memory" in args.parts:
            info["memory_params"] = memory_model_params(work)
            names = memory_names("plain") + memory_names("checkpointing")
            print_memory({name: in_subprocess(work, name, args) for name in names}, info)


def memory_model_params(work: Path) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM
    import torch

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(work / "memory-model"))
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    main()
