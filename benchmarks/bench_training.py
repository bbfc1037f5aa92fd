"""Training throughput and memory: this workflow's trainer against two common setups.

    python benchmarks/bench_training.py [--shape small|qwen2-0.5b] [--layers N] [--samples 96]
                                        [--batch 8] [--mem-layers 16] [--parts speed,memory]

Data: data/raw/alpaca_zh_demo.json through workflow_scripts.data.prepare_dataset (the train
split), a byte-level BPE trained on it, and randomly initialised Qwen2 models (their speed
and memory do not depend on the weights). Every measurement runs in its own process, so each
peak RSS is that run's own.

Shapes (`--shape`): `small` (the default, sized for a 2-core CPU: hidden 256, 4 layers) or
`qwen2-0.5b` (Qwen2-0.5B's config: hidden 896, intermediate 4864, 24 layers, 14 heads, 2 KV
heads, vocabulary 151,936, tied embeddings: 494,032,768 parameters, bf16 checkpoint), for a
GPU. `--layers` overrides the layer count (a quick CPU run of the big shape).

Device: CUDA when there is one, else the CPU. On CUDA every setup trains in bf16 (the
checkpoint's dtype, with the Trainer's bf16 autocast; the ceiling under the same autocast),
and the tables add each run's peak CUDA memory allocated to tensors and reserved by the
caching allocator.

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
RSS. Every setup sees every record once: a fixed number of steps would, under length
grouping, time the longest batches of the first mega-batch only, and flatter it.

Memory: a Qwen2 with a bf16 checkpoint, as real ones are (`small`: ~270M parameters,
`--mem-layers` layers; `qwen2-0.5b`: the same shape as the speed model) trained through
train_adapter.train as LoRA (fp32 weights on the CPU, bf16 on CUDA) and as QLoRA (NF4 +
double quantization), with the same data and hyperparameters, once without and once with
gradient checkpointing: on the CPU 2 steps of batch 2 x <=128 tokens, on CUDA 4 steps of
batch 4 x 512 packed tokens. Each run's peak RSS is its whole process's (imports, loading,
training), read from the child's rusage by the parent; on the CPU QLoRA / LoRA is checked
against a target of 0.6. On CUDA the peaks allocated and reserved cover the whole process
too, and "at start" is what was allocated when training began (weights, adapter, data).

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
SHAPES = {
    "small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),
    # Qwen/Qwen2-0.5B's config.json
    "qwen2-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                       rope_theta=1000000.0, rms_norm_eps=1e-6),
}
SMALL_MEMORY_SHAPE = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                          num_key_value_heads=16)


def on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def model_config(tokenizer, **shape):
    """A Qwen2 config of `shape`; the vocabulary is the tokenizer's unless the shape sets one
    (ids above the tokenizer's never occur, but the embedding and logits keep their size)."""
    from transformers import Qwen2Config

    shape = {"vocab_size": len(tokenizer)} | shape
    return Qwen2Config(tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, max_position_embeddings=2048, **shape)


def speed_shape(name: str, layers: int | None) -> dict:
    shape = dict(SHAPES[name])
    if layers:
        shape["num_hidden_layers"] = layers
    return shape


def memory_shape(name: str, layers: int | None, mem_layers: int) -> dict:
    if name == "small":
        return SMALL_MEMORY_SHAPE | {"num_hidden_layers": mem_layers}
    return speed_shape(name, layers)


def prepare_data(work: Path) -> Path:
    """The demo file cleaned and split by the workflow's own data step."""
    from workflow_scripts.data.prepare_dataset import prepare

    spec = {"format": "alpaca", "files": [str(ROOT / "data/raw/alpaca_zh_demo.json")]}
    prepare("alpaca_zh", spec, {}, {"valid": 0.05, "test": 0.05}, 42, work / "data", workers=1)
    return work / "data"


def save_model(path: Path, tokenizer, dtype: str, **shape) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(tokenizer, **shape),
                                             dtype=getattr(torch, dtype))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def job(model_dir: Path, method: str, **training) -> dict:
    """A train_adapter job with the schema's defaults filled in."""
    from workflow_scripts.common.config import resolve_experiments

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


