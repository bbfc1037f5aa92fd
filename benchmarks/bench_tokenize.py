"""Tokenize + pack time and peak memory at growing corpus sizes: the tokenize_dataset job.

    python benchmarks/bench_tokenize.py [--sizes 100000 1000000] [--threads 2]
                                        [--max-length 256] [--compare 100000]
                                        [--pipeline 1000000] [--json out.json]

Writes synthetic LCCC-style dialogues (one to three short user/assistant exchanges of
Chinese text) as a prepared `train.jsonl` (plus a 5% `valid.jsonl`), trains a 4,000-token
byte-level BPE with ChatML like the default scratch model, then runs the workflow's own job
(`python -m workflow_scripts.training.tokenize_dataset`, packing on) in a child process per
size. It prints wall and CPU seconds (worker processes included), the job's own split into
encoding, packing (pack_bins) and writing, peak RSS (the job's process plus its largest
worker times the number of workers: an upper bound), and the growth exponent of time and
memory between consecutive sizes (1.0 is linear). The baseline is the smallest size: the
exponent says how time grows with the data. Targets (issue 19): time from 100k to 1M grows
at most 12x (exponent 1.08); 1M dialogues through prepare, tokenize and pack in under 180 s
(prepare is measured by bench_prepare_scale.py / bench_scale.py).

`--pipeline N` runs the chain the 180 s target is about, end to end: N raw LCCC-style
dialogues (bench_prepare_scale.py's generator: one JSON array, characters spaced, 3%
duplicates) through `prepare` (the workflow's data stage, in a child process), then its
train.jsonl and valid.jsonl through the tokenize_dataset job, packing on; wall and CPU seconds
of each step and their sum.

The baseline of the encoder itself, in the same run (`--compare N`, 0 to skip): the first N
dialogues of the smallest size, chunk by chunk in one process, through the reference path
(`chat_tokenize.tokenize_records`, what the job ran before fast_tokenize) and through the job's
`tokenize_chunk` (fast_tokenize): CPU seconds of each, the ratio, and a check that both give
the same token ids, labels, lengths and counts.

Other jobs on the machine make wall times noisy: compare CPU seconds, and the load average
printed before and after.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COMMON = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动好吗呢啊哈"
POOL = COMMON * 4 + "".join(chr(c) for c in range(0x4E00, 0x4E00 + 1500))


def utterance(rng: random.Random) -> str:
    """A short chat line (LCCC's median utterance is about 10 characters)."""
    text = "".join(rng.choices(POOL, k=rng.randint(3, 24)))
    return text + rng.choice(["", "。", "？", "！", "~", "哈哈"])


def dialogue(rng: random.Random, i: int) -> dict:
    messages = []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        messages += [{"role": "user", "content": utterance(rng)},
                     {"role": "assistant", "content": utterance(rng)}]
    return {"id": f"{i:x}", "messages": messages}


def write_corpus(data_dir: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "train.jsonl", "w", encoding="utf-8") as train, \
            open(data_dir / "valid.jsonl", "w", encoding="utf-8") as valid:
        for i in range(n):
            line = json.dumps(dialogue(rng, i), ensure_ascii=False) + "\n"
            (valid if i % 20 == 0 else train).write(line)


def build_tokenizer(model_dir: Path) -> None:
    from workflow_scripts.models.build_base_model import train_tokenizer

    rng = random.Random(1)
    corpus = [dialogue(rng, i)["messages"] for i in range(5000)]
    train_tokenizer(corpus, vocab_size=4000).save_pretrained(model_dir)


def peak_rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        return int(next(l for l in fh if l.startswith("VmHWM:")).split()[1]) / 1024


def child(data_dir: str, model_dir: str, out_dir: str, threads: int, max_length: int) -> None:
    """Run the job's `tokenize` in this process and print its figures as JSON."""
    import resource

    from workflow_scripts.training import tokenize_dataset

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    timings: dict = {}
    paths: dict = {}
    settings = {"max_length": max_length, "overflow": "truncate", "packing": True}
    start = time.perf_counter()
    manifest = tokenize_dataset.tokenize(Path(data_dir), model_dir, settings, Path(out_dir),
                                         threads, timings, paths)
    seconds = time.perf_counter() - start
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    workers = tokenize_dataset.worker_count(threads, Path(data_dir))
    worker_mib = usage[1].ru_maxrss / 1024 if workers > 1 else 0.0
    print(json.dumps({"seconds": seconds, "cpu_seconds": sum(u.ru_utime + u.ru_stime for u in usage),
                      "parent_rss_mib": peak_rss_mib(), "worker_rss_mib": worker_mib,
                      "peak_rss_mib": peak_rss_mib() + worker_mib * workers, "workers": workers,
                      "rows": manifest["rows"], "encoder_paths": paths,
                      **{k: round(v, 2) for k, v in timings.items()}}, ensure_ascii=False))


def compare_child(data_dir: str, model_dir: str, n: int, max_length: int) -> None:
    """The first `n` dialogues of `data_dir`'s train.jsonl, chunk by chunk in this process,
    through tokenize_records (the reference) and tokenize_dataset.tokenize_chunk (fast_tokenize):
    CPU seconds of each, and whether they agree, as JSON."""
    from itertools import chain, islice

    import numpy as np

    from workflow_scripts.training import tokenize_dataset as job
    from workflow_scripts.training.chat_tokenize import tokenize_records

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = {"max_length": max_length, "overflow": "truncate", "packing": True}
    job.init_worker(model_dir, False, settings)
    path = Path(data_dir) / "train.jsonl"
    with open(path, encoding="utf-8") as fh:
        lines = list(islice(fh, n))
    tasks = [(str(path), i + 1, lines[i:i + job.CHUNK_RECORDS])
             for i in range(0, len(lines), job.CHUNK_RECORDS)]

    def reference(task):
        features, stats = tokenize_records(job._WORKER["tokenizer"], job.parse_lines(*task),
                                           max_length, "truncate")
        return (np.fromiter(chain.from_iterable(f["input_ids"] for f in features), np.int32),
                np.fromiter(chain.from_iterable(f["labels"] for f in features), np.int32),
                np.asarray(stats.lengths), np.asarray(stats.full_lengths),
                {key: getattr(stats, key) for key in job.COUNTS})

    results, cpu = {}, {}
    for name, fn in (("reference", reference), ("fast", job.tokenize_chunk)):
        start = time.process_time()
        results[name] = [fn(task) for task in tasks]
        cpu[name] = time.process_time() - start
    same = all(all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
                   for a, b in zip(old, new[:5]))
               for old, new in zip(results["reference"], results["fast"]))
    paths: dict = {}
    for new in results["fast"]:
        for key, count in new[5].items():
            paths[key] = paths.get(key, 0) + count
    print(json.dumps({"dialogues": len(lines), "reference_cpu_s": round(cpu["reference"], 2),
                      "fast_cpu_s": round(cpu["fast"], 2),
                      "speedup": round(cpu["reference"] / cpu["fast"], 2), "identical": same,
                      "encoder_paths": paths}, ensure_ascii=False))


