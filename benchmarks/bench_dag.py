"""DAG-building cost: this workflow against a trivial Snakefile with the same jobs.

    python benchmarks/bench_dag.py [--repeats 5]

Writes a config with 200 experiments (two sweeps, one per shipped dataset, over lora.r x
training.learning_rate x lora.alpha on the tiny scratch model) and times, in the same run
and interleaved, for this workflow and for a generated Snakefile with the same rule names,
wildcards, jobs and dependencies whose rules only create their outputs:

- `snakemake -n` with nothing built yet;
- a no-op run (`snakemake --cores 1`) once every output exists and is up to date.

Outputs are made present without training: the files and directories listed by
`--detailed-summary` are created empty, then `--touch` marks them up to date in DAG order
(Snakemake 9's `--touch` only touches outputs that already exist). Target: ours <= 1.5x.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from workflow_runner import Workflow, make_workflow  # noqa: E402
from workflow_scripts.common.config import resolve_experiments, validate  # noqa: E402

GRID = {"lora.r": [4, 8, 16, 32, 64], "training.learning_rate": [1e-4, 2e-4, 5e-4, 1e-3, 2e-3],
        "lora.alpha": [8, 16, 32, 64]}
TARGET = 1.5
# The directory() outputs of rules/*.smk: built or fetched models, merged models, plots.
DIRECTORY_OUTPUT = re.compile(r"results/(models|merged)/[^/]+|results/report/plots")
# Same rules, wildcards and edges as rules/*.smk; every job only creates its outputs.
TRIVIAL_SNAKEFILE = """
import json
J = json.load(open(workflow.basedir + "/jobs.json"))
EXP = J["experiments"]
PAIRS = sorted({tuple(v) for v in EXP.values()})
TABLES = ["experiments", "base_metrics", "comparison", "training_log", "data_stats"]
wildcard_constraints:
    experiment="[^/]+", dataset="[^/]+", model="[^/]+"
rule all:
    input:
        "results/report/training_report.md", "results/report/training_report.html",
        expand("results/merged/{e}", e=J["merge"]),
rule prepare_dataset:
    input:
        lambda w: J["datasets"][w.dataset],
    output:
        multiext("results/data/{dataset}/", "train.jsonl", "valid.jsonl", "test.jsonl",
                 "rejects.jsonl", "stats.json"),
    shell:
        "touch {output}"
rule build_base_model:
    input:
        lambda w: expand("results/data/{d}/train.jsonl", d=J["pretrain"][w.model]),
    output:
        directory("results/models/{model}"),
    shell:
        "mkdir -p {output}"
rule train_adapter:
    input:
        lambda w: f"results/models/{EXP[w.experiment][0]}",
        lambda w: expand("results/data/{d}/{s}.jsonl", d=EXP[w.experiment][1], s=["train", "valid"]),
    output:
        multiext("results/adapters/{experiment}/", "adapter_model.safetensors",
                 "adapter_config.json", "trainer_log.jsonl", "train_metrics.json", "run_info.json"),
    shell:
        "touch {output}"
rule merge_adapter:
    input:
        lambda w: f"results/models/{EXP[w.experiment][0]}",
        "results/adapters/{experiment}/adapter_model.safetensors",
    output:
        directory("results/merged/{experiment}"),
    shell:
        "mkdir -p {output}"
rule evaluate:
    input:
        lambda w: f"results/models/{EXP[w.experiment][0]}",
        "results/adapters/{experiment}/adapter_model.safetensors",
        lambda w: f"results/data/{EXP[w.experiment][1]}/test.jsonl",
    output:
        multiext("results/eval/{experiment}/", "metrics.json", "predictions.jsonl"),
    shell:
        "touch {output}"
rule evaluate_base:
    input:
        "results/models/{model}", "results/data/{dataset}/test.jsonl",
    output:
        multiext("results/eval/base/{model}/{dataset}/", "metrics.json", "predictions.jsonl"),
    shell:
        "touch {output}"
rule snapshot_config:
    output:
        "results/metrics/config.json",
    shell:
        "touch {output}"
rule collect_metrics:
    input:
        "results/metrics/config.json",
        expand("results/adapters/{e}/train_metrics.json", e=EXP),
        expand("results/eval/{e}/metrics.json", e=EXP),
        [f"results/eval/base/{m}/{d}/metrics.json" for m, d in PAIRS],
        expand("results/data/{d}/stats.json", d=J["datasets"]),
    output:
        expand("results/metrics/{t}.tsv", t=TABLES), "results/metrics/experiments.json",
    shell:
        "touch {output}"
