"""A search that learns between rounds against random search and a grid, at one budget of trainings.

    python benchmarks/bench_search.py [--config config/config.yaml] [--search alpaca-rounds]
        [--budget 12] [--seeds 3] [--steps 40] [--eval-steps 10] [--workers 2] [--within 1,0.1]
        [--work DIR] [--json PATH] [--tiny]

The setup is the config's: its search's starting point (the default config: the tiny-zh
scratch model on alpaca_zh), built by Snakemake in `--work` (the base model and the prepared
dataset), tokenized once. Every training is that starting point with a trial's settings,
shortened to `--steps` optimizer steps with a validation loss every `--eval-steps`, trained by
training/train_adapter.py in a pool of `--workers` processes of one thread each. Over the
search's two-dimensional space and with `--budget` trainings each:

- tpe: the search as the workflow runs it (search/study.py's ask and tell, rounds of
  `parallel`, the config's sampler and pruner; a trial's stop rules go into its training job,
  and training/stop_rules.py stops it there); a pruned trial counts the tokens it trained;
- random: the same rounds with Optuna's random sampler and no pruner;
- grid: the grid the budget buys (a x b = budget points, a >= b, the first dimension the finer;
  log-spaced on a log scale), trained once: it has no seed.

Each search runs once per seed (`--seeds` of them from the config's seed up); the trainings
keep the config's seed, so the methods search one deterministic objective. Figures: each
method's best validation loss, the tokens it trained, and the tokens it had trained (its
trials in the order they were asked) when a complete trial first came within x% of the grid's
best (`--within`); a grid knows its best only once every point is trained, so its figure is its
whole budget. Target: tpe within 1% of the grid's best on at most half the grid's tokens, on
the median seed.

Every training's metrics and log are cached in `--work`/cache by a hash of its job (settings,
stop rules), its tokenized data and its base model's files: identical trials across methods,
seeds and runs train once (the grid's points for every seed; a tpe search's random first
trials, which are the random search's first trials with the same seed).

`--tiny` runs the same on tests/configs/search.yaml's smoke model in seconds (a test).
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workflow_scripts.common.config import resolve_experiments, validate  # noqa: E402
from workflow_scripts.common.io_utils import read_json, read_jsonl, write_json, write_jsonl  # noqa: E402
from workflow_scripts.search.plan import SearchPlan, apply_params, plan_searches  # noqa: E402

TARGET = 0.5  # tpe's tokens to within 1% of the grid's best / the grid's tokens
TINY = {"config": "tests/configs/search.yaml", "search": "lr-rank", "budget": 4, "seeds": 2,
        "steps": 4, "eval_steps": 2, "workers": 1}
NO_STOP = {"pruner": "none", "thresholds": [], "nonfinite": True}


@dataclass(frozen=True)
class Setup:
    """The built base model, the prepared and tokenized data, and the search's plan."""

    plan: SearchPlan
    model_dir: Path
    data_dir: Path
    tokenized_dir: Path
    base_model: dict


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--search", default="alpaca-rounds")
    p.add_argument("--budget", type=int, default=12, help="trainings per method and seed")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per training")
    p.add_argument("--eval-steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=2, help="trainings side by side, 1 thread each")
    p.add_argument("--within", default="1,0.1", help="percentages of the grid's best")
    p.add_argument("--work", type=Path, default=None, help="setup, cache and studies "
                   "(default: a folder in the temporary directory named for the config)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here too")
    p.add_argument("--tiny", action="store_true", help=f"a quick run: {TINY}")
    args = p.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    args.config = (ROOT / args.config).resolve()
    args.work = args.work or Path(tempfile.gettempdir()) / f"bench_search-{args.config.stem}"
    args.within = [float(x) for x in args.within.split(",")]
    return args


# --- setup -----------------------------------------------------------------------------

def load_plan(config_path: Path, search: str, steps: int, eval_steps: int) -> tuple[dict, SearchPlan]:
    """The config and its search's plan, the starting point's training shortened."""
    cfg = validate(yaml.safe_load(config_path.read_text(encoding="utf-8")), str(config_path))
    plans = plan_searches(cfg, resolve_experiments(cfg, str(config_path)), str(config_path))
    if search not in plans:
        raise SystemExit(f"{config_path}: no search named {search!r} (has: {', '.join(plans)})")
    plan = plans[search]
    if plan.spec["objective"] != {"metric": "eval_loss", "direction": "minimize"}:
        raise SystemExit(f"{config_path}: searches.{search}: the benchmark trains only, so its "
                         "objective is the validation loss (eval_loss, minimize)")
    if len(plan.spec["space"]) != 2:
        raise SystemExit(f"{config_path}: searches.{search}: the benchmark's grid needs a "
                         f"two-dimensional space, not {list(plan.spec['space'])}")
    base = apply_params(plan.base, {"training.max_steps": steps, "training.eval_steps": eval_steps,
                                    "training.save_steps": steps})
    return cfg, SearchPlan(plan.name, plan.spec, base, cfg["seed"])


def build_setup(config_path: Path, cfg: dict, plan: SearchPlan, work: Path) -> Setup:
    """Build the base model and prepare the data with the workflow itself, then tokenize."""
    from workflow_scripts.training.train_adapter import tokenize_here

    model, dataset = plan.base["base_model"], plan.base["dataset"]
    if cfg["base_models"][model]["source"] != "scratch":
        raise SystemExit(f"the benchmark builds its base model: {model} is not a scratch model")
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "data").exists():
        (work / "data").symlink_to(ROOT / "data")
    shutil.copy(config_path, work / "config.yaml")
    targets = [f"results/models/{model}"] + [f"results/data/{dataset}/{s}.jsonl"
                                              for s in ("train", "valid")]
    cmd = [sys.executable, "-m", "snakemake", *targets, "-s", str(ROOT / "Snakefile"),
           "--directory", str(work), "--configfile", str(work / "config.yaml"), "--cores", "2",
           "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    setup = Setup(plan, work / "results/models" / model, work / "results/data" / dataset,
                  work / "tokenized", cfg["base_models"][model])
    shutil.rmtree(setup.tokenized_dir, ignore_errors=True)
    tokenize_here(training_job(setup, {}, NO_STOP), str(setup.model_dir), setup.data_dir,
                  setup.tokenized_dir)
    return setup