def compare_paths(n: int, data_dir: Path, model_dir: Path, max_length: int) -> dict:
    """`compare_child` in a child process of its own."""
    cmd = [sys.executable, __file__, "--compare-child", str(data_dir), str(model_dir), str(n),
           str(max_length)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(n: int, work: Path, model_dir: Path, threads: int, max_length: int) -> dict:
    data_dir = work / f"data-{n}"
    write_corpus(data_dir, n)
    cmd = [sys.executable, __file__, "--child", str(data_dir), str(model_dir),
           str(work / f"out-{n}"), str(threads), str(max_length)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"dialogues": n, **row}


def pipeline_row(n: int, work: Path, model_dir: Path, threads: int, max_length: int) -> dict:
    """prepare then tokenize + pack of `n` raw dialogues, each step in a child process."""
    from bench_prepare_scale import run_child, write_dialogues

    raw, prepared = work / f"raw-{n}.json", work / f"prepared-{n}"
    write_dialogues(raw, n)
    prepare = run_child("prepare", raw, prepared)
    raw.unlink()
    if "error" in prepare:
        return {"stage": "pipeline", "dialogues": n, "error": prepare["error"]}
    cmd = [sys.executable, __file__, "--child", str(prepared), str(model_dir),
           str(work / f"pipeline-out-{n}"), str(threads), str(max_length)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    tokenize = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"stage": "pipeline", "dialogues": n, "kept": prepare["kept"],
            "prepare_s": prepare["seconds"], "prepare_cpu_s": prepare["cpu_seconds"],
            "tokenize_s": round(tokenize["seconds"], 2),
            "tokenize_cpu_s": round(tokenize["cpu_seconds"], 2),
            "seconds": round(prepare["seconds"] + tokenize["seconds"], 2),
            "cpu_seconds": round(prepare["cpu_seconds"] + tokenize["cpu_seconds"], 2),
            "rows": tokenize["rows"], "encoder_paths": tokenize["encoder_paths"]}


def print_pipeline(r: dict) -> None:
    if "error" in r:
        print(f"pipeline at {r['dialogues']:,} dialogues failed: {r['error']}")
        return
    print(f"{r['dialogues']:,} raw dialogues through prepare ({r['prepare_s']:.1f} s wall, "
          f"{r['prepare_cpu_s']:.1f} CPU s; {r['kept']:,} kept) then tokenize + pack "
          f"({r['tokenize_s']:.1f} s wall, {r['tokenize_cpu_s']:.1f} CPU s): {r['seconds']:.1f} s "
          f"wall, {r['cpu_seconds']:.1f} CPU s; target under 180 s: "
          f"{'MET' if r['seconds'] < 180 else 'MISSED'}")


def tokenize_rows(sizes: list[int], work: Path, threads: int | None = None,
                  max_length: int = 256, compare: int = 0) -> list[dict]:
    """Rows for bench_scale.py's data section: {"stage": "tokenize+pack", "dialogues",
    "seconds", "cpu_seconds", "peak_rss_mb", ...}, printed as they come; with `compare`, one
    {"stage": "encoder", ...} row: `compare_paths` on the smallest size's first dialogues."""
    model_dir = work / "tokenize-model"
    if not model_dir.exists():
        build_tokenizer(model_dir)
    rows = []
    for n in sorted(sizes):
        row = measure(n, work, model_dir, threads or os.cpu_count() or 1, max_length)
        rows.append({"stage": "tokenize+pack", **row, "peak_rss_mb": row["peak_rss_mib"] * 1.048576})
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
        if compare and n == min(sizes):
            row = compare_paths(compare, work / f"data-{n}", model_dir, max_length)
            rows.append({"stage": "encoder", **row})
            print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    return rows


def exponent(a: dict, b: dict, key: str) -> float:
    return math.log(b[key] / a[key]) / math.log(b["dialogues"] / a["dialogues"])


def report(rows: list[dict]) -> None:
    print(f"{'dialogues':>10} {'wall s':>8} {'cpu s':>8} {'encode':>7} {'pack':>6} {'write':>6} "
          f"{'rows':>9} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['dialogues']:>10} {r['seconds']:>8.1f} {r['cpu_seconds']:>8.1f} "
              f"{r['encode_s']:>7.1f} {r['pack_s']:>6.2f} {r['write_s']:>6.2f} "
              f"{r['rows']['train']:>9} {r['peak_rss_mib']:>9.0f}")
    for a, b in zip(rows, rows[1:]):
        growth = b["dialogues"] / a["dialogues"]
        print(f"{a['dialogues']} -> {b['dialogues']} ({growth:.0f}x data): wall x"
              f"{b['seconds'] / a['seconds']:.1f} (exponent {exponent(a, b, 'seconds'):.2f}), "
              f"CPU x{b['cpu_seconds'] / a['cpu_seconds']:.1f} (exponent "
              f"{exponent(a, b, 'cpu_seconds'):.2f}), pack x{b['pack_s'] / max(a['pack_s'], 1e-3):.1f}, "
              f"peak RSS x{b['peak_rss_mib'] / a['peak_rss_mib']:.2f}; target: time x12 at most "
              f"for 10x -> {'met' if b['seconds'] / a['seconds'] <= 1.2 * growth else 'MISSED'}")
    for r in rows:
        if r["dialogues"] == 1_000_000:
            print(f"1M dialogues: tokenize + pack {r['seconds']:.0f} s wall on {r['workers']} "
                  "workers (the 180 s target is for prepare + tokenize + pack together)")


def print_comparison(c: dict) -> None:
    print(f"encoder on the same {c['dialogues']:,} dialogues, one process: reference path "
          f"(tokenize_records) {c['reference_cpu_s']:.1f} CPU s, fast_tokenize {c['fast_cpu_s']:.1f} "
          f"CPU s: x{c['speedup']:.1f}; identical output: {c['identical']}; "
          f"paths: {c['encoder_paths']}")


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        data_dir, model_dir, out_dir, threads, max_length = sys.argv[2:7]
        child(data_dir, model_dir, out_dir, int(threads), int(max_length))
        return
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--compare-child":
        data_dir, model_dir, n, max_length = sys.argv[2:6]
        compare_child(data_dir, model_dir, int(n), int(max_length))
        return
    from workflow_scripts.common.cli import parser as cli_parser

    parser = cli_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000],
                        help="corpus sizes in dialogues, smallest first")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="tokenize_dataset's worker processes")
    parser.add_argument("--max-length", type=int, default=256, help="packed row length in tokens")
    parser.add_argument("--compare", type=int, default=100_000,
                        help="dialogues encoded by both the reference path and fast_tokenize in one "
                        "process, CPU seconds side by side (0: skip)")
    parser.add_argument("--pipeline", type=int, default=0,
                        help="also run this many raw dialogues through prepare, then tokenize + "
                        "pack, and time the chain (0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()}", flush=True)
    rows, comparison, pipeline = [], None, None
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        work = Path(tmp)
        build_tokenizer(work / "model")
        for n in sorted(args.sizes):
            rows.append(measure(n, work, work / "model", args.threads, args.max_length))
            print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
            if args.compare and comparison is None:
                comparison = compare_paths(args.compare, work / f"data-{n}", work / "model",
                                           args.max_length)
                print(json.dumps(comparison, ensure_ascii=False), flush=True)
        if args.pipeline:
            pipeline = pipeline_row(args.pipeline, work, work / "model", args.threads,
                                    args.max_length)
            print(json.dumps(pipeline, ensure_ascii=False), flush=True)
    print(f"load average after: {os.getloadavg()}")
    report(rows)
    if comparison:
        print_comparison(comparison)
    if pipeline:
        print_pipeline(pipeline)
    if args.json:
        args.json.write_text(json.dumps({"sizes": rows, "encoder": comparison,
                                         "pipeline": pipeline}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
