"""What a configured search asks for: its study key, rounds, trial names and file paths.

Imported while Snakemake builds the DAG (rules/search.smk), so it stays light: no optuna.

A search's trials are experiments named `<search>-t<k>` (common/config.py adds them at the
search's starting point); round r asks for trials r*parallel .. (r+1)*parallel-1, and its
round file (results/search/<search>/<key>/round-<r>.json) holds their settings. The key is a
hash of everything that decides which trials are proposed and what they score, except the
number of trials: raising `trials` continues the same study, changing the space, the
objective or the starting point starts a new one beside the old.
"""
from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from workflow_scripts.common.config import (SCHEMA_PATH, ConfigError, deep_merge,
                                            load_schema, search_trial_names)
from workflow_scripts.common.io_utils import canonical_json, read_json

SEARCH_DEFAULTS = {
    "objective": {"metric": "eval_loss", "direction": "minimize"},
    "parallel": 1,
    "sampler": {"name": "tpe", "startup_trials": 4},
    "pruner": {"name": "median", "startup_trials": 2, "warmup_steps": 0, "min_steps": 1,
               "reduction_factor": 3},
    "enqueue": [],
}
# Settings of a trial's experiment that never go into the key: they decide where and how
# fast it runs, not what it computes.
UNKEYED = ("resources",)


@dataclass(frozen=True)
class SearchPlan:
    name: str
    spec: dict  # the search's config with defaults filled
    base: dict  # the resolved experiment every trial starts from
    seed: int

    @property
    def key(self) -> str:
        keyed = {k: v for k, v in self.spec.items() if k not in ("trials", "storage")}
        base = {k: v for k, v in self.base.items() if k not in UNKEYED}
        text = canonical_json({"search": keyed, "base": base, "seed": self.seed})
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def trials(self) -> list[str]:
        return search_trial_names(self.name, self.spec)

    @property
    def rounds(self) -> int:
        return math.ceil(self.spec["trials"] / self.spec["parallel"])

    @property
    def directory(self) -> str:
        return f"results/search/{self.name}/{self.key}"

    @property
    def storage(self) -> str:
        return self.spec.get("storage") or f"sqlite:///results/search/{self.name}/study.db"

    def round_of(self, trial: str) -> int:
        return self.trials.index(trial) // self.spec["parallel"]

    def round_trials(self, round_: int) -> list[str]:
        """The round's trials that train: its members up to `trials`."""
        trained = set(self.trials)
        return [name for name in self.round_members(round_) if name in trained]

    def round_members(self, round_: int) -> list[str]:
        """Every trial the round asks for: `parallel` of them, even where `trials` ends
        inside the round, so that raising `trials` leaves the round file as it is and trains
        only the new trials, with the settings a run with the higher count would give them."""
        size = self.spec["parallel"]
        return [f"{self.name}-t{k}" for k in range(round_ * size, (round_ + 1) * size)]

    def round_file(self, round_: int) -> str:
        return f"{self.directory}/round-{round_}.json"

    def told_file(self, round_: int) -> str:
        return f"{self.directory}/told-{round_}.json"

    def ask_job(self, round_: int) -> dict:
        """Everything `search.ask` needs for one round (the job's params): independent of
        `trials`, so raising it does not ask a round again."""
        return {"search": self.name, "key": self.key, "study": f"{self.name}-{self.key}",
                "storage": self.storage, "round": round_, "seed": self.seed,
                "trials": self.round_members(round_),
                "first_trial": round_ * self.spec["parallel"],
                **{k: self.spec[k] for k in ("space", "objective", "sampler", "pruner",
                                             "enqueue")}}

    def tell_job(self, round_: int) -> dict:
        """What `search.tell` needs for one round: the ask job, with the trials that train."""
        return self.ask_job(round_) | {"trials": self.round_trials(round_)}


def with_defaults(spec: dict) -> dict:
    out = deep_merge(SEARCH_DEFAULTS, spec)
    out["space"] = {key: with_range_defaults(dim) for key, dim in spec["space"].items()}
    return out


def with_range_defaults(dim: Any) -> Any:
    if isinstance(dim, list):
        return list(dim)
    out = {"log": False, **dim}
    if "type" not in out:
        both_int = all(isinstance(out[k], int) and not isinstance(out[k], bool)
                       for k in ("low", "high"))
        out["type"] = "int" if both_int and not isinstance(out.get("step", 1), float) else "float"
    return out