def training_job(setup: Setup, params: dict, stop: dict) -> dict:
    """A trial's train_adapter job, as rules/common.smk's training_job gives it."""
    experiment = apply_params(setup.plan.base, params)
    experiment = {k: v for k, v in experiment.items() if k not in ("evaluation", "resources")}
    return {"experiment": experiment, "seed": setup.plan.seed, "base_model": setup.base_model,
            "stop": stop}


# --- trainings: a process pool behind a cache ------------------------------------------

def init_worker(log_dir: str) -> None:
    """One thread per training; the Trainer's progress bars and warnings to a log file."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    log = open(Path(log_dir) / f"worker-{os.getpid()}.log", "a")
    os.dup2(log.fileno(), 2)
    os.dup2(log.fileno(), 1)


def train_one(job: dict, model_dir: str, tokenized_dir: str) -> dict:
    """Train one job in a scratch folder: its train_metrics.json and trainer_log.jsonl."""
    from workflow_scripts.training.train_adapter import train_tokenized

    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        out = Path(tmp) / "out"
        train_tokenized(job, model_dir, Path(tokenized_dir), out, Path(tmp) / "checkpoints")
        return {"train_metrics": read_json(out / "train_metrics.json"),
                "trainer_log": list(read_jsonl(out / "trainer_log.jsonl"))}


class Trainings:
    """Trainings by job, each trained once: from the cache, or in the pool (a job asked for
    again while it trains waits for the same training)."""

    def __init__(self, setup: Setup, work: Path, workers: int):
        import multiprocessing

        self.setup, self.cache = setup, work / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        (work / "logs").mkdir(exist_ok=True)
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=init_worker, initargs=(str(work / "logs"),))
        self.lock = threading.Lock()
        self.running: dict[str, Future] = {}
        self.asked = self.trained = 0

    def key(self, job: dict) -> str:
        from workflow_scripts.training.train_adapter import checkpoint_key

        if not job["stop"]["thresholds"]:  # the pruner's name then changes nothing trained
            job = job | {"stop": job["stop"] | {"pruner": "none"}}
        return checkpoint_key(job, [self.setup.tokenized_dir / "manifest.json"],
                              self.setup.model_dir, self.cache / ".hash_cache")

    def get(self, job: dict) -> dict:
        key = self.key(job)
        path = self.cache / f"{key}.json"
        with self.lock:
            self.asked += 1
            if path.is_file():
                return read_json(path)
            future = self.running.get(key)
            if future is None:
                future = self.pool.submit(train_one, job, str(self.setup.model_dir),
                                          str(self.setup.tokenized_dir))
                self.running[key] = future
                self.trained += 1
        outcome = future.result()
        with self.lock:
            write_json(path, outcome)
            self.running.pop(key, None)
        return outcome


# --- methods ---------------------------------------------------------------------------

@dataclass
class Trial:
    number: int
    params: dict
    state: str  # complete, pruned or failed
    value: float | None
    tokens: int
    steps: int


@dataclass
class Run:
    method: str
    seed: int | None
    trials: list[Trial] = field(default_factory=list)

    @property
    def best_trial(self) -> Trial | None:
        complete = [t for t in self.trials if t.state == "complete"]
        return min(complete, key=lambda t: t.value, default=None)

    @property
    def best(self) -> float | None:
        return self.best_trial.value if self.best_trial else None

    @property
    def tokens(self) -> int:
        return sum(t.tokens for t in self.trials)

    def tokens_to(self, target: float) -> int | None:
        """Tokens trained up to the first complete trial at or below `target`."""
        spent = 0
        for trial in self.trials:
            spent += trial.tokens
            if trial.state == "complete" and trial.value <= target:
                return spent
        return None


def outcome_trial(number: int, params: dict, outcome: dict, result: dict) -> Trial:
    metrics = outcome["train_metrics"]
    return Trial(number, params, result["state"], result["value"], metrics["train_tokens"],
                 metrics["steps"])


def told_result(name: str, outcome: dict, objective: dict, results: Path) -> dict:
    """The trial's result as search/tell.py reads it from the files its training wrote."""
    from workflow_scripts.search.tell import trial_result

    write_json(results / "adapters" / name / "train_metrics.json", outcome["train_metrics"])
    write_jsonl(results / "adapters" / name / "trainer_log.jsonl", outcome["trainer_log"])
    return trial_result(name, objective, results)


