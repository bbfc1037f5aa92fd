"""Data preparation speed and memory: this workflow's `prepare` against a naive script.

    python benchmarks/bench_prepare_data.py [--records 1000000] [--baseline-records 20000]
                                            [--workers N]

Writes a synthetic Alpaca file (Chinese text, ~3% exact duplicates, ~2% width/whitespace
duplicates, ~2% empty outputs), then times, each in its own process so that peak RSS is
its own: ours (`prepare`: read, clean, dedupe, split, write) and a naive baseline written
the way typical preprocessing scripts are (json.load, per-record loops, dedupe by scanning a
list). The baseline is quadratic, so it runs on subsamples and its time is extrapolated to
the full size with a fitted a*n + b*n^2; the output says so.

Other jobs on the machine make wall times noisy: the output gives CPU seconds (worker
processes included) next to wall times, and the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLEANING = {"min_prompt_chars": 1, "min_response_chars": 2, "max_chars": 4096, "dedupe": True,
            "min_cjk_share": 0.0}
WIDE = str.maketrans("0123456789?", "０１２３４５６７８９？")


def phrases(rng: random.Random, count: int) -> list[str]:
    common = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动"
    pool = common + "".join(chr(c) for c in range(0x4E00, 0x4E00 + 2000))
    return ["".join(rng.choices(pool, k=rng.randint(4, 16))) for _ in range(count)]


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = phrases(rng, 5000)
    records = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.03 and records:
            records.append(dict(records[rng.randrange(len(records))]))
            continue
        w = rng.choices(words, k=8)
        record = {"instruction": f"{w[0]}{w[1]}第{i}题?", "input": w[2] if roll > 0.8 else "",
                  "output": "" if roll > 0.98 else f"{w[3]}，{w[4]}{w[5]}。{w[6]}{w[7]}。"}
        if roll < 0.05 and records:  # the same question with full-width digits
            record = dict(records[-1], instruction=records[-1]["instruction"].translate(WIDE))
        records.append(record)
    return records


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss would count the parent's before exec)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        line = next(line for line in fh if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def measured(start: float, records: int, kept: int, workers: int = 0) -> dict:
    """Wall and CPU seconds and peak RSS, worker processes included. The RSS figure adds
    the largest worker's peak once per worker: an upper bound, as forked workers share
    the parent's pages and each counts them."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    worker_mib = usage[1].ru_maxrss / 1024 if workers > 1 else 0.0
    return {"seconds": time.perf_counter() - start, "records": records, "kept": kept,
            "cpu_seconds": sum(u.ru_utime + u.ru_stime for u in usage), "workers": workers,
            "parent_rss_mib": peak_rss_mib(), "worker_rss_mib": worker_mib,
            "peak_rss_mib": peak_rss_mib() + worker_mib * workers}


def run_ours(path: str, out_dir: str, workers: int) -> dict:
    from workflow_scripts.data.prepare_dataset import default_workers, prepare
    workers = workers or default_workers()
    start = time.perf_counter()
    stats = prepare("bench", {"format": "alpaca", "files": [path]}, CLEANING,
                    {"valid": 0.05, "test": 0.05}, 42, Path(out_dir), workers)
    return measured(start, stats["raw"], stats["kept"], workers)


