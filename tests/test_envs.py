"""The pinned lock, the conda environment of the jobs and pyproject.toml agree."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "envs" / "requirements.lock"
CONDA_ENV = REPO / "envs" / "workflow.yaml"
PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)")


def pins(lines: list[str], where: str) -> dict[str, str]:
    """Normalized name -> version; every entry must be an exact `name==version` pin."""
    found: dict[str, str] = {}
    for line in lines:
        match = PIN.fullmatch(line.strip())
        assert match, f"{where}: not an exact pin: {line!r}"
        name = canonicalize_name(match["name"])
        assert name not in found, f"{where}: {name} pinned twice"
        found[name] = match["version"]
    return found


def lock_pins() -> dict[str, str]:
    lines = [ln for ln in LOCK.read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    return pins(lines, LOCK.name)


def conda_env() -> tuple[list[str], list[str]]:
    """(conda dependencies, pip entries) of envs/workflow.yaml."""
    deps = yaml.safe_load(CONDA_ENV.read_text(encoding="utf-8"))["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict)]
    assert len(pip_sections) == 1, "expected exactly one pip: section"
    return conda, pip_sections[0]


def test_conda_env_has_python_311_and_pip_only():
    conda, _ = conda_env()
    assert sorted(conda) == ["pip", "python=3.11"]


def test_conda_env_pins_exactly_the_lock():
    _, pip_entries = conda_env()
    in_env, in_lock = pins(pip_entries, CONDA_ENV.name), lock_pins()
    assert sorted(set(in_env) - set(in_lock)) == [], "pinned in workflow.yaml, not in the lock"
    assert sorted(set(in_lock) - set(in_env)) == [], "pinned in the lock, not in workflow.yaml"
    differ = {n: (in_lock[n], in_env[n]) for n in in_lock if in_lock[n] != in_env[n]}
    assert differ == {}, "lock version != workflow.yaml version"


@pytest.mark.parametrize("source", ["lock", "conda"])
def test_torch_is_pinned_to_2_13_0(source):
    found = lock_pins() if source == "lock" else pins(conda_env()[1], CONDA_ENV.name)
    assert found["torch"] == "2.13.0"


def test_direct_dependencies_are_locked_within_their_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    locked = lock_pins()
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in locked, f"direct dependency {req.name} is not in {LOCK.name}"
        assert req.specifier.contains(Version(locked[name]), prereleases=True), (
            f"{LOCK.name} pins {name}=={locked[name]}, outside pyproject's {spec!r}")
