"""Preference tuning: this workflow's DPO against TRL's DPOTrainer, and a beta sweep's jobs.

    python benchmarks/bench_preference.py [--quick] [--parts speed,memory,sweep] [--repeats 3]
                                          [--pairs 48] [--mem-pairs 8] [--batch 4]
                                          [--max-length 384] [--trl-site .venv/trl] [--json out.json]

Data: LLaMA-Factory's Chinese pairwise demo (tests/data/llamafactory/dpo_zh_demo.json,
ShareGPT style) through the workflow's own data step (`sharegpt_pairwise`), a byte-level BPE
trained on its texts, and random Qwen2 models (speed and memory do not depend on the
weights). The pairs both trainers see are the first train pairs whose longer answer, behind
its prompt through the chat template, fits `--max-length` tokens, so neither truncates.

Both sides start a new LoRA adapter (r=8, alpha 16, all-linear) on the same base, and their
reference is that base: TRL's default with a PEFT model and no `ref_model` (a reference
forward pass with the adapter disabled in every step), ours the reference job's file
(reference_logps.py, the base scored once) read by train_preference. Same pairs, LoRA config,
batch size, learning rate and schedule, one epoch (every pair once), max length, DPO loss
(sigmoid, beta 0.1), dropout off in both; TRL's other defaults stand, except precision and
gradient checkpointing, set to ours (fp32 and off on a CPU) so both run the same arithmetic.

Speed (`--parts speed`): a Qwen2 of bench_training.py's `small` shape (hidden 256, 4 layers)
with the tokenizer's vocabulary. Tokens: both answers' sequences (prompt and answer, no
padding) of every pair, counted once from our tokenized pairs and used for both sides (TRL's
own tokenization is counted too and printed beside it). Time: `Trainer.train()` only (model
loading and tokenization excluded, no evaluation, no checkpoint). The reference job is timed
on its own (its scoring, as recorded in its manifest; its whole process beside it) and its
time added to ours once (one experiment) and a third (a three-point beta sweep shares it).
Each repeat runs the reference job, ours and TRL, each in a process of its own, the order of
ours and TRL alternating between repeats, so a change of load hits both; the ratios are
medians over repeats, with their range. Target: ours / TRL tokens/s >= 1.5.

Memory (`--parts memory`): the same runs on a Qwen2 with a 151,936-row tied vocabulary and
bench_scale.py's `small` body (hidden 32, one layer), `--mem-pairs` pairs. Each run's peak RSS
is its whole process's (imports, loading, training), read from its rusage by this process.
Ours is the training process (the reference job, a process of its own that runs before it,
is printed beside it). Target: ours / TRL <= 0.5.

Sweep (`--parts sweep`): a config with an SFT experiment and a sweep over
`preference.beta: [0.05, 0.1, 0.5]` (`stage: preference`, `init_from` the SFT experiment) on
the demo file; `snakemake -n -p` in a scratch copy of the workflow (tests/workflow_runner.py)
must plan one `reference_logps` job and three `train_preference` jobs reading its directory.

`--quick`: tiny sizes, one repeat (seconds; tests/test_bench_preference.py runs it).
TRL: `pip install --no-deps --target .venv/trl trl==1.16.0` (scripts/setup.sh --test); without
it the TRL runs are skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

DEMO = ROOT / "tests" / "data" / "llamafactory" / "dpo_zh_demo.json"
VOCAB = 151936
BETA = 0.1
LEARNING_RATE = 5e-5
SWEEP_BETAS = [0.05, 0.1, 0.5]
SPEED_TARGET, MEMORY_TARGET = 1.5, 0.5
SHAPES = {  # bench_training.py's `small`; bench_scale.py's `small` (the smoke model's body)
    "speed": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),
    "memory": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                   num_attention_heads=2, num_key_value_heads=1, vocab_size=VOCAB),
    "quick": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1),
}
QUICK = dict(pairs=4, mem_pairs=4, batch=2, max_length=192, repeats=1, vocab=600)


# ---------------------------------------------------------------------------------------------
# setup: data, tokenizer, models, the pairs each part trains on


def on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def prepare_pairs(work: Path) -> Path:
    """The demo file cleaned and split by the workflow's own data step."""
    from workflow_scripts.data.prepare_dataset import prepare

    spec = {"format": "sharegpt_pairwise", "files": [str(DEMO)]}
    prepare("dpo_zh", spec, {}, {"valid": 0.05, "test": 0.05}, 42, work / "data", workers=1)
    return work / "data"


