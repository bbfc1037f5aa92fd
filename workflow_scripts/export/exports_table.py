"""results/metrics/exports.tsv: one row per checked export (a GGUF's load-back check, a vLLM
adapter's rules check), from the files under results/exports/{experiment}/."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser

COLUMNS = ["experiment", "target", "file", "size_bytes", "tokens_compared", "agreement",
           "loss_transformers", "loss_llama_cpp", "loss_difference", "verdict"]


def row(path: Path) -> dict:
    """A check file's row; the experiment is the folder under results/exports/."""
    result = json.loads(path.read_text(encoding="utf-8"))
    experiment = path.parent.parent.name
    if path.name == "vllm_check.json":
        serve = path.parent / "serve.sh"
        result = {"target": "vllm", "file": str(serve), "size_bytes": serve.stat().st_size,
                  "verdict": result["verdict"]}
    return {"experiment": experiment, **{c: result.get(c, "") for c in COLUMNS[1:]}}


def write_table(files: list[Path], out: Path) -> list[dict]:
    rows = [row(p) for p in files]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("files", nargs="*", type=Path, help="checks/*.json and vllm_check.json")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    write_table(args.files, args.out)


if __name__ == "__main__":
    main()