def method_plan(setup: Setup, method: str, seed: int, budget: int, work: Path) -> SearchPlan:
    """The search's plan for one method and seed, with a new study of its own."""
    spec = dict(setup.plan.spec, trials=budget, enqueue=[])
    if method == "random":
        spec |= {"sampler": {"name": "random"}, "pruner": dict(spec["pruner"], name="none")}
    db = work / "studies" / f"{method}-{seed}.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.unlink(missing_ok=True)
    spec["storage"] = f"sqlite:///{db}"
    return SearchPlan(setup.plan.name, spec, setup.plan.base, seed)


def run_search(setup: Setup, trainings: Trainings, method: str, seed: int, budget: int,
               work: Path) -> Run:
    """Rounds of ask, train side by side, tell: the workflow's search, in one process."""
    from workflow_scripts.search.study import ask_round, tell_round

    plan = method_plan(setup, method, seed, budget, work)
    results = work / "studies" / f"{method}-{seed}"
    shutil.rmtree(results, ignore_errors=True)
    run = Run(method, seed)
    for round_ in range(plan.rounds):
        asked = [t for t in ask_round(plan.ask_job(round_)) if t["name"] in plan.round_trials(round_)]
        jobs = [training_job(setup, t["params"], t["stop"]) for t in asked]
        with ThreadPoolExecutor(len(jobs)) as threads:
            outcomes = list(threads.map(trainings.get, jobs))
        told = [told_result(t["name"], o, plan.spec["objective"], results)
                for t, o in zip(asked, outcomes)]
        tell_round(plan.tell_job(round_), told)
        run.trials += [outcome_trial(t["number"], t["params"], o, r)
                       for t, o, r in zip(asked, outcomes, told)]
    return run


