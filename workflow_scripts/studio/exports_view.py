"""What the studio shows of an experiment's exports (results/exports/{experiment}/, written by
the export stage): each file with its check, and the command that runs it in llama.cpp,
Ollama or vLLM (docs/export.md)."""
from __future__ import annotations

import json
import shlex
from pathlib import Path


def _check(folder: Path, target: str) -> dict | None:
    path = folder / "checks" / f"{target}.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    return {k: result.get(k) for k in ("agreement", "tokens_compared", "loss_difference", "verdict")}


def _gguf_rows(name: str, base_model: str, folder: Path, workdir: Path) -> list[dict]:
    rows = []
    for path in sorted((folder / "gguf").glob(f"{name}-*.gguf")):
        target = path.stem.removeprefix(f"{name}-")
        rel = str(path.relative_to(workdir))
        if target == "lora-f16":
            base = f"results/exports/base/{base_model}/{base_model}-f16.gguf"
            command = f"llama-cli -m {shlex.quote(base)} --lora {shlex.quote(rel)} -cnv"
            target = "lora"
        else:
            command = f"llama-cli -m {shlex.quote(rel)} -cnv"
        rows.append({"target": target, "file": rel, "size_bytes": path.stat().st_size,
                     "run": command, "check": _check(folder, target)})
    modelfile = folder / "gguf" / "Modelfile"
    if modelfile.is_file():
        rel = str(modelfile.relative_to(workdir))
        rows.append({"target": "ollama", "file": rel, "size_bytes": modelfile.stat().st_size,
                     "run": f"cd {shlex.quote(str(modelfile.parent.relative_to(workdir)))} && "
                            f"ollama create {shlex.quote(name)} -f Modelfile && "
                            f"ollama run {shlex.quote(name)}", "check": None})
    return rows


def exports_view(workdir: Path, name: str, base_model: str) -> list[dict]:
    """One row per exported file of experiment `name`: target, file, size, run, check."""
    folder = workdir / "results" / "exports" / name
    rows = []
    merged = folder / "merged"
    if (merged / "config.json").is_file():
        rows.append({"target": "merged", "file": str(merged.relative_to(workdir)),
                     "size_bytes": sum(p.stat().st_size for p in merged.iterdir() if p.is_file()),
                     "run": f"vllm serve {shlex.quote(str(merged.relative_to(workdir)))}",
                     "check": None})
    rows += _gguf_rows(name, base_model, folder, workdir)
    serve = folder / "vllm" / "serve.sh"
    if serve.is_file():
        rows.append({"target": "vllm", "file": str(serve.relative_to(workdir)),
                     "size_bytes": serve.stat().st_size,
                     "run": serve.read_text(encoding="utf-8").splitlines()[-1],
                     "check": {"verdict": "pass"}})
    return rows