def conversations(records: list[dict]) -> list[list[dict]]:
    return [r["messages"] + [{"role": "assistant", "content": r[role]}]
            for r in records for role in ("chosen", "rejected")]


def save_model(path: Path, tokenizer, shape: dict) -> Path:
    """A random tied-embedding Qwen2 of `shape` (vocabulary: the tokenizer's unless the shape
    sets one; ids above the tokenizer's never occur, the embedding keeps its size)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    config = Qwen2Config(**({"vocab_size": len(tokenizer)} | shape), tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         max_position_embeddings=4096)
    dtype = torch.bfloat16 if on_cuda() else torch.float32
    AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def fitting_records(data: Path, model_dir: Path, work: Path, max_length: int, count: int) -> list[dict]:
    """The first `count` train pairs whose longer sequence fits `max_length` tokens."""
    from workflow_scripts.common.io_utils import read_jsonl
    from workflow_scripts.training.preference_tokenize import load_split, tokenize_pairs

    tokenize_pairs(data, str(model_dir), {"max_length": 1 << 20}, work / "tok-all")
    rows, _ = load_split(work / "tok-all", "train")
    fits = {row["id"] for row in rows.select_columns(["id", "length"]) if row["length"] <= max_length}
    records = [r for r in read_jsonl(data / "train.pairs.jsonl") if r["id"] in fits][:count]
    if len(records) < count:
        raise SystemExit(f"only {len(records)} train pairs fit max_length {max_length}")
    return records


def write_pairs(records: list[dict], model_dir: Path, out: Path, max_length: int) -> dict:
    """`records` as a train split (valid and test empty: no evaluation), tokenized; the
    tokens both answers' sequences hold."""
    from workflow_scripts.common.io_utils import write_jsonl
    from workflow_scripts.training.preference_tokenize import load_split, tokenize_pairs

    pairs = out / "pairs"
    pairs.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        write_jsonl(pairs / f"{split}.pairs.jsonl", records if split == "train" else [])
    tokenize_pairs(pairs, str(model_dir), {"max_length": max_length}, out / "tok")
    rows, _ = load_split(out / "tok", "train")
    tokens = sum(len(r["chosen_ids"]) + len(r["rejected_ids"])
                 for r in rows.select_columns(["chosen_ids", "rejected_ids"]))
    return {"pairs": len(records), "tokens": tokens}


def setup(work: Path, args: argparse.Namespace) -> dict:
    """Data, tokenizer, the speed and memory models and their pair sets."""
    from workflow_scripts.common.io_utils import read_jsonl
    from workflow_scripts.models.build_base_model import train_tokenizer

    data = prepare_pairs(work)
    tokenizer = train_tokenizer(conversations(list(read_jsonl(data / "train.pairs.jsonl"))),
                                vocab_size=args.vocab)
    speed_shape = SHAPES["quick" if args.quick else "speed"]
    save_model(work / "speed" / "model", tokenizer, speed_shape)
    save_model(work / "memory" / "model", tokenizer, SHAPES["memory"])
    records = fitting_records(data, work / "speed" / "model", work, args.max_length,
                              max(args.pairs, args.mem_pairs))
    info = {"speed": write_pairs(records[:args.pairs], work / "speed" / "model", work / "speed",
                                 args.max_length),
            "memory": write_pairs(records[:args.mem_pairs], work / "memory" / "model",
                                  work / "memory", args.max_length),
            "vocab": len(tokenizer), "device": device_name()}
    info["speed"]["shape"], info["memory"]["shape"] = speed_shape, SHAPES["memory"]
    return info


def device_name() -> str:
    import torch

    from workflow_scripts.common.run_info import cpu_name

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu_name()} ({os.cpu_count()} cores)"


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------
# workers: one process each


