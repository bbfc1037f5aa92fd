"""How numbers look in the report: cells, intervals, signed differences, verdict words."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

NA = "n/a"


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str = ""


def missing(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)) or (
        not isinstance(value, (str, bool)) and pd.isna(value))


def fmt(value, digits: int = 4) -> str:
    """A cell: "n/a" for missing, whole numbers without decimals, else `digits` significant."""
    if missing(value):
        return NA
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.{digits}g}"


def fmt_signed(value, digits: int = 3) -> str:
    """+0.0123, -1.5e-04, and 0 without a sign."""
    if missing(value):
        return NA
    if value == 0:
        return "0"
    return f"{value:+.{digits}g}" if abs(value) >= 1e-3 else f"{value:+.2e}"


def fmt_ci(value, low, high, digits: int = 4) -> str:
    """"2.241 [2.169, 2.315]", or the value alone without an interval."""
    if missing(low) or missing(high):
        return fmt(value, digits)
    return f"{fmt(value, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


def fmt_diff(value, low, high) -> str:
    """A signed difference with its interval: "+0.0016 [-0.0055, +0.0071]"."""
    if missing(value):
        return NA
    if missing(low) or missing(high):
        return fmt_signed(value)
    return f"{fmt_signed(value)} [{fmt_signed(low)}, {fmt_signed(high)}]"


def ci(row, column: str) -> str:
    """`column` of a table row with its `_low`/`_high` interval."""
    return fmt_ci(row.get(column), row.get(f"{column}_low"), row.get(f"{column}_high"))


def diff(row) -> str:
    """A table row's paired difference with its interval."""
    return fmt_diff(row.get("difference"), row.get("difference_low"), row.get("difference_high"))


def fmt_pct(value) -> str:
    """"+12.3%", with two decimals below 1% so that a small change does not read -0.0%."""
    if missing(value):
        return ""
    return f"{value:+.1f}%" if abs(value) >= 1 else f"{value:+.2f}%"


def fmt_share(value) -> str:
    return NA if missing(value) else f"{100 * value:.0f}%"


def names(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