rule render_report:
    input:
        rules.collect_metrics.output, "results/metrics/config.json",
        expand("results/eval/{e}/predictions.jsonl", e=EXP),
    output:
        multiext("results/report/training_report.", "md", "html"),
        directory("results/report/plots"),
    shell:
        "touch {output[0]} {output[1]} && mkdir -p {output[2]}"
"""


def sweep_config() -> dict:
    """The default config with its experiments replaced by 2 x 100 sweep points."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))
    model = next(iter(config["base_models"]))
    config["experiments"] = {}
    config["sweeps"] = {f"{ds}-grid": {"base": {"base_model": model, "dataset": ds}, "grid": GRID}
                        for ds in config["datasets"]}
    return config


def raw_files(files: list | dict) -> list[str]:
    """A dataset's files as one list, whether given as a list or per split."""
    if isinstance(files, list):
        return files
    return [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]


def trivial_workflow(dest: Path, config_file: Path, config: dict) -> Workflow:
    """The trivial Snakefile, its job list precomputed, and a workdir with the same data."""
    cfg = validate(config)
    jobs = {
        "experiments": {n: [e["base_model"], e["dataset"]]
                        for n, e in resolve_experiments(cfg).items()},
        "datasets": {n: raw_files(d["files"]) for n, d in cfg["datasets"].items()},
        "pretrain": {n: m["pretrain"]["datasets"] for n, m in cfg["base_models"].items()},
        "merge": cfg["merge"],
    }
    code, work = dest / "code", dest / "work"
    code.mkdir(parents=True)
    (code / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    (code / "Snakefile").write_text(TRIVIAL_SNAKEFILE, encoding="utf-8")
    shutil.copytree(ROOT / "data" / "raw", work / "data" / "raw")
    shutil.copy(config_file, work / "config.yaml")
    return Workflow(code, work)


def materialize_outputs(workflow: Workflow) -> int:
    """Create every planned output empty, then let `--touch` date them in DAG order."""
    summary = workflow.run("--detailed-summary").stdout.splitlines()
    paths = [line.split("\t")[0] for line in summary[1:] if "\t" in line]
    for rel in paths:
        path = workflow.workdir / rel
        if DIRECTORY_OUTPUT.fullmatch(rel):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    workflow.run("--touch", "--cores", "1")
    leftover = workflow.planned_jobs()
    if leftover:
        raise RuntimeError(f"{workflow.code}: still out of date after --touch: {leftover}")
    return len(paths)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(workflow: Workflow, *args: str) -> tuple[float, float]:
    """Wall and CPU seconds of one snakemake process (CPU is robust to a busy machine)."""
    start, cpu = time.perf_counter(), children_cpu()
    workflow.run(*args)
    return time.perf_counter() - start, children_cpu() - cpu


Medians = dict[str, tuple[float, float]]  # workflow -> (wall, CPU) seconds


def interleaved(runs: dict[str, Callable[[], tuple[float, float]]], repeats: int) -> Medians:
    """Median (wall, CPU) per workflow, alternating the workflows so noise hits both."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(run())
    return {name: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s))
            for name, s in samples.items()}


def measure(ours: Workflow, trivial: Workflow, repeats: int) -> dict[str, Medians]:
    pair = {"ours": ours, "trivial": trivial}
    dry = interleaved({k: (lambda w=w: timed(w, "-n")) for k, w in pair.items()}, repeats)
    outputs = {k: materialize_outputs(w) for k, w in pair.items()}
    print(f"outputs created and touched: ours {outputs['ours']}, trivial {outputs['trivial']}")
    noop = interleaved({k: (lambda w=w: timed(w, "--cores", "1")) for k, w in pair.items()},
                       repeats)
    return {"snakemake -n": dry, "no-op run": noop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "sweep200.yaml"
        config = sweep_config()
        config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        ours = make_workflow(Path(tmp) / "ours", config_file)
        trivial = trivial_workflow(Path(tmp) / "trivial", config_file, config)
        counts = {k: sum(w.planned_jobs().values()) for k, w in
                  (("ours", ours), ("trivial", trivial))}
        print(f"jobs planned: ours {counts['ours']}, trivial {counts['trivial']}")
        results = measure(ours, trivial, args.repeats)
    for name, times in results.items():
        report(name, times, args.repeats)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def report(name: str, times: Medians, repeats: int) -> None:
    for i, kind in enumerate(("wall", "CPU")):
        ours, trivial = times["ours"][i], times["trivial"][i]
        ratio = ours / trivial
        verdict = "met" if ratio <= TARGET else "MISSED"
        print(f"{name:13s} {kind:4s}: ours {ours:.2f} s, trivial {trivial:.2f} s, ratio "
              f"{ratio:.2f}x (target <= {TARGET}x {verdict}; median of {repeats})")


if __name__ == "__main__":
    main()