def grid_points(space: dict, budget: int) -> list[dict]:
    """a x b = budget points (a >= b, a for the first dimension), each dimension spread evenly
    over its range (geometrically on a log scale)."""
    a = next(d for d in range(math.ceil(math.sqrt(budget)), budget + 1) if budget % d == 0)
    (k1, d1), (k2, d2) = space.items()
    return [{k1: v1, k2: v2} for v1, v2 in itertools.product(axis(d1, a), axis(d2, budget // a))]


def axis(dim: Any, n: int) -> list:
    if isinstance(dim, list):
        return [dim[round(i * (len(dim) - 1) / max(n - 1, 1))] for i in range(n)]
    if n == 1:
        return [dim["low"]]
    lo, hi = dim["low"], dim["high"]
    if dim["log"]:
        values = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    else:
        values = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    return [round(v) for v in values] if dim["type"] == "int" else [float(f"{v:.6g}") for v in values]


def run_grid(setup: Setup, trainings: Trainings, budget: int, work: Path) -> Run:
    points = grid_points(setup.plan.spec["space"], budget)
    jobs = [training_job(setup, p, NO_STOP) for p in points]
    with ThreadPoolExecutor(len(jobs)) as threads:
        outcomes = list(threads.map(trainings.get, jobs))
    results = work / "studies" / "grid"
    run = Run("grid", None)
    for number, (point, outcome) in enumerate(zip(points, outcomes)):
        result = told_result(f"grid-{number}", outcome, setup.plan.spec["objective"], results)
        run.trials.append(outcome_trial(number, point, outcome, result))
    return run


# --- figures ---------------------------------------------------------------------------

def figures(grid: Run, runs: list[Run], within: list[float]) -> dict:
    """Per method and seed: best, tokens, tokens to within each x% of the grid's best."""
    targets = {x: grid.best * (1 + x / 100) for x in within}
    rows = [{"method": "grid", "seed": None, **run_row(grid, {x: grid.tokens for x in within})}]
    for run in runs:
        rows.append({"method": run.method, "seed": run.seed,
                     **run_row(run, {x: run.tokens_to(t) for x, t in targets.items()})})
    return {"grid_best": grid.best, "grid_tokens": grid.tokens, "targets": targets, "rows": rows,
            "medians": medians(rows, grid.tokens, within)}


def run_row(run: Run, reach: dict[float, int | None]) -> dict:
    states = [t.state for t in run.trials]
    return {"best": run.best, "best_params": run.best_trial.params if run.best_trial else None,
            "tokens": run.tokens,
            "complete": states.count("complete"), "pruned": states.count("pruned"),
            "failed": states.count("failed"), "tokens_to": {str(x): v for x, v in reach.items()}}


def medians(rows: list[dict], grid_tokens: int, within: list[float]) -> dict:
    """Each searching method's median over seeds (not reached counts as infinite)."""
    out = {}
    for method in ("tpe", "random"):
        mine = [r for r in rows if r["method"] == method]
        reach = {}
        for x in within:
            spent = statistics.median_low([r["tokens_to"][str(x)] or math.inf for r in mine])
            reach[str(x)] = None if math.isinf(spent) else spent
        out[method] = {"best": statistics.median(r["best"] for r in mine),
                       "tokens": statistics.median(r["tokens"] for r in mine),
                       "tokens_to": reach,
                       "ratio_to": {x: (v / grid_tokens if v is not None else None)
                                    for x, v in reach.items()}}
    return out


def fmt_tokens(value: int | None, grid_tokens: int) -> str:
    if value is None:
        return "not reached"
    return f"{value:,} ({value / grid_tokens:.2f}x)"


def fmt_params(params: dict | None) -> str:
    if params is None:
        return "-"
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {v:.3g}" if isinstance(v, float) else
                     f"{k.rsplit('.', 1)[-1]} {v}" for k, v in params.items())


def print_figures(fig: dict, within: list[float]) -> None:
    cols = " | ".join(f"tokens to within {x:g}% (/ grid's)" for x in within)
    print(f"\n| method | seed | best validation loss | at | complete/pruned/failed | tokens "
          f"| {cols} |")
    print("|" + " --- |" * (6 + len(within)))
    for r in fig["rows"]:
        reach = " | ".join(fmt_tokens(r["tokens_to"][str(x)], fig["grid_tokens"]) for x in within)
        seed = "-" if r["seed"] is None else r["seed"]
        print(f"| {r['method']} | {seed} | {r['best']:.4f} | {fmt_params(r['best_params'])} | "
              f"{r['complete']}/{r['pruned']}/{r['failed']} | {r['tokens']:,} | {reach} |")
    for method, m in fig["medians"].items():
        reach = " | ".join(fmt_tokens(m["tokens_to"][str(x)], fig["grid_tokens"]) for x in within)
        print(f"| {method} | median | {m['best']:.4f} | | | {m['tokens']:,.0f} | {reach} |")
    ratio = fig["medians"]["tpe"]["ratio_to"].get("1.0")
    if 1.0 in within:
        verdict = ("not reached on the median seed" if ratio is None else
                   f"{ratio:.2f}x the grid's tokens: {'met' if ratio <= TARGET else 'missed'}")
        print(f"\ntarget (tpe within 1% of the grid's best on <= {TARGET}x its tokens, median "
              f"seed): {verdict}")


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 "unknown CPU")
    return f"{model}, {os.cpu_count()} cores"


def describe(setup: Setup, args: argparse.Namespace) -> None:
    plan, t = setup.plan, setup.plan.base["training"]
    space = "; ".join(f"{k} {'log ' if isinstance(d, dict) and d['log'] else ''}"
                      f"{[d['low'], d['high']] if isinstance(d, dict) else d}"
                      for k, d in plan.spec["space"].items())
    print(f"{os.path.relpath(args.config, ROOT)}: search {plan.name} on {plan.base['base_model']} / "
          f"{plan.base['dataset']}; space {space}")
    print(f"trainings: {t['max_steps']} steps of batch {t['batch_size']} x {t['max_length']} "
          f"tokens{' packed' if t.get('packing') else ''}, validation every {t['eval_steps']} "
          f"steps, training seed {plan.seed}; tpe: sampler {plan.spec['sampler']}, pruner "
          f"{plan.spec['pruner']['name']} (startup {plan.spec['pruner']['startup_trials']}), "
          f"rounds of {plan.spec['parallel']}")
    print(f"budget {args.budget} trainings per method; seeds "
          f"{', '.join(str(s) for s in seeds(plan, args.seeds))}", flush=True)


def seeds(plan: SearchPlan, n: int) -> list[int]:
    return [plan.seed + i for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start, load_start = time.perf_counter(), os.getloadavg()
    cfg, plan = load_plan(args.config, args.search, args.steps, args.eval_steps)
    setup = build_setup(args.config, cfg, plan, args.work)
    setup_s = time.perf_counter() - start
    describe(setup, args)
    trainings = Trainings(setup, args.work, args.workers)
    try:
        grid = run_grid(setup, trainings, args.budget, args.work)
        combos = [(m, s) for s in seeds(plan, args.seeds) for m in ("tpe", "random")]
        with ThreadPoolExecutor(len(combos)) as threads:
            runs = list(threads.map(
                lambda c: run_search(setup, trainings, c[0], c[1], args.budget, args.work), combos))
    finally:
        trainings.pool.shutdown()
    fig = figures(grid, runs, args.within)
    print_figures(fig, args.within)
    wall = time.perf_counter() - start
    print(f"\nmachine: {machine()}; load average {load_start[0]:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end; {wall:.0f} s wall ({setup_s:.0f} s setup); "
          f"{trainings.asked} trainings asked for, {trainings.trained} trained (the others "
          f"from the cache in {args.work / 'cache'} or shared)")
    if args.json:
        write_json(args.json, fig | {"wall_s": wall, "setup_s": setup_s, "machine": machine(),
                                     "asked": trainings.asked, "trained": trainings.trained})


if __name__ == "__main__":
    main()