def start_timing() -> float:
    """Now, with the GPU idle and its memory peaks reset to what is allocated."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    return time.perf_counter()


def stop_timing(start: float, tokens: int) -> dict:
    """Seconds since `start` once the GPU has finished, and the memory peaks: RSS of the
    whole process; on CUDA, allocated and reserved since `start_timing`."""
    import torch

    from workflow_scripts.common.resource_usage import peak_memory

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {"tokens": tokens, "seconds": time.perf_counter() - start, **peak_memory()}


def timed_train(trainer) -> dict:
    start = start_timing()
    trainer.train()
    return stop_timing(start, int(trainer.state.num_input_tokens_seen))


def run_workflow(work: Path, batch: int, packing: bool) -> dict:
    from transformers import set_seed

    from workflow_scripts.models.loading import load_tokenizer
    from workflow_scripts.training.train_adapter import build_peft_model, build_trainer, tokenize_here

    model_dir = work / "speed-model"
    spec = job(model_dir, "lora", **speed_training(batch, packing=packing))
    set_seed(0)
    model = build_peft_model(str(model_dir), spec["experiment"], False)
    name = f"workflow-{packing}"
    tokenized = tokenize_here(spec, str(model_dir), work / "speed-data", work / f"{name}-tokenized")
    trainer, _ = build_trainer(spec, model, load_tokenizer(str(model_dir)), tokenized,
                               work / name, work / f"{name}-checkpoints")
    trainer.args.save_strategy = "no"  # no checkpoint at the end either, as in the baselines
    return timed_train(trainer)


def lora_model(model_dir: Path):
    from peft import get_peft_model

    from workflow_scripts.models.loading import load_model
    from workflow_scripts.training.train_adapter import lora_config

    experiment = job(model_dir, "lora")["experiment"]
    return get_peft_model(load_model(str(model_dir)), lora_config("lora", experiment["lora"]))


def baseline_arguments(cls, work: Path, batch: int, **extra):
    """The same optimizer settings and precision as the workflow's run (bf16 autocast on
    CUDA), for Trainer or SFTTrainer."""
    cuda = on_cuda()
    return cls(output_dir=str(work / "baseline"), num_train_epochs=1,
               per_device_train_batch_size=batch, learning_rate=LEARNING_RATE,
               lr_scheduler_type="cosine", logging_steps=1000, save_strategy="no",
               report_to="none", use_cpu=not cuda, bf16=cuda, seed=0,
               include_num_input_tokens_seen="non_padding", **extra)


def chats(work: Path) -> list[list[dict]]:
    from workflow_scripts.common.io_utils import read_jsonl

    return [r["messages"] for r in read_jsonl(work / "speed-data" / "train.jsonl")]


def run_padded(work: Path, batch: int) -> dict:
    """The tutorial recipe: every sample padded to max_length, loss on every real token."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator, set_seed

    from workflow_scripts.models.loading import load_tokenizer

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

    from workflow_scripts.models.loading import load_model, load_tokenizer
    from workflow_scripts.training.train_adapter import lora_config

    model_dir = work / "speed-model"
    experiment = job(model_dir, "lora")["experiment"]
    set_seed(0)
    args = baseline_arguments(SFTConfig, work, batch, gradient_checkpointing=False)
    trainer = SFTTrainer(model=load_model(str(model_dir)), args=args,
                         train_dataset=Dataset.from_list([{"messages": m} for m in chats(work)]),
                         processing_class=load_tokenizer(str(model_dir)),
                         peft_config=lora_config("lora", experiment["lora"]))
    return timed_train(trainer)


def run_ceiling(work: Path, batch: int) -> dict:
    """Forward, backward and optimizer step on full rows of the records' real tokens."""
    import contextlib

    import torch
    from transformers import set_seed

    from workflow_scripts.models.loading import load_tokenizer
    from workflow_scripts.training.chat_tokenize import tokenize_records

    model_dir = work / "speed-model"
    records = [{"messages": m} for m in chats(work)]
    features, stats = tokenize_records(load_tokenizer(str(model_dir)), records, MAX_LENGTH)
    width = round(stats.tokens / len(features))
    stream = torch.tensor([t for f in features for t in f["input_ids"]])
    set_seed(0)
    model = lora_model(model_dir).train()
    rows = stream[: len(stream) // width * width].view(-1, width).to(model.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda()
                else contextlib.nullcontext())
    start = start_timing()
    for first in range(0, len(rows), batch):
        ids = rows[first:first + batch]
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return stop_timing(start, rows.numel()) | {"row_length": width}


