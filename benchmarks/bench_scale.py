"""Real sizes: loss memory with a 151,936-row vocabulary, the checkpoint key on a 2 GB model,
and (filled in by the data stages) prepare / tokenize / pack time at 100k-10M dialogues.

    python benchmarks/bench_scale.py [--section memory key data] [--eval-batch 16]
                                     [--train-batch 4] [--length 1024] [--key-gb 2]

Memory: each case runs in a child process of its own and reports that process's peak RSS
(and, on CUDA, the allocator's peak allocated and reserved bytes). Two models with Qwen2's
151,936-row vocabulary and tied embeddings, built at random: `small` is the smoke model's
body (hidden 32, one layer; 19 MB of embeddings) and `qwen2-0.5b` Qwen2-0.5B's shape with
two of its 24 layers. Each is saved once as safetensors, and every case loads it as the
workflow's jobs load a base (`models.loading.load_model`, fp32 on a CPU) and wraps it in a
LoRA adapter with trainable tokens, as training builds it. Evaluation scores one batch through token_loss.record_loss_sums, full logits
(today's path, `chunked=False`) beside the chunked path; training runs one forward and
backward of the Trainer's own full-logits loss beside token_loss.training_loss. Half of each
row is prompt (no loss), as in chat data. Targets: evaluation's peak at most 1/5 of the
full-logits one, training's at most 1/2.

On a CPU the full-logits evaluation runs at --cpu-full-eval-batch (default 4), or less
where free memory cannot hold it: 16 x 1024 x 151,936 fp32 logits are 10 GB and the loss
makes two more copies (batch 8 peaked at 14.8 GB here), and its log-softmax takes minutes on
two cores. The chunked case runs at that batch and at --eval-batch; the table says which
batch each row used. The full-logits peak only grows with the batch, so the ratio at a
smaller batch is the conservative one. On CUDA every case runs at --eval-batch.

Key: the checkpoint key (train_adapter.checkpoint_key) on a model directory of --key-gb GB,
first start (every file hashed, as every start was before the digest cache) and second
start (a new process, as a restart or another rank). Target: second start under 1 s.
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

VOCAB = 151936
SHAPES = {
    # tests/configs/smoke.yaml's base model, its embeddings resized to Qwen's vocabulary
    "small": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1),
    # Qwen/Qwen2-0.5B's config.json, 2 of its 24 layers
    "qwen2-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=2,
                       num_attention_heads=14, num_key_value_heads=2, rope_theta=1000000.0,
                       rms_norm_eps=1e-6),
}
PROMPT_SHARE = 0.5
TARGETS = {"eval": 1 / 5, "train": 1 / 2}
KEY_TARGET_S = 1.0


# ---------------------------------------------------------------------------------------------
# memory: one child process per case


def save_model(shape: str, out_dir: Path) -> None:
    """A random Qwen2 of `shape` with a 151,936-row tied vocabulary, saved as safetensors (run
    once per shape in a child of its own: random initialisation holds more than loading)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, tie_word_embeddings=True, max_position_embeddings=2048,
                         **SHAPES[shape])
    AutoModelForCausalLM.from_config(config).save_pretrained(out_dir, safe_serialization=True)


def build_model(model_dir: str):
    """The saved model loaded as every workflow job loads a base (models.loading.load_model),
    under a LoRA adapter with two trainable token rows (as train_adapter builds it)."""
    from peft import get_peft_model

    from workflow_scripts.models.loading import compute_dtype, load_model
    from workflow_scripts.training.train_adapter import lora_config

    model = load_model(model_dir, dtype=compute_dtype())
    lora = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    return get_peft_model(model, lora_config("lora", lora, [VOCAB - 2, VOCAB - 1]))


def batch_features(batch: int, length: int) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(1)
    prompt = int(length * PROMPT_SHARE)
    rows = []
    for _ in range(batch):
        ids = torch.randint(0, VOCAB, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * length,
                     "labels": [-100] * prompt + ids[prompt:]})
    return rows


def collate(rows: list[dict]) -> dict:
    import torch

    return {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "attention_mask", "labels")}


