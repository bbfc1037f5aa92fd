"""Training throughput and memory: this workflow's trainer against two common setups.

    python benchmarks/bench_training.py [--steps 12] [--batch 8] [--mem-layers 16]

Data: data/raw/alpaca_zh_demo.json through workflow_scripts.prepare_dataset (the train
split), a byte-level BPE trained on it, and randomly initialised Qwen2 models (their speed
and memory do not depend on the weights). Every measurement runs in its own process, so each
peak RSS is that run's own.

Speed: one LoRA model (r=8, all-linear), the same samples, learning rate, batch size and
number of optimizer steps for

- workflow: train_adapter's own trainer (length-grouped batches, dynamic padding), and the
  same with `training.packing: true`;
- padded: the tutorial setup, transformers Trainer with every sample padded to 512 tokens;
- trl: TRL's SFTTrainer with its defaults (conversational dataset, padding to the longest
  sample in a random batch, max_length 1024), except bf16 (off: CPU) and gradient
  checkpointing (off, as in the other runs).

Measured: non-padding tokens per second over `trainer.train()` (model loading and
tokenization excluded) and the process's peak RSS.

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


def speed_training(steps: int, batch: int, **extra) -> dict:
    return dict(learning_rate=LEARNING_RATE, max_steps=steps, batch_size=batch,
                max_length=MAX_LENGTH, warmup_ratio=0.0, logging_steps=steps,
                save_steps=10 * steps, **extra)


def timed_train(trainer) -> dict:
    from workflow_scripts.resource_usage import peak_rss_mb

    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"tokens": int(trainer.state.num_input_tokens_seen), "seconds": seconds,
            "peak_rss_mb": peak_rss_mb()}


def run_workflow(work: Path, steps: int, batch: int, packing: bool) -> dict:
    from transformers import set_seed

    from workflow_scripts.model_loading import load_tokenizer
    from workflow_scripts.train_adapter import build_peft_model, build_trainer

    model_dir = work / "speed-model"
    spec = job(model_dir, "lora", **speed_training(steps, batch, packing=packing))
    set_seed(0)
    model = build_peft_model(str(model_dir), spec["experiment"], False)
    name = f"workflow-{packing}"
    trainer, _ = build_trainer(spec, model, load_tokenizer(str(model_dir)), work / "data",
                               work / name, work / f"{name}-checkpoints")
    return timed_train(trainer)


def lora_model(model_dir: Path):
    from peft import get_peft_model

    from workflow_scripts.model_loading import load_model
    from workflow_scripts.train_adapter import lora_config

    experiment = job(model_dir, "lora")["experiment"]
    return get_peft_model(load_model(str(model_dir)), lora_config("lora", experiment["lora"]))


def baseline_arguments(cls, work: Path, steps: int, batch: int, **extra):
    """The same optimizer settings as the workflow's run, for Trainer or SFTTrainer."""
    return cls(output_dir=str(work / "baseline"), max_steps=steps,
               per_device_train_batch_size=batch, learning_rate=LEARNING_RATE,
               lr_scheduler_type="cosine", logging_steps=steps, save_strategy="no",
               report_to="none", use_cpu=True, seed=0,
               include_num_input_tokens_seen="non_padding", **extra)


def chats(work: Path) -> list[list[dict]]:
    from workflow_scripts.io_utils import read_jsonl

    return [r["messages"] for r in read_jsonl(work / "data" / "train.jsonl")]


def run_padded(work: Path, steps: int, batch: int) -> dict:
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
                      args=baseline_arguments(TrainingArguments, work, steps, batch),
                      train_dataset=Dataset.from_dict(dict(enc)),
                      data_collator=default_data_collator)
    return timed_train(trainer)


def run_trl(work: Path, steps: int, batch: int, trl_site: str) -> dict:
    sys.path.insert(0, trl_site)
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from workflow_scripts.model_loading import load_model, load_tokenizer
    from workflow_scripts.train_adapter import lora_config

    model_dir = work / "speed-model"
    experiment = job(model_dir, "lora")["experiment"]
    set_seed(0)
    args = baseline_arguments(SFTConfig, work, steps, batch, bf16=False,
                              gradient_checkpointing=False)
    trainer = SFTTrainer(model=load_model(str(model_dir)), args=args,
                         train_dataset=Dataset.from_list([{"messages": m} for m in chats(work)]),
                         processing_class=load_tokenizer(str(model_dir)),
                         peft_config=lora_config("lora", experiment["lora"]))
    return timed_train(trainer)


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


def setup(work: Path, mem_layers: int) -> dict:
    """Data, tokenizer and both random models; returns what the table reports about them."""
    from workflow_scripts.build_base_model import train_tokenizer
    from workflow_scripts.io_utils import read_jsonl, write_jsonl

    data = prepare_data(work)
    conversations = [r["messages"] for r in read_jsonl(data / "train.jsonl")]
    tokenizer = train_tokenizer(conversations, vocab_size=8000)
    save_model(work / "speed-model", tokenizer, "float32", **SPEED_MODEL)
    save_model(work / "memory-model", tokenizer, "bfloat16", hidden_size=1024,
               intermediate_size=4096, num_hidden_layers=mem_layers, num_attention_heads=16,
               num_key_value_heads=16)
    records = list(read_jsonl(data / "train.jsonl"))
    (work / "memory-data").mkdir()
    write_jsonl(work / "memory-data" / "train.jsonl", records[:32])
    write_jsonl(work / "memory-data" / "valid.jsonl", records[32:36])
    return {"train_samples": len(records), "vocab": len(tokenizer)}


def in_subprocess(work: Path, name: str, args: argparse.Namespace) -> dict:
    """The worker's JSON result plus its whole-process peak RSS, from its own rusage."""
    cmd = [sys.executable, __file__, "--worker", name, "--work", str(work),
           "--steps", str(args.steps), "--batch", str(args.batch), "--trl-site", args.trl_site or ""]
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
        return run_padded(work, args.steps, args.batch)
    if name == "trl":
        return run_trl(work, args.steps, args.batch, args.trl_site)
    return run_workflow(work, args.steps, args.batch, packing=name == "workflow+packing")


def print_speed(speed: dict[str, dict], info: dict) -> None:
    rate = {name: r["tokens"] / r["seconds"] for name, r in speed.items()}
    print(f"\nspeed: {info['steps']} steps x batch {info['batch']}, LoRA r=8 all-linear on a "
          f"random Qwen2 ({SPEED_MODEL}), {info['train_samples']} alpaca_zh train samples")
    print(f"{'setup':<18}{'tokens':>8}{'s':>8}{'tok/s':>9}{'peak RSS MB':>13}"
          f"{'vs padded':>11}{'vs trl':>8}")
    for name, r in speed.items():
        vs_trl = f"{rate[name] / rate['trl']:.2f}x" if "trl" in rate else "-"
        print(f"{name:<18}{r['tokens']:>8}{r['seconds']:>8.1f}{rate[name]:>9.0f}"
              f"{r['peak_rss_mb']:>13.0f}{rate[name] / rate['padded']:>10.2f}x{vs_trl:>8}")


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
    parser.add_argument("--steps", type=int, default=12)
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
        info = setup(work, args.mem_layers) | {"steps": args.steps, "batch": args.batch}
        names = ["workflow", "workflow+packing", "padded"]
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
