"""The README's architecture block names every rule file, every stage package and every
module a rule runs; its import chain, and docs/architecture.md's account of what tracking
imports, match the code."""
from __future__ import annotations

import re
from pathlib import Path

from test_architecture import LAYERS, import_graph, layer_of

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def architecture_block() -> str:
    section = README.split("\n## Architecture\n", 1)[1]
    return section.split("```\n", 1)[1].split("```", 1)[0]


def block_entries(block: str) -> dict[str, str]:
    """Each entry of the block (`rules/`, `  data/`, ...) with its continuation lines."""
    entries: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        if line.strip() and len(line) - len(line.lstrip()) <= 2:
            name, _, rest = line.strip().partition(" ")
            name = name.rstrip(",")
            entries[name] = rest
        elif name:
            entries[name] += " " + line.strip()
    return entries


def test_block_names_every_rule_file():
    rules = block_entries(architecture_block())["rules/"]
    named = set(re.findall(r"\b(\w+)(?:\.smk)?\b", rules))
    files = {p.stem for p in (ROOT / "rules").glob("*.smk")}
    assert len(files) >= 8
    assert files - named == set(), "README.md's architecture block: a rule file is not named"


def test_block_names_every_stage_package():
    entries = block_entries(architecture_block())
    packages = {p.parent.name for p in (ROOT / "workflow_scripts").glob("*/__init__.py")}
    assert {"tracking", "training", "studio"} <= packages
    missing = {f"{p}/" for p in packages} - set(entries)
    assert missing == set(), f"README.md's architecture block does not name {sorted(missing)}"


def test_block_names_every_module_a_rule_runs():
    entries = block_entries(architecture_block())
    rules = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "rules").glob("*.smk"))
    run = set(re.findall(r"-m workflow_scripts\.(\w+)\.(\w+)", rules))
    assert ("training", "tokenize_dataset") in run
    missing = [f"{package}.{module}" for package, module in sorted(run)
               if package != "launch" and module not in entries.get(f"{package}/", "")]
    assert missing == []


def test_import_chain_names_every_layer():
    chain = README.split("Imports run one way:", 1)[1].split(";", 1)[0]
    assert [layer for layer in LAYERS if layer not in chain] == []


def test_architecture_page_says_what_tracking_imports():
    said = (ROOT / "docs/architecture.md").read_text(encoding="utf-8").split(
        "**Tracking on top.**", 1)[1].split("\n- ", 1)[0]
    named = set(re.findall(r"imports only `(\w+)`(?: and, [^`]*`([\w.]+)`)?", said)[0]) - {""}
    imported = {".".join(target.split(".")[1:3]) if layer_of(target) != "common" else "common"
                for module, targets in import_graph().items() if layer_of(module) == "tracking"
                for target in targets if layer_of(target) != "tracking"}
    assert named == imported