def vm_rss_mb() -> float:
    """Resident set size now (Linux VmRSS)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def record_rss_at_train_start(rss: dict) -> None:
    """Note the RSS (and CUDA memory allocated) when `Trainer.train` starts: the model,
    adapter and data are loaded."""
    import torch
    import transformers

    train = transformers.Trainer.train

    def measured(self, *args, **kwargs):
        rss["loaded_rss_mb"] = vm_rss_mb()
        if torch.cuda.is_available():
            rss["loaded_cuda_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
        return train(self, *args, **kwargs)

    transformers.Trainer.train = measured


def memory_training(checkpointing: bool) -> dict:
    """CPU: small steps, to fit the time; CUDA: full packed rows of a real training."""
    size = (dict(max_steps=4, batch_size=4, max_length=MAX_LENGTH, packing=True) if on_cuda()
            else dict(max_steps=2, batch_size=2, max_length=128))
    return size | dict(save_steps=100, logging_steps=1, warmup_ratio=0.0,
                       gradient_checkpointing=checkpointing)


def run_memory(work: Path, method: str, checkpointing: bool) -> dict:
    """Two optimizer steps of train_adapter.train on the big model. The process's peak RSS
    is read by the parent (`in_subprocess`), so it covers imports, loading and training."""
    from workflow_scripts.training.train_adapter import train

    rss: dict = {}
    record_rss_at_train_start(rss)
    model_dir = work / "memory-model"
    spec = job(model_dir, method, **memory_training(checkpointing))
    name = f"mem-{method}-{checkpointing}"
    metrics = train(spec, str(model_dir), work / "memory-data", work / name,
                    work / f"{name}-checkpoints")
    cuda = {k: metrics[k] for k in ("peak_cuda_allocated_mb", "peak_cuda_reserved_mb") if k in metrics}
    return {"seconds": metrics["wall_time_s"], **rss, **cuda}


def speed_sample(data: Path, out: Path, samples: int) -> int:
    """`samples` train records drawn at random (seed 0): every speed setup trains on them."""
    import random

    from workflow_scripts.common.io_utils import read_jsonl, write_jsonl

    records = list(read_jsonl(data / "train.jsonl"))
    out.mkdir()
    return write_jsonl(out / "train.jsonl", random.Random(0).sample(records, min(samples, len(records))))


def setup(work: Path, args: argparse.Namespace) -> dict:
    """Data, tokenizer and the random models `args.parts` needs; what the tables report."""
    from workflow_scripts.common.io_utils import read_jsonl, write_jsonl
    from workflow_scripts.models.build_base_model import train_tokenizer

    data = prepare_data(work)
    speed_samples = speed_sample(data, work / "speed-data", args.samples)
    conversations = [r["messages"] for r in read_jsonl(data / "train.jsonl")]
    tokenizer = train_tokenizer(conversations, vocab_size=8000)
    # bf16 where it trains in bf16 (CUDA) or where the shape is a real model's
    speed_dtype = "bfloat16" if on_cuda() or args.shape != "small" else "float32"
    shape = speed_shape(args.shape, args.layers)
    save_model(work / "speed-model", tokenizer, speed_dtype, **shape)
    if "memory" in args.parts:
        mem_shape = memory_shape(args.shape, args.layers, args.mem_layers)
        if mem_shape == shape and speed_dtype == "bfloat16":
            (work / "memory-model").symlink_to(work / "speed-model")
        else:
            save_model(work / "memory-model", tokenizer, "bfloat16", **mem_shape)
    records = list(read_jsonl(data / "train.jsonl"))
    (work / "memory-data").mkdir()
    write_jsonl(work / "memory-data" / "train.jsonl", records[:32])
    write_jsonl(work / "memory-data" / "valid.jsonl", records[32:36])
    return {"train_samples": len(records), "speed_samples": speed_samples, "vocab": len(tokenizer),
            "shape": args.shape, "speed_params": model_params(work / "speed-model"),
            "device": device_name()}


def device_name() -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    import torch

    from workflow_scripts.common.run_info import cpu_name

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


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


def cuda_columns(r: dict) -> str:
    """Peak CUDA memory allocated / reserved in MiB, or nothing on the CPU."""
    if "peak_cuda_allocated_mb" not in r:
        return ""
    return f"{r['peak_cuda_allocated_mb']:>10.0f}{r['peak_cuda_reserved_mb']:>10.0f}"


def print_speed(speed: dict[str, dict], info: dict) -> None:
    rate = {name: r["tokens"] / r["seconds"] for name, r in speed.items()}
    cuda = "peak_cuda_allocated_mb" in speed["ceiling"]
    print(f"\nspeed on {info['device']}: one epoch over {info['speed_samples']} of the "
          f"{info['train_samples']} alpaca_zh train samples, batch {info['batch']}, LoRA r=8 "
          f"all-linear on a random {info['shape']}-shaped Qwen2 ({info['speed_params'] / 1e6:.1f}M "
          f"parameters{', bf16' if cuda else ''}); ceiling rows of "
          f"{speed['ceiling']['row_length']} tokens")
    print(f"{'setup':<18}{'tokens':>8}{'s':>8}{'tok/s':>9}{'peak RSS MB':>13}"
          + (f"{'alloc MB':>10}{'resv MB':>10}" if cuda else "")
          + f"{'vs padded':>11}{'vs trl':>8}{'of ceiling':>12}")
    for name, r in speed.items():
        vs_trl = f"{rate[name] / rate['trl']:.2f}x" if "trl" in rate else "-"
        print(f"{name:<18}{r['tokens']:>8}{r['seconds']:>8.1f}{rate[name]:>9.0f}"
              f"{r['peak_memory_mb']:>13.0f}{cuda_columns(r)}"
              f"{rate[name] / rate['padded']:>10.2f}x{vs_trl:>8}"
              f"{rate[name] / rate['ceiling']:>12.2f}")
    if cuda:
        print("alloc / resv: peak CUDA memory allocated to tensors / reserved by the caching "
              "allocator during training (weights included, loading excluded)")


MEMORY_TARGET = 0.6  # target for QLoRA / LoRA peak RSS of the small shape's ~270M model


def memory_names(checkpointing: str) -> list[str]:
    return [f"memory-{method}-{checkpointing}" for method in ("lora", "qlora")]


def print_memory(memory: dict[str, dict], info: dict) -> None:
    cuda = all("peak_cuda_allocated_mb" in r for r in memory.values())
    steps = ("4 steps x batch 4 x 512 packed tokens" if cuda
             else "2 steps x batch 2 x <=128 tokens")
    print(f"\nmemory on {info['device']}: {steps}, {info['memory_params'] / 1e6:.0f}M-parameter "
          "random Qwen2 (bf16 checkpoint); peaks of each whole training process")
    for name, r in memory.items():
        line = (f"{name:<32} peak RSS {r['process_peak_rss_mb']:>7.0f} MB (RSS at train start "
                f"{r['loaded_rss_mb']:>6.0f} MB)")
        if cuda:
            line += (f"  CUDA peak allocated {r['peak_cuda_allocated_mb']:>7.0f} MB, reserved "
                     f"{r['peak_cuda_reserved_mb']:>7.0f} MB (allocated at train start "
                     f"{r['loaded_cuda_allocated_mb']:>6.0f} MB)")
        print(f"{line}   {r['seconds']:>6.1f} s")
    for checkpointing in ("plain", "checkpointing"):
        lora, qlora = (memory[n] for n in memory_names(checkpointing))
        if cuda:
            ratios = ", ".join(f"{label} {qlora[key] / lora[key]:.2f}" for label, key in (
                ("peak allocated", "peak_cuda_allocated_mb"), ("peak reserved", "peak_cuda_reserved_mb"),
                ("allocated at train start", "loaded_cuda_allocated_mb")))
            print(f"QLoRA / LoRA CUDA memory ({checkpointing}): {ratios}")
            continue
        ratio = qlora["process_peak_rss_mb"] / lora["process_peak_rss_mb"]
        verdict = "PASS" if ratio <= MEMORY_TARGET else "MISSED"
        target = f" (target <= {MEMORY_TARGET}) {verdict}" if info["shape"] == "small" else ""
        print(f"QLoRA / LoRA peak RSS ({checkpointing}): {ratio:.2f}{target}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small",
                        help="the random model's shape (qwen2-0.5b: for a GPU)")
    parser.add_argument("--layers", type=int, help="override the shape's layer count")
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
        info = setup(work, args) | {"batch": args.batch}
        names = ["workflow", "workflow+packing", "padded", "ceiling"]
        names += ["trl"] if args.trl_site and Path(args.trl_site, "trl").exists() else []
        if "speed" in args.parts:
            print_speed({name: in_subprocess(work, name, args) for name in names}, info)
        if "memory" in args.parts:
            info["memory_params"] = model_params(work / "memory-model")
            names = memory_names("plain") + memory_names("checkpointing")
            print_memory({name: in_subprocess(work, name, args) for name in names}, info)


def model_params(model_dir: Path) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    main()
