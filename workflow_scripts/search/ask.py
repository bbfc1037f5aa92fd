"""Ask a search's study for one round of trials and write the round file: each trial's
experiment name, its settings and the rules that stop it early (search/pruning.py)."""
from __future__ import annotations

import json
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import write_json
from workflow_scripts.search.study import ask_round


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--config", required=True, help="the round's job (SearchPlan.ask_job) as JSON")
    parser.add_argument("--out", required=True, type=Path, help="the round file to write")
    args = parser.parse_args(argv)
    job = json.loads(args.config)
    trials = ask_round(job)
    write_json(args.out, {"search": job["search"], "key": job["key"], "round": job["round"],
                          "trials": trials})
    for trial in trials:
        print(trial["name"], json.dumps(trial["params"], sort_keys=True))


if __name__ == "__main__":
    main()
