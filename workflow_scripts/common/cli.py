"""One shape for every command-line entry: the module's docstring as the description, kept
as written, and each option's default shown after its help."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Docstring layout kept; `(default: ...)` after every option that has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def parser(doc: str | None, **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser described by a module docstring."""
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter, **kwargs)