def experiment(batch: int, max_length: int) -> dict:
    """The preference experiment both sides run, the schema's defaults filled in."""
    from workflow_scripts.common.config import resolve_experiments
    from workflow_scripts.training.preference_objective import resolved

    training = dict(learning_rate=LEARNING_RATE, epochs=1, max_steps=-1, batch_size=batch,
                    max_length=max_length, warmup_ratio=0.0, logging_steps=10, save_steps=100000,
                    eval_steps=0)
    config = {"datasets": {"d": {"format": "sharegpt_pairwise", "files": ["x"]}},
              "base_models": {"m": {"source": "path", "path": "x"}},
              "experiments": {"e": {"base_model": "m", "dataset": "d", "method": "lora",
                                    "stage": "preference", "lora": {"r": 8, "alpha": 16},
                                    "preference": {"loss": "dpo", "beta": BETA},
                                    "training": training}}}
    exp = resolve_experiments(config)["e"]
    exp["preference"] = resolved(exp["preference"])
    return exp


def vm_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def time_train_calls(record: dict) -> None:
    """Record the RSS when `Trainer.train` starts (model, adapter and data loaded) and the
    time it takes, for whichever trainer calls it."""
    import transformers

    train = transformers.Trainer.train

    def timed(self, *args, **kwargs):
        record["loaded_rss_mb"] = vm_rss_mb()
        with timing(record):
            out = train(self, *args, **kwargs)
        record["steps"] = self.state.global_step
        return out

    transformers.Trainer.train = timed


@contextmanager
def timing(record: dict):
    """Wall seconds and CPU seconds (every thread of this process) of the block, into
    `record`; on CUDA the GPU's work is waited for."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    record["seconds"] = time.perf_counter() - start
    record["cpu_s"] = time.process_time() - cpu


def run_ours(part: Path, batch: int, max_length: int, reference: Path) -> dict:
    """train_preference.train: a new adapter, the reference read from the reference job."""
    from workflow_scripts.training.train_preference import train

    record: dict = {}
    time_train_calls(record)
    job = {"experiment": experiment(batch, max_length), "seed": 0, "base_model": {"source": "path"}}
    metrics = train(job, str(part / "model"), part / "tok", reference, None, part / "out-ours",
                    part / "checkpoints-ours")
    return record | {"final_loss": metrics["final_loss"]}


def trl_rows(pairs: Path) -> list[dict]:
    """The pairs in TRL's conversational preference shape."""
    from workflow_scripts.common.io_utils import read_jsonl

    return [{"prompt": r["messages"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]}
            for r in read_jsonl(pairs / "train.pairs.jsonl")]


def run_trl(part: Path, batch: int, max_length: int, trl_site: str) -> dict:
    """TRL's DPOTrainer, its defaults but precision and checkpointing (module doc), given the
    base model and our LoRA config: the reference is the base, the adapter disabled."""
    sys.path.insert(0, trl_site)
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    from workflow_scripts.models.loading import compute_dtype, load_model, load_tokenizer
    from workflow_scripts.training.train_adapter import lora_config

    record: dict = {}
    time_train_calls(record)
    exp = experiment(batch, max_length)
    t = exp["training"]
    set_seed(0)
    args = DPOConfig(
        output_dir=str(part / "out-trl"), num_train_epochs=t["epochs"],
        per_device_train_batch_size=batch, learning_rate=t["learning_rate"],
        lr_scheduler_type=t["scheduler"], warmup_steps=t["warmup_ratio"],
        weight_decay=t["weight_decay"], max_grad_norm=t["max_grad_norm"],
        logging_steps=t["logging_steps"], max_length=max_length, beta=BETA, save_strategy="no",
        report_to="none", use_cpu=not on_cuda(), bf16=on_cuda(), gradient_checkpointing=False,
        seed=0)
    trainer = DPOTrainer(model=load_model(str(part / "model"), dtype=compute_dtype()), args=args,
                         train_dataset=Dataset.from_list(trl_rows(part / "pairs")),
                         processing_class=load_tokenizer(str(part / "model")),
                         peft_config=lora_config("lora", exp["lora"]))
    tokens = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"])
                 for r in trainer.train_dataset)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return record | {"trl_tokens": tokens, "final_loss": losses[-1] if losses else None}