def plan_searches(config: dict, experiments: dict[str, dict], source: str = "config",
                  schema_path: Path = SCHEMA_PATH) -> dict[str, SearchPlan]:
    """One plan per configured search; refuses a space whose ends an experiment may not have."""
    plans = {}
    schema = load_schema(schema_path)
    exp_schema = {"$defs": schema["$defs"], **schema["$defs"]["experiment"]}
    for name, raw in config.get("searches", {}).items():
        spec = with_defaults(raw)
        base = experiments[search_trial_names(name, spec)[0]]
        check = ValueCheck(base, exp_schema, source)
        for key, dim in spec["space"].items():
            check_dimension(f"searches.{name}.space.{key}", key, dim, check)
        for i, point in enumerate(spec["enqueue"]):
            check_point(f"searches.{name}.enqueue[{i}]", point, spec["space"], check)
        plans[name] = SearchPlan(name, spec, base, config["seed"])
    return plans


@dataclass(frozen=True)
class ValueCheck:
    """Refuses a searched value the experiment schema would refuse, naming the key."""

    base: dict
    schema: dict
    source: str

    def __call__(self, where: str, key: str, value: Any) -> None:
        try:
            jsonschema.validate(apply_params(self.base, {key: value}), self.schema)
        except jsonschema.ValidationError as err:
            self.refuse(f"{where}: {value!r}: {err.message}")

    def refuse(self, message: str) -> None:
        raise ConfigError(f"invalid config in {self.source}: {message}")


def check_dimension(where: str, key: str, dim: Any, check: ValueCheck) -> None:
    if isinstance(dim, dict):
        if dim["low"] > dim["high"]:
            check.refuse(f"{where}: low {dim['low']} is above high {dim['high']}")
        if dim["log"] and dim["low"] <= 0:
            check.refuse(f"{where}: a log scale needs low > 0")
        values = [dim["low"], dim["high"]]
    else:
        values = dim
    for value in values:
        check(where, key, value)


def check_point(where: str, point: dict, space: dict, check: ValueCheck) -> None:
    unknown = sorted(set(point) - set(space))
    if unknown:
        check.refuse(f"{where}: {', '.join(unknown)} is not in the space "
                     f"(known: {', '.join(sorted(space))})")
    for key, value in point.items():
        check(f"{where}.{key}", key, value)


def apply_params(experiment: dict, params: dict[str, Any]) -> dict:
    """A copy of `experiment` with each dotted key set to its value."""
    out = copy.deepcopy(experiment)
    for dotted, value in params.items():
        *parents, leaf = dotted.split(".")
        target = out
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return out


def trial_params(plan: SearchPlan, trial: str, root: Path = Path(".")) -> dict | None:
    """A trial's entry in its round file ({"params", "stop", ...}); None before it is asked."""
    path = root / plan.round_file(plan.round_of(trial))
    if not path.is_file():
        return None
    return next(t for t in _read_round(path) if t["name"] == trial)


_ROUND_CACHE: dict[Path, tuple[int, list[dict]]] = {}


def _read_round(path: Path) -> list[dict]:
    """A round file's trials, read again only when the file changes (the DAG asks often)."""
    stamp = path.stat().st_mtime_ns
    cached = _ROUND_CACHE.get(path)
    if cached is None or cached[0] != stamp:
        cached = (stamp, read_json(path)["trials"])
        _ROUND_CACHE[path] = cached
    return cached[1]


class TrialExperiments(Mapping):
    """The workflow's experiments, each search trial with the settings its round file gives
    it once that round is asked (before: the search's starting point, which decides nothing
    that waits for the round: rules/search.smk makes the jobs that read a trial's settings
    wait for its round)."""

    def __init__(self, experiments: dict[str, dict], plans: dict[str, SearchPlan],
                 root: Path = Path(".")):
        self._experiments = experiments
        self._plan_of = {t: plan for plan in plans.values() for t in plan.trials}
        self._root = root  # the working directory the round files are under

    def __getitem__(self, name: str) -> dict:
        experiment = self._experiments[name]
        plan = self._plan_of.get(name)
        entry = trial_params(plan, name, self._root) if plan else None
        return apply_params(experiment, entry["params"]) if entry else experiment

    def __iter__(self):
        return iter(self._experiments)

    def __len__(self) -> int:
        return len(self._experiments)

    def plan_of(self, name: str) -> SearchPlan | None:
        return self._plan_of.get(name)