def run_naive(path: str, out_dir: str) -> dict:
    """What a typical one-off preprocessing script does, loop by loop."""
    start = time.perf_counter()
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    seen, kept, rejected = [], [], []
    for record in data:
        if "instruction" not in record or "output" not in record:
            rejected.append(record)
            continue
        prompt = (record["instruction"] + "\n" + record.get("input", "")).strip()
        response = record["output"].strip()
        if not prompt or len(response) < 2 or len(prompt) + len(response) > 4096:
            rejected.append(record)
            continue
        key = " ".join(prompt.split()) + "|" + " ".join(response.split())
        if key in seen:  # a list: every lookup scans all kept records
            rejected.append(record)
            continue
        seen.append(key)
        kept.append({"messages": [{"role": "user", "content": prompt},
                                  {"role": "assistant", "content": response}]})
    random.seed(42)
    random.shuffle(kept)
    cut = int(len(kept) * 0.9), int(len(kept) * 0.95)
    for name, rows in (("train", kept[:cut[0]]), ("valid", kept[cut[0]:cut[1]]),
                       ("test", kept[cut[1]:]), ("rejects", rejected)):
        with open(Path(out_dir) / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return measured(start, len(data), len(kept))


def in_child(kind: str, path: str, out: str, *options: str) -> dict:
    """Run one measurement in a fresh interpreter, so its peak RSS is its own."""
    done = subprocess.run([sys.executable, __file__, *options, "--child", kind, path, out],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def extrapolate(small: dict, large: dict, n: int) -> float:
    """Seconds at n records from a*n + b*n^2 fitted through two measured sizes."""
    (n1, t1), (n2, t2) = (small["records"], small["seconds"]), (large["records"], large["seconds"])
    b = max((t2 / n2 - t1 / n1) / (n2 - n1), 0.0)
    a = t1 / n1 - b * n1
    return a * n + b * n * n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--baseline-records", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=0,
                        help="processes for ours (default: prepare_dataset's default)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path, out = args.child
        print(json.dumps(run_ours(path, out, args.workers) if kind == "ours"
                         else run_naive(path, out)))
        return
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"(1/5/15 min) on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        records = synthetic_records(args.records)
        files = {n: write_records(Path(tmp) / f"alpaca_{n}.json", records[:n])
                 for n in (args.records, args.baseline_records // 2, args.baseline_records)}
        del records
        size_mib = Path(files[args.records]).stat().st_size / 2**20
        print(f"generated {args.records:,} records ({size_mib:.0f} MiB) in "
              f"{time.perf_counter() - start:.1f} s")
        ours = in_child("ours", files[args.records], tmp, f"--workers={args.workers}")
        half = in_child("naive", files[args.baseline_records // 2], tmp)
        naive = in_child("naive", files[args.baseline_records], tmp)
    report(args.records, ours, half, naive)


def write_records(path: Path, records: list[dict]) -> str:
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return str(path)


def report(n: int, ours: dict, half: dict, naive: dict) -> None:
    ours_rate = ours["records"] / ours["seconds"]
    naive_seconds = extrapolate(half, naive, n)
    print(f"ours : {ours['records']:,} records, {ours['workers']} worker process(es), in "
          f"{ours['seconds']:.1f} s wall ({ours['cpu_seconds']:.1f} s CPU, workers included) "
          f"= {ours_rate:,.0f} records/s wall, "
          f"{ours['records'] / ours['cpu_seconds']:,.0f} records per CPU second; kept "
          f"{ours['kept']:,}; peak RSS {ours['peak_rss_mib']:,.0f} MiB with workers (parent "
          f"{ours['parent_rss_mib']:,.0f} MiB + {ours['workers']} x at most "
          f"{ours['worker_rss_mib']:,.0f} MiB, shared pages counted in each)")
    for run in (half, naive):
        print(f"naive: {run['records']:,} records in {run['seconds']:.2f} s wall "
              f"({run['cpu_seconds']:.2f} s CPU) = {run['records'] / run['seconds']:,.0f} "
              f"records/s, kept {run['kept']:,}, peak RSS {run['peak_rss_mib']:,.0f} MiB")
    print(f"naive: extrapolated to {n:,} records from the two subsamples (a*n + b*n^2 fit; "
          f"its list scan is quadratic): {naive_seconds:,.0f} s = "
          f"{n / naive_seconds:,.0f} records/s")
    print(f"ratio: ours is {naive_seconds / ours['seconds']:,.1f}x faster at {n:,} records "
          f"(extrapolated baseline); at {naive['records']:,} records the baseline measured "
          f"{naive['records'] / naive['seconds']:,.0f} records/s, "
          f"{ours_rate / (naive['records'] / naive['seconds']):,.1f}x below ours")
    print(f"target: >= 50,000 records/s {'met' if ours_rate >= 50_000 else 'MISSED'}; "
          f"peak RSS < 3 GiB {'met' if ours['peak_rss_mib'] < 3072 else 'MISSED'}; "
          f"load average at the end {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