def run_reference(part: Path, out: Path, batch: int) -> dict:
    """The reference job as the workflow runs it (the base scores every pair once), its
    scoring timed."""
    from workflow_scripts.training import reference_logps

    record: dict = {}
    score = reference_logps.score_splits

    def timed(*args, **kwargs):
        with timing(record):
            return score(*args, **kwargs)

    reference_logps.score_splits = timed
    reference_logps.main(["--config", json.dumps({"batch_size": batch}), "--model-dir",
                          str(part / "model"), "--tokenized-dir", str(part / "tok"),
                          "--out-dir", str(out)])
    return record


def worker(name: str, part: Path, args: argparse.Namespace) -> dict:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if name == "reference":
        return run_reference(part, Path(args.reference), args.batch)
    if name == "ours":
        return run_ours(part, args.batch, args.max_length, Path(args.reference))
    return run_trl(part, args.batch, args.max_length, args.trl_site)


def in_subprocess(cmd: list[str]) -> dict:
    """Run `cmd`; its last stdout line as JSON (or {}), its wall time and its whole-process
    peak RSS from its own rusage."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{err.read()[-3000:]}")
        lines = out.read().strip().splitlines()
    result = json.loads(lines[-1]) if lines else {}
    return {"result": result, "process_s": wall, "process_peak_rss_mb": usage.ru_maxrss / 1024}


def run_side(name: str, part: Path, args: argparse.Namespace, reference: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--part", str(part), "--batch",
           str(args.batch), "--max-length", str(args.max_length), "--trl-site", args.trl_site,
           "--reference", str(reference or ""), "--threads", str(args.threads or 0)]
    run = in_subprocess(cmd)
    return run.pop("result") | run



# ---------------------------------------------------------------------------------------------
# the parts


def speed_part(work: Path, args: argparse.Namespace, with_trl: bool) -> list[dict]:
    """Per repeat: the reference job, then ours and TRL in alternating order."""
    part, repeats = work / "speed", []
    for i in range(args.repeats):
        reference = run_side("reference", part, args, part / f"reference-{i}")
        sides = ["ours", "trl"] if i % 2 == 0 else ["trl", "ours"]
        runs = {"reference": reference}
        for side in sides if with_trl else ["ours"]:
            runs[side] = run_side(side, part, args, part / f"reference-{i}")
        runs["order"] = sides
        repeats.append(runs)
        print(f"speed repeat {i + 1}/{args.repeats}: " + ", ".join(
            f"{k} {v['seconds']:.1f} s" for k, v in runs.items() if isinstance(v, dict)), flush=True)
    return repeats


def memory_part(work: Path, args: argparse.Namespace, with_trl: bool) -> dict:
    part = work / "memory"
    runs = {"reference": run_side("reference", part, args, part / "reference")}
    runs["ours"] = run_side("ours", part, args, part / "reference")
    if with_trl:
        runs["trl"] = run_side("trl", part, args)
    return runs


def sweep_config(work: Path) -> Path:
    """An SFT experiment and a three-point beta sweep of DPO experiments continuing it."""
    import yaml

    config = {
        "seed": 7,
        "datasets": {"alpaca_zh": {"format": "alpaca", "files": ["data/raw/alpaca_zh_demo.json"]},
                     "dpo_zh": {"format": "sharegpt_pairwise",
                                "files": ["tests/data/llamafactory/dpo_zh_demo.json"]}},
        "split": {"valid": 0.05, "test": 0.05},
        "base_models": {"tiny": {
            "source": "scratch", "architecture": "qwen2", "vocab_size": 600, "hidden_size": 32,
            "intermediate_size": 64, "layers": 1, "heads": 2, "kv_heads": 1,
            "max_position_embeddings": 1024,
            "pretrain": {"datasets": ["alpaca_zh"], "steps": 10, "batch_size": 8, "seq_len": 64}}},
        "defaults": {"training": {"max_steps": 4, "batch_size": 4, "max_length": 256}},
        "experiments": {"sft": {"base_model": "tiny", "dataset": "alpaca_zh"}},
        "sweeps": {"beta": {
            "base": {"base_model": "tiny", "dataset": "dpo_zh", "stage": "preference",
                     "init_from": "sft", "preference": {"loss": "dpo"}},
            "grid": {"preference.beta": SWEEP_BETAS}}},
    }
    path = work / "sweep.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    return path


def sweep_part(work: Path) -> dict:
    """`snakemake -n -p` on the sweep config: jobs per rule, and the reference directories
    the train_preference jobs read."""
    from workflow_runner import make_workflow

    workflow = make_workflow(work / "sweep", sweep_config(work))
    start = time.perf_counter()
    proc = workflow.run("-n", "-p")
    output = proc.stdout + proc.stderr
    jobs: dict[str, int] = {}
    for rule in re.findall(r"^(?:local)?rule (\w+):", output, flags=re.M):
        jobs[rule] = jobs.get(rule, 0) + 1
    commands = [line for line in output.splitlines() if "train_preference --config" in line]
    references = sorted({m for line in commands for m in re.findall(r"--reference-dir (\S+)", line)})
    return {"jobs": jobs, "reference_dirs": references, "dry_run_s": time.perf_counter() - start,
            "config": (work / "sweep.yaml").read_text()}


# ---------------------------------------------------------------------------------------------
# report


def fastest_ratio(repeats: list[dict], clock: str) -> float | None:
    """TRL's fastest run / ours (training alone): the runs least disturbed by other load."""
    trl = [r["trl"][clock] for r in repeats if "trl" in r]
    return min(trl) / min(r["ours"][clock] for r in repeats) if trl else None


