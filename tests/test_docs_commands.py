"""Every `python -m` command shown in the README and docs/ names a module that exists, and a
workflow_scripts module's own argument parser accepts the options shown with it.

Each module runs as `__main__` (as `python -m` runs it) in one child process whose
`ArgumentParser.parse_known_args` parses the shown arguments and then stops the module, so
nothing it would do after parsing happens. Options a command leaves out are not missing
(a page may show one option of a job), a module named without options is only looked up,
and placeholders stand for values (`N` is a number)."""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>&1"}
PLACEHOLDERS = {"N": "2", "M": "2"}

CHECK = r'''
import argparse, contextlib, io, json, runpy, sys

class Parsed(Exception):
    pass

original = argparse.ArgumentParser.parse_known_args

def parse_and_stop(self, args=None, namespace=None):
    for action in self._actions:
        action.required = False
    _, extra = original(self, args, namespace)
    raise Parsed(extra)

argparse.ArgumentParser.parse_known_args = parse_and_stop
answers = []
for module, args in json.loads(sys.stdin.read()):
    sys.argv = [module, *args]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        answers.append("the module ran without parsing any arguments")
    except Parsed as parsed:
        answers.append(f"unrecognized arguments: {parsed.args[0]}" if parsed.args[0] else "")
    except SystemExit as exit:
        answers.append(err.getvalue().strip() or f"exit {exit.code}")
print(json.dumps(answers))
'''


def shown_commands() -> list[tuple[str, str, list[str]]]:
    """(page:line, module, arguments) of each `python -m` command in a fenced block line
    (with its continuation lines) or an inline code span."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        blocks = list(re.finditer(r"```\w*\n(.*?)```", text, re.S))
        spans = [(block.start(1) + m.start(), m.group(0)) for block in blocks
                 for m in re.finditer(r"^.*python3? -m (?:.*\\\n)*.*$", block.group(1), re.M)]
        prose = re.sub(r"```\w*\n.*?```", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text,
                       flags=re.S)
        spans += [(m.start(1), m.group(1))
                  for m in re.finditer(r"`([^`]*python3? -m [^`]*)`", prose)]
        for start, command in spans:
            where = f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, start) + 1}"
            found += [(where, *parsed) for parsed in parse_command(command)]
    return found


def parse_command(command: str) -> list[tuple[str, list[str]]]:
    """(module, arguments) of the command, and of a `python -m` command nested after `--`."""
    words = shlex.split(command.replace("\\\n", " "), comments=True)
    start = next(i for i, w in enumerate(words) if w == "-m" and i and "python" in words[i - 1])
    module, args = (words[start + 1:start + 2] or ["..."])[0], []
    if module.endswith("...") or "<" in module:
        return []  # `python -m ...`, `python -m workflow_scripts.<stage>.<job>`
    for word in words[start + 2:]:
        if word in SHELL_OPERATORS:
            break
        args.append(PLACEHOLDERS.get(word, word))
    nested = []
    if "--" in args and "python" in args[args.index("--"):]:
        nested = parse_command(" ".join(shlex.quote(a) for a in args[args.index("--") + 1:]))
    return [(module, [a for a in args if a != "..."]), *nested]


COMMANDS = shown_commands()


def test_the_pages_show_commands():
    modules = {module for _, module, _ in COMMANDS}
    assert {"workflow_scripts.studio", "workflow_scripts.compare",
            "workflow_scripts.launch.local_launch", "pytest"} <= modules


@pytest.mark.parametrize("where,module,args", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_module_exists(where, module, args):
    assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"


def parser_answers(commands: list[tuple[str, list[str]]]) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", CHECK], input=json.dumps(commands),
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_workflow_modules_accept_the_options_shown():
    ours = [(where, module, args) for where, module, args in COMMANDS
            if module.startswith("workflow_scripts.") and args]
    answers = parser_answers([(module, args) for _, module, args in ours])
    refused = {f"{where}: python -m {module} {' '.join(args)}": answer
               for (where, module, args), answer in zip(ours, answers) if answer}
    assert refused == {}


def test_a_wrong_option_would_be_found():
    assert parse_command("STUDIO_TOKEN=... python -m workflow_scripts.studio --port N \\\n"
                         "    --host 0.0.0.0  # a comment") == [
        ("workflow_scripts.studio", ["--port", "2", "--host", "0.0.0.0"])]
    answers = parser_answers([("workflow_scripts.compare", ["--experiment", "x", "--nope"]),
                              ("workflow_scripts.launch.local_launch", ["--nproc", "two"]),
                              ("workflow_scripts.launch.local_launch", ["--nproc", "2"])])
    assert "unrecognized arguments: ['--nope']" in answers[0]
    assert "invalid int value: 'two'" in answers[1]
    assert answers[2] == ""
