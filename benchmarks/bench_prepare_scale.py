"""Data preparation at corpus scale: time and peak RSS of `prepare` on 100k, 1M and 10M
synthetic LCCC-style dialogues, with the growth exponent.

    python benchmarks/bench_prepare_scale.py [--sizes 100000 1000000 10000000]
                                             [--baseline-max 1000000]

Each size is written as one JSON array of dialogues (LCCC-base's layout: utterances with
every character separated by a space; ~3% repeat an earlier dialogue, ~1% have an empty
reply, every character spaced), then prepared in a child process of its own, whose peak RSS (VmHWM) is its own.
The baseline, in the same run: `json.load` of the same file in a child process, the least
any preparation that loads the corpus whole needs (run up to --baseline-max dialogues: at
10M it needs more memory than this machine can spare).

Targets (issue 19): 100k -> 1M time grows at most 12x (linear is 10x); 10M prepared with peak
RSS under 3 GiB. Other jobs make wall times noisy: CPU seconds are printed beside them, and
the exponent is given for both.

`bench_scale.py --section data` runs this too (`prepare_rows`, `print_prepare_summary`).
"""
from __future__ import annotations

import argparse
import json
import math
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
SPLIT = {"valid": 0.05, "test": 0.05}
GROWTH_TARGET = 12.0  # 100k -> 1M
RSS_TARGET_MB = 3 * 1024  # 10M
SIZES = (100_000, 1_000_000, 10_000_000)


def write_dialogues(path: Path, n: int, seed: int = 0) -> int:
    """n LCCC-style dialogues as one JSON array, written as they are made; returns bytes.

    Dialogues are drawn from a pool of 200,000 (2-4 turns of 2-12 characters, 1% with an
    empty reply), each made distinct by its number (spaced, as LCCC spaces every character)
    at the start of its first turn; every 33rd repeats the dialogue before it exactly."""
    rng = random.Random(seed)
    common = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动"
    chars = common + "".join(chr(c) for c in range(0x4E00, 0x4E00 + 3000))
    phrases = [" ".join(rng.choices(chars, k=rng.randint(2, 12))) for _ in range(50_000)]
    pool = []
    for _ in range(200_000):
        turns = rng.choices(phrases, k=rng.choice((2, 2, 2, 3, 4)))
        if rng.random() < 0.01:
            turns[-1] = ""  # empty_response
        pool.append('", "'.join(turns) + '"]')
    with open(path, "w", encoding="utf-8") as out:
        out.write("[\n")
        line = ""
        for start in range(0, n, 100_000):
            lines = []
            for i in range(start, min(n, start + 100_000)):
                if i % 33 != 32:  # else: the same line again, an exact duplicate
                    line = '["' + " ".join(str(i)) + " " + pool[i % 200_000]
                lines.append(line)
            out.write(",\n".join(lines) + (",\n" if start + 100_000 < n else "\n"))
        out.write("]\n")
    return path.stat().st_size


def child_peak_mib() -> float:
    """This process's peak RSS (VmHWM)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        return int(next(x for x in fh if x.startswith("VmHWM:")).split()[1]) / 1024


def child(kind: str, path: str, out_dir: str) -> dict:
    start = time.perf_counter()
    if kind == "prepare":
        from workflow_scripts.data.prepare_dataset import prepare
        stats = prepare("scale", {"format": "lccc", "files": [path]}, CLEANING, SPLIT, 42,
                        Path(out_dir))
        kept = stats["kept"]
    else:
        with open(path, encoding="utf-8") as fh:
            kept = len(json.load(fh))
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return {"seconds": round(time.perf_counter() - start, 2), "kept": kept,
            "cpu_seconds": round(sum(u.ru_utime + u.ru_stime for u in usage), 2),
            "peak_rss_mb": round(max(child_peak_mib(), usage[1].ru_maxrss / 1024), 1)}


def run_child(kind: str, path: Path, out_dir: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, str(path), str(out_dir)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_rows(sizes: list[int], work: Path, baseline_max: int = 1_000_000) -> list[dict]:
    """One prepare row (and a json.load row up to baseline_max) per size, printed as they
    come: {"stage", "dialogues", "file_mb", "seconds", "cpu_seconds", "peak_rss_mb"}."""
    rows = []
    for n in sizes:
        path = work / f"lccc_{n}.json"
        started = time.perf_counter()
        size = write_dialogues(path, n)
        print(f"{n:>11,} dialogues: {size / 2**20:,.0f} MiB written in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        cases = ["prepare"] + (["json.load"] if n <= baseline_max else [])
        for kind in cases:
            row = {"stage": kind, "dialogues": n, "file_mb": round(size / 2**20, 1),
                   **run_child(kind, path, work / f"out_{n}")}
            rows.append(row)
            print(f"  {kind:<10} {row.get('seconds', '-'):>8} s wall {row.get('cpu_seconds', '-'):>8}"
                  f" s CPU  peak RSS {row.get('peak_rss_mb', '-'):>8} MB  {row.get('error', '')}",
                  flush=True)
        path.unlink()
        for name in ("train", "valid", "test", "rejects"):
            (work / f"out_{n}" / f"{name}.jsonl").unlink(missing_ok=True)
    return rows


def print_prepare_summary(rows: list[dict]) -> bool:
    """The growth exponents and the targets; True when every target that was measured is met."""
    ours = {r["dialogues"]: r for r in rows if r["stage"] == "prepare" and "error" not in r}
    ok = len(ours) == len({r["dialogues"] for r in rows if r["stage"] == "prepare"})
    print("\nprepare (LCCC-style JSON array):")
    sizes = sorted(ours)
    for small, large in zip(sizes, sizes[1:]):
        for measure in ("seconds", "cpu_seconds"):
            ratio = ours[large][measure] / ours[small][measure]
            exponent = math.log(ratio) / math.log(large / small)
            line = (f"  {small:,} -> {large:,}: {measure.replace('_', ' ')} x{ratio:.2f} "
                    f"(exponent {exponent:.2f})")
            if (small, large) == (100_000, 1_000_000):
                met = ratio <= GROWTH_TARGET
                ok &= met if measure == "cpu_seconds" else True
                line += f"; target at most x{GROWTH_TARGET:g}: {'MET' if met else 'MISSED'}"
            print(line)
    baseline = {r["dialogues"]: r for r in rows if r["stage"] == "json.load" and "error" not in r}
    for n in sizes:
        mb = ours[n]["peak_rss_mb"]
        line = f"  {n:,}: peak RSS {mb:,.0f} MB"
        if n in baseline:
            line += f" (json.load of the file alone: {baseline[n]['peak_rss_mb']:,.0f} MB)"
        if n == 10_000_000:
            met = mb < RSS_TARGET_MB
            ok &= met
            line += f"; target under {RSS_TARGET_MB:,} MB: {'MET' if met else 'MISSED'}"
        print(line)
    return ok


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(child(*argv[1:])))
        return
    from workflow_scripts.common.cli import parser as cli_parser
    from workflow_scripts.common.run_info import cpu_name

    parser = cli_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                        help="numbers of dialogues (default: 100k 1M 10M)")
    parser.add_argument("--baseline-max", type=int, default=1_000_000,
                        help="largest size the json.load baseline runs at")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the synthetic files go (default: a temporary directory)")
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_prepare_scale_", dir=args.work_dir) as tmp:
        rows = prepare_rows(args.sizes, Path(tmp), args.baseline_max)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    sys.exit(0 if print_prepare_summary(rows) else 1)


if __name__ == "__main__":
    main()