def spread(values: list[float]) -> str:
    return (f"{statistics.median(values):.2f}x (range {min(values):.2f}-{max(values):.2f}, "
            f"{len(values)} repeat{'s' * (len(values) > 1)})")


def speed_ratios(repeats: list[dict], clock: str) -> dict[str, list[float]]:
    """Ours / TRL tokens per `clock` second ("seconds": wall, "cpu_s": CPU) per repeat, for
    training alone ("train", the reference read), a three-point sweep ("sweep3": plus a third
    of the reference job's scoring) and one experiment ("single": plus all of it)."""
    ratios: dict[str, list[float]] = {"train": [], "sweep3": [], "single": []}
    for r in repeats:
        if "trl" in r:
            for key, share in (("train", 0.0), ("sweep3", 1 / 3), ("single", 1.0)):
                ours = r["ours"][clock] + share * r["reference"][clock]
                ratios[key].append(r["trl"][clock] / ours)
    return ratios if ratios["train"] else {}


def print_speed(repeats: list[dict], info: dict) -> dict:
    tokens, shape = info["speed"]["tokens"], info["speed"]["shape"]
    print(f"\nspeed on {info['device']}, {info['threads']} torch threads: one epoch over {info['speed']['pairs']} pairs "
          f"({tokens} tokens in both answers' sequences), batch {info['batch']}, max length "
          f"{info['max_length']}, LoRA r=8 all-linear on a random Qwen2 (hidden "
          f"{shape['hidden_size']}, {shape['num_hidden_layers']} layers, vocabulary {info['vocab']})")
    print(f"{'repeat':<8}{'side':<11}{'wall s':>8}{'tok/s':>8}{'CPU s':>8}{'tok/CPU s':>11}"
          f"{'steps':>7}{'process s':>11}{'peak RSS MB':>13}")
    for i, r in enumerate(repeats, start=1):
        for side in ("reference", *r["order"]):
            if side in r:
                run = r[side]
                print(f"{i:<8}{side:<11}{run['seconds']:>8.2f}{tokens / run['seconds']:>8.0f}"
                      f"{run['cpu_s']:>8.2f}{tokens / run['cpu_s']:>11.0f}{run.get('steps', '-'):>7}"
                      f"{run['process_s']:>11.1f}{run['process_peak_rss_mb']:>13.0f}")
    trl_tokens = {r["trl"]["trl_tokens"] for r in repeats if "trl" in r}
    if trl_tokens:
        print(f"tokens by TRL's own tokenization: {sorted(trl_tokens)} (ours {tokens})")
    summary = {clock: speed_ratios(repeats, clock) for clock in ("seconds", "cpu_s")}
    if summary["seconds"]:
        wall, cpu = summary["seconds"], summary["cpu_s"]
        verdict = "met" if statistics.median(wall["train"]) >= SPEED_TARGET else "MISSED"
        print(f"ours / TRL tokens/s, training (reference read): {spread(wall['train'])}; "
              f"target >= {SPEED_TARGET}: {verdict}; per CPU second {spread(cpu['train'])}")
        print(f"  with a third of the reference job (3-point beta sweep): "
              f"{spread(wall['sweep3'])}; per CPU second {spread(cpu['sweep3'])}")
        print(f"  with the whole reference job (one experiment): {spread(wall['single'])}; "
              f"per CPU second {spread(cpu['single'])}")
        summary["fastest"] = {c: fastest_ratio(repeats, c) for c in ("seconds", "cpu_s")}
        print(f"  each side's fastest run, training: {summary['fastest']['seconds']:.2f}x wall, "
              f"{summary['fastest']['cpu_s']:.2f}x CPU")
    return summary


