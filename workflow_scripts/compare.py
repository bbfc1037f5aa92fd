"""Ask the base model and the fine-tuned adapter the same questions, side by side.

    python -m workflow_scripts.compare --experiment rank-study-r8 --questions questions.txt --out answers.json
    python -m workflow_scripts.compare --experiment rank-study-r8          # interactive prompt loop

Questions files: plain text (one question per line), a JSON list of strings, or JSON Lines
with a `question` (or `instruction`) field. The base answer comes from the same loaded
model with the adapter switched off, so one copy of the weights serves both.

`--tools tools.json` (a JSON list of function schemas, OpenAI's shape or bare
{name, description, parameters}) shows both models those functions, as a tool-calling
dataset's `tools` column does; each answer then also gives the calls read back from it
(`base_calls`, `fine_tuned_calls`: a list of {name, arguments}, or null when the answer
holds no call that parses).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Iterable, TextIO

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import write_json

DEFAULT_SETTINGS = {"max_new_tokens": 128, "do_sample": False, "temperature": 1.0,
                    "top_p": 1.0, "batch_size": 8, "max_length": 1024}


def read_questions(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        questions = json.loads(text)
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        questions = [r.get("question", r.get("instruction")) for r in rows]
    else:
        questions = [line.strip() for line in text.splitlines() if line.strip()]
    bad = [i for i, q in enumerate(questions) if not isinstance(q, str) or not q.strip()]
    if bad:
        raise SystemExit(f"{path}: entry {bad[0]} is not a non-empty question string")
    return questions


class SideBySide:
    """A base model with one adapter, answering as base or as fine-tuned on demand."""

    def __init__(self, model_dir: str, adapter_dir: str, settings: dict, seed: int = 42,
                 trust_remote_code: bool = False, quantization: str | None = None):
        from workflow_scripts.evaluation.generation import load_for_eval

        self.model, self.tokenizer = load_for_eval(model_dir, adapter_dir, trust_remote_code,
                                                   quantization)
        self.settings, self.seed = settings, seed

    def answer(self, questions: list[str], tools: list[dict] | None = None) -> list[dict]:
        from workflow_scripts.evaluation.generation import generate

        prompts = [[{"role": "user", "content": q}] for q in questions]
        shown = [tools] * len(prompts) if tools else None
        tuned, _ = generate(self.model, self.tokenizer, prompts, self.settings, self.seed,
                            tools=shown)
        with self.model.disable_adapter():
            base, _ = generate(self.model, self.tokenizer, prompts, self.settings, self.seed,
                               tools=shown)
        rows = [{"question": q, "base": b.text, "fine_tuned": t.text}
                for q, b, t in zip(questions, base, tuned)]
        if tools:
            for row in rows:
                row["base_calls"] = self.calls(row["base"])
                row["fine_tuned_calls"] = self.calls(row["fine_tuned"])
        return rows

    def calls(self, text: str) -> list[dict] | None:
        """The function calls in an answer, in the template's call format."""
        from workflow_scripts.evaluation.tool_calls import call_format, parse_tool_calls

        calls = parse_tool_calls(text, call_format(self.tokenizer.chat_template))
        return None if calls is None else [c._asdict() for c in calls]


def read_tools(path: Path) -> list[dict]:
    """Function schemas from a JSON file, in the chat template's shape."""
    from workflow_scripts.data.formats import RecordError, parse_tools

    try:
        tools = parse_tools(json.loads(path.read_text(encoding="utf-8")), "tools")
    except (json.JSONDecodeError, RecordError) as err:
        raise SystemExit(f"{path}: {err}") from None
    if not tools:
        raise SystemExit(f"{path}: no function schema in the file")
    return tools


def interactive(answer: Callable[[list[str]], list[dict]], lines: Iterable[str], out: TextIO) -> None:
    """Read questions line by line until EOF or an empty line; print both answers (and
    the calls read from them, when tools are shown)."""
    out.write("question> ")
    out.flush()
    for line in lines:
        question = line.strip()
        if not question:
            break
        row = answer([question])[0]
        out.write(f"base:       {row['base']}\nfine-tuned: {row['fine_tuned']}\n")
        if "base_calls" in row:
            out.write(f"base calls:       {json.dumps(row['base_calls'], ensure_ascii=False)}\n"
                      f"fine-tuned calls: {json.dumps(row['fine_tuned_calls'], ensure_ascii=False)}\n")
        out.write("question> ")
        out.flush()
    out.write("\n")


def experiment_paths(experiment: str, results: Path) -> tuple[str, str, dict, str | None]:
    """Model dir, adapter dir, base model config and quantization of a finished experiment
    (a QLoRA adapter answers on its 4-bit base, as it was trained and evaluated)."""
    from workflow_scripts.models.loading import resolve_model_dir

    adapter_dir = results / "adapters" / experiment
    info_path = adapter_dir / "run_info.json"
    if not info_path.exists():
        raise SystemExit(f"{info_path}: no trained adapter for experiment {experiment!r}")
    job = json.loads(info_path.read_text(encoding="utf-8"))["config"]
    spec = job["base_model"]
    model_dir = resolve_model_dir(job["experiment"]["base_model"], spec, str(results / "models"))
    quantization = "4bit" if job["experiment"]["method"] == "qlora" else None
    return model_dir, str(adapter_dir), spec, quantization


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--experiment", help="a trained experiment in --results")
    parser.add_argument("--model-dir", help="base model directory (instead of --experiment)")
    parser.add_argument("--adapter-dir", help="adapter directory (instead of --experiment)")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="the workflow's results directory, where --experiment is looked up")
    parser.add_argument("--questions", type=Path, help="questions file; omit for a prompt loop")
    parser.add_argument("--out", type=Path, help="where batch mode writes its JSON")
    parser.add_argument("--tools", type=Path, help="JSON list of function schemas to show both models")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_SETTINGS["max_new_tokens"],
                        help="the longest answer, in tokens")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed for sampled decoding (greedy answers do not depend on it)")
    args = parser.parse_args(argv)
    trust, quantization = False, None
    if args.experiment:
        model_dir, adapter_dir, spec, quantization = experiment_paths(args.experiment, args.results)
        trust = spec.get("trust_remote_code", False)
    elif args.model_dir and args.adapter_dir:
        model_dir, adapter_dir = args.model_dir, args.adapter_dir
    else:
        parser.error("give --experiment, or both --model-dir and --adapter-dir")
    settings = {**DEFAULT_SETTINGS, "max_new_tokens": args.max_new_tokens}
    tools = read_tools(args.tools) if args.tools else None
    pair = SideBySide(model_dir, adapter_dir, settings, args.seed, trust, quantization)
    if args.questions is None:
        interactive(lambda questions: pair.answer(questions, tools), sys.stdin, sys.stdout)
        return
    rows = pair.answer(read_questions(args.questions), tools)
    if args.out:
        write_json(args.out, {"model_dir": model_dir, "adapter_dir": adapter_dir, "answers": rows})
    else:
        print(json.dumps(rows, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