def peaks() -> dict:
    import resource

    import torch

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out["cuda_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["cuda_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return out


def memory_case(model_dir: str, stage: str, path: str, batch: int, length: int) -> dict:
    """One measurement, run in a child process: loss (and gradients, for training) of one
    batch through the full-logits or the chunked path."""
    import torch

    from workflow_scripts.training.token_loss import record_loss_sums, training_loss

    model = build_model(model_dir)
    features = batch_features(batch, length)
    setup = peaks()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if stage == "eval":
        sums = record_loss_sums(model, features, collate, batch, chunked=path == "chunked")
        loss = sum(s for s, _ in sums) / sum(n for _, n in sums)
    else:
        model.train()
        inputs = {k: v.to(model.device) for k, v in collate(features).items()}
        labels = inputs.pop("labels")
        if path == "chunked":
            value = training_loss(model, inputs, labels)
        else:
            value = model(**inputs, labels=labels).loss
        value.backward()
        loss = float(value)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {"loss": loss, "seconds": round(time.perf_counter() - start, 2),
            "setup_rss_mb": setup["peak_rss_mb"], **peaks()}


def run_child(args: list[str]) -> dict:
    """Run this script's --worker in a fresh process; its last stdout line is the JSON result."""
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:160],
                "returncode": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def fitting_eval_batch(wanted: int, length: int, cpu_cap: int) -> int:
    """The batch for the full-logits evaluation: on CUDA `wanted`; on a CPU at most `cpu_cap`
    (its log-softmax over 151,936 columns takes minutes on two cores) and no more than fits in
    60% of the free memory (others share this machine), counting three fp32 copies of the
    logits (the logits, their log-softmax, the per-token gather) and 2 GB for model and torch."""
    import torch

    if torch.cuda.is_available():
        return wanted
    per_row_mb = 3 * length * VOCAB * 4 / 2**20
    budget = 0.6 * available_mb() - 2048
    return max(1, min(wanted, cpu_cap, int(budget // per_row_mb)))


def memory_section(args, work: Path) -> list[dict]:
    rows = []
    full_eval_batch = fitting_eval_batch(args.eval_batch, args.length, args.cpu_full_eval_batch)
    for shape in SHAPES:
        model_dir = work / f"model-{shape}"
        subprocess.run([sys.executable, __file__, "--worker", "save", shape, str(model_dir)],
                       check=True, cwd=ROOT)
        cases = [("eval", "full", full_eval_batch), ("eval", "chunked", full_eval_batch)]
        if full_eval_batch != args.eval_batch:
            cases.append(("eval", "chunked", args.eval_batch))
        cases += [("train", "full", args.train_batch), ("train", "chunked", args.train_batch)]
        for stage, path, batch in cases:
            result = run_child(["memory", str(model_dir), stage, path, str(batch), str(args.length)])
            row = {"shape": shape, "stage": stage, "path": path, "batch": batch,
                   "length": args.length, **result}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def memory_ratios(rows: list[dict]) -> list[dict]:
    """chunked / full peaks at the same shape, stage and batch."""
    out = []
    for r in rows:
        if r["path"] != "full" or "error" in r:
            continue
        new = next((c for c in rows if c["path"] == "chunked" and "error" not in c
                    and (c["shape"], c["stage"], c["batch"]) == (r["shape"], r["stage"], r["batch"])), None)
        if new is None:
            continue
        key = "cuda_allocated_bytes" if "cuda_allocated_bytes" in r else "peak_rss_mb"
        ratio = new[key] / r[key]
        out.append({"shape": r["shape"], "stage": r["stage"], "batch": r["batch"], "measure": key,
                    "full": r[key], "chunked": new[key], "ratio": round(ratio, 3),
                    "loss_diff": abs(new["loss"] - r["loss"]), "target": TARGETS[r["stage"]],
                    "met": ratio <= TARGETS[r["stage"]]})
    return out


# ---------------------------------------------------------------------------------------------
# checkpoint key


def write_model_dir(path: Path, gigabytes: float) -> None:
    """Shards of incompressible bytes adding up to `gigabytes`, plus a config and tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 24)
    shard_bytes = 1 << 29  # 512 MiB, as a sharded checkpoint
    total = int(gigabytes * 1e9)
    index = 0
    while total > 0:
        size = min(shard_bytes, total)
        with open(path / f"model-{index:05d}.safetensors", "wb") as fh:
            for offset in range(0, size, len(block)):
                fh.write(block[: min(len(block), size - offset)])
        total -= size
        index += 1
    (path / "config.json").write_text('{"model_type": "qwen2"}')
    (path / "tokenizer.json").write_text("{}")


def key_case(model_dir: str, cache_dir: str) -> dict:
    """The checkpoint key's time in this (fresh) process; no cache when `cache_dir` is '-'."""
    from workflow_scripts.training.train_adapter import checkpoint_key

    start = time.perf_counter()
    key = checkpoint_key({"seed": 1}, [], model_dir, None if cache_dir == "-" else Path(cache_dir))
    return {"seconds": round(time.perf_counter() - start, 3), "key": key}


def key_section(args, work: Path) -> list[dict]:
    model_dir, cache_dir = work / "model", work / "hash_cache"
    write_model_dir(model_dir, args.key_gb)
    rows = []
    for name, cache in [("every start before (no cache)", "-"), ("first start", str(cache_dir)),
                        ("second start", str(cache_dir))]:
        row = {"case": name, "gigabytes": args.key_gb, **run_child(["key", str(model_dir), cache])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# data stages: prepare, tokenize, pack at 100k / 1M / 10M dialogues


def data_section(args, work: Path) -> list[dict]:
    """FILLED IN BY THE DATA STAGES (issue 19, items 3 and 4): the helper building the
    tokenization stage adds tokenize (and pack) timing, the one building bounded-memory
    preparation adds prepare timing and peak RSS, at 100k, 1M and 10M synthetic LCCC-style
    dialogues with the growth exponent. Each returns rows of
    {"stage", "dialogues", "seconds", "peak_rss_mb"} and prints them; `data_summary` below
    prints the targets."""
    return prepare_section(work) + tokenize_section(work)


def prepare_section(work: Path) -> list[dict]:
    """Item 4, bounded-memory preparation: benchmarks/bench_prepare_scale.py (prepare, and
    json.load of the same file as the baseline, at 100k, 1M and 10M dialogues)."""
    from bench_prepare_scale import SIZES, prepare_rows
    return prepare_rows(list(SIZES), work)


def tokenize_section(work: Path) -> list[dict]:
    """Item 3, the tokenization stage: benchmarks/bench_tokenize.py (the tokenize_dataset job,
    encode + pack + write, at 100k and 1M dialogues), and its encoder beside the reference path
    (chat_tokenize.tokenize_records) on the same first 100k dialogues, in one process."""
    from bench_tokenize import tokenize_rows
    return tokenize_rows([100_000, 1_000_000], work, compare=100_000)


def data_summary(rows: list[dict]) -> None:
    """Targets: 100k -> 1M grows at most 12x; 1M through prepare+tokenize+pack under 180 s;
    10M prepared under 3 GiB peak RSS."""
    from bench_prepare_scale import print_prepare_summary
    print_prepare_summary([r for r in rows if r["stage"] in ("prepare", "json.load")])
    from bench_tokenize import print_comparison, report
    tokenize = [r for r in rows if r["stage"] == "tokenize+pack"]
    if tokenize:
        report(tokenize)
    for r in rows:
        if r["stage"] == "encoder":
            print_comparison(r)
    for n in (1_000_000,):
        parts = [r for r in rows if r["dialogues"] == n and r["stage"] in ("prepare", "tokenize+pack")]
        if len(parts) == 2:
            wall = sum(r["seconds"] for r in parts)
            cpu = sum(r.get("cpu_seconds", 0.0) for r in parts)
            print(f"{n:,} dialogues through prepare + tokenize + pack: {wall:.0f} s wall "
                  f"({cpu:.0f} CPU s on {os.cpu_count()} cores); target under 180 s: "
                  f"{'MET' if wall < 180 else 'MISSED'}")


# ---------------------------------------------------------------------------------------------


def print_summary(memory: list[dict], key: list[dict]) -> bool:
    ok = True
    if memory:
        print("\nloss memory, chunked / full logits (vocabulary 151,936):")
        print(f"{'shape':<11} {'stage':<6} {'batch':>5} {'measure':<21} {'full':>12} {'chunked':>12} "
              f"{'ratio':>6} {'target':>6}  loss diff")
        for r in memory_ratios(memory):
            print(f"{r['shape']:<11} {r['stage']:<6} {r['batch']:>5} {r['measure']:<21} "
                  f"{r['full']:>12,.1f} {r['chunked']:>12,.1f} {r['ratio']:>6.3f} {r['target']:>6.3f}  "
                  f"{r['loss_diff']:.2e} {'MET' if r['met'] else 'MISSED'}")
            ok &= r["met"]
        for r in memory:
            if "error" in r:
                print(f"{r['shape']} {r['stage']} {r['path']} batch {r['batch']}: FAILED {r['error']}")
                ok = False
    if key:
        second = next(r for r in key if r["case"] == "second start")
        first = next(r for r in key if r["case"] == "first start")
        met = second.get("seconds", 1e9) < KEY_TARGET_S and second.get("key") == first.get("key")
        print(f"\ncheckpoint key, {key[0]['gigabytes']} GB model: " + ", ".join(
            f"{r['case']} {r.get('seconds')} s" for r in key)
              + f"; second start under {KEY_TARGET_S} s with the same key: {'MET' if met else 'MISSED'}")
        ok &= met
    return ok


def worker(argv: list[str]) -> None:
    kind, *rest = argv
    if kind == "save":
        return save_model(*rest[:1], Path(rest[1]))
    if kind == "memory":
        model_dir, stage, path, batch, length = rest
        result = memory_case(model_dir, stage, path, int(batch), int(length))
    else:
        result = key_case(*rest)
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1:])
    from workflow_scripts.common.cli import parser as cli_parser
    from workflow_scripts.common.run_info import cpu_name

    parser = cli_parser(__doc__)
    parser.add_argument("--section", nargs="+", choices=["memory", "key", "data"],
                        default=["memory", "key", "data"], help="what to measure (default: all)")
    parser.add_argument("--eval-batch", type=int, default=16, help="evaluation rows per batch")
    parser.add_argument("--cpu-full-eval-batch", type=int, default=4,
                        help="on a CPU, the full-logits evaluation's largest batch (default 4)")
    parser.add_argument("--train-batch", type=int, default=4, help="training rows per batch")
    parser.add_argument("--length", type=int, default=1024, help="tokens per row")
    parser.add_argument("--key-gb", type=float, default=2.0, help="size of the hashed model directory")
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; free memory {available_mb():,.0f} MB", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        work = Path(tmp)
        memory = memory_section(args, work) if "memory" in args.section else []
        key = key_section(args, work) if "key" in args.section else []
        data = data_section(args, work) if "data" in args.section else []
    ok = print_summary(memory, key)
    data_summary(data)
    if args.json:
        args.json.write_text(json.dumps({"memory": memory, "key": key, "data": data}, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