def print_memory(runs: dict, info: dict) -> float | None:
    mem = info["memory"]
    print(f"\nmemory on {info['device']}, {info['threads']} torch threads: one epoch over {mem['pairs']} pairs ({mem['tokens']} "
          f"tokens), batch {info['batch']}, random Qwen2 with a {VOCAB:,}-row tied vocabulary "
          f"(hidden {mem['shape']['hidden_size']}, {mem['shape']['num_hidden_layers']} layer); "
          "peak RSS of each whole process")
    for side, run in runs.items():
        loaded = f"{run['loaded_rss_mb']:>7.0f}" if "loaded_rss_mb" in run else f"{'-':>7}"
        print(f"{side:<11} peak RSS {run['process_peak_rss_mb']:>7.0f} MB  RSS at train start "
              f"{loaded} MB  {run['seconds']:>7.2f} s ({mem['tokens'] / run['seconds']:.0f} tok/s)")
    if "trl" not in runs:
        return None
    ratio = runs["ours"]["process_peak_rss_mb"] / runs["trl"]["process_peak_rss_mb"]
    verdict = "met" if ratio <= MEMORY_TARGET else "MISSED"
    print(f"ours / TRL peak RSS: {ratio:.2f}; target <= {MEMORY_TARGET}: {verdict}")
    return ratio


def print_sweep(sweep: dict) -> None:
    jobs = sweep["jobs"]
    print(f"\nbeta sweep {SWEEP_BETAS} from an SFT adapter, snakemake -n -p "
          f"({sweep['dry_run_s']:.1f} s): reference_logps {jobs.get('reference_logps', 0)} "
          f"(expect 1), train_preference {jobs.get('train_preference', 0)} (expect 3), "
          f"tokenize_preference {jobs.get('tokenize_preference', 0)}; reference directories "
          f"read by the training jobs: {sweep['reference_dirs']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--parts", default="speed,memory,sweep")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=48, help="pairs of the speed runs")
    parser.add_argument("--mem-pairs", type=int, default=8, help="pairs of the memory runs")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--vocab", type=int, default=8000, help="the trained tokenizer's size")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of every run (0: torch's default, one per core)")
    parser.add_argument("--trl-site", default=str(ROOT / ".venv" / "trl"))
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--part", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.part, args)))
        return
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    with_trl = Path(args.trl_site, "trl").is_dir()
    if not with_trl:
        print(f"TRL not found in {args.trl_site}: its runs are skipped")
    load = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    figures: dict = {"started": started, "load_before": load}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        parts = args.parts.split(",")
        if {"speed", "memory"} & set(parts):
            figures["info"] = info = setup(work, args) | {
                "batch": args.batch, "max_length": args.max_length,
                "threads": args.threads or torch_threads()}
        if "speed" in parts:
            repeats = speed_part(work, args, with_trl)
            figures["speed"] = {"repeats": repeats, "ratios": print_speed(repeats, info)}
        if "memory" in parts:
            runs = memory_part(work, args, with_trl)
            figures["memory"] = {"runs": runs, "ratio": print_memory(runs, info)}
        if "sweep" in parts:
            figures["sweep"] = sweep_part(work)
            print_sweep(figures["sweep"])
    figures["load_after"] = os.getloadavg()[0]
    print(f"\n{started}; load average {load:.2f} before, {figures['load_after']:.2f} after, on "
          f"{os.cpu_count()} cores")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
