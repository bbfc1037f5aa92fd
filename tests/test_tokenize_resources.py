"""The tokenization job asks for its own resources (`resources.tokenize`) or the rule's
defaults, never for a GPU training's memory or threads."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from workflow_scripts.common.config import resolve_experiments
from workflow_scripts.training.tokenize_plan import TokenizePlan

REPO = Path(__file__).resolve().parent.parent
RULE = (REPO / "rules/tokenize.smk").read_text(encoding="utf-8")


def rule_default(name: str) -> int:
    """The default the rule passes to TokenizePlan.resource for `name`."""
    return int(re.search(rf'TOKENIZE\.resource\(w\.dataset, w\.key, "{name}", (\d+)\)', RULE)[1])


def plan(resources: dict) -> tuple[TokenizePlan, tuple[str, str]]:
    config = yaml.safe_load((REPO / "tests/configs/smoke.yaml").read_text(encoding="utf-8"))
    config["defaults"]["resources"] = resources
    tokenize = TokenizePlan(resolve_experiments(config), config["base_models"])
    return tokenize, next(iter(tokenize.jobs))


def test_a_gpu_trainings_memory_and_threads_are_not_inherited():
    # docs/slurm.md's 7B example: the training job asks for 64 GB and (here) 8 threads
    tokenize, (dataset, key) = plan({"mem_mb": 64000, "runtime": 720, "threads": 8, "gpu": 4})
    asked = {name: tokenize.resource(dataset, key, name, rule_default(name))
             for name in ("mem_mb", "runtime", "threads")}
    assert asked == {name: rule_default(name) for name in asked} == {
        "mem_mb": 4000, "runtime": 60, "threads": 2}


def test_resources_tokenize_sets_the_jobs_own():
    tokenize, (dataset, key) = plan({"mem_mb": 64000, "tokenize": {"mem_mb": 12000, "threads": 6}})
    assert tokenize.resource(dataset, key, "mem_mb", 4000) == 12000
    assert tokenize.resource(dataset, key, "threads", 2) == 6


def test_slurm_page_gives_the_rules_defaults():
    row = next(line for line in (REPO / "docs/slurm.md").read_text(encoding="utf-8").splitlines()
               if line.startswith("| `tokenize_dataset` |"))
    assert f"{rule_default('mem_mb')} MB, {rule_default('runtime')} min" in row
    assert f"unset: {rule_default('threads')}" in row and "never the training's" in row
