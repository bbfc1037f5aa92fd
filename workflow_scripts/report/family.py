"""One family of comparisons per run, with the family-wise error kept by Holm's procedure.

Every row of the comparison tables that carries a paired-bootstrap p-value (fine-tuned
against base on each metric, ranking runner-ups against the first, 4-bit against
unquantized, and any table a stage adds) is one test of "no difference". Holm's step-down
adjustment over all of them keeps the chance of even one false better/worse claim in the
whole run at 5%: a verdict stays "better", "worse", "higher" or "lower" only where its
interval excludes zero and its adjusted p-value (`p_holm`) is below 5%; otherwise it becomes
"no clear difference" (docs/metrics.md).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.bootstrap import FAMILY_ALPHA, UNCLEAR, holm

P_VALUE, P_HOLM = "p_value", "p_holm"


def control(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables with `p_holm` filled in over the p-values of all of them together, and
    verdicts that Holm does not support turned into "no clear difference"."""
    p_values = [pd.to_numeric(t[P_VALUE], errors="coerce").to_numpy(dtype=float)
                if P_VALUE in t else np.array([]) for t in tables.values()]
    adjusted = holm(np.concatenate(p_values)) if p_values else np.array([])
    out, start = {}, 0
    for (name, table), p in zip(tables.items(), p_values):
        table = table.copy()
        # a table whose verdicts are all empty (nothing compared yet) reads as float: make
        # the column hold words whatever was inferred, so a verdict can always be written
        table["verdict"] = verdicts(table)
        if P_VALUE in table:
            table[P_HOLM] = adjusted[start:start + p.size]
            start += p.size
            claimed = table["verdict"].notna() & (table["verdict"] != UNCLEAR)
            rejected = table[P_HOLM] < FAMILY_ALPHA
            table.loc[claimed & ~rejected & table[P_HOLM].notna(), "verdict"] = UNCLEAR
        out[name] = table
    return out


def verdicts(table: pd.DataFrame) -> pd.Series:
    """The table's `verdict` column as words (object dtype), empty cells kept empty."""
    column = table["verdict"] if "verdict" in table else pd.Series(index=table.index)
    return column.astype(object).where(column.notna(), None)


def family_size(tables: list[pd.DataFrame]) -> int:
    """How many comparisons the family holds: rows with an adjusted p-value."""
    return int(sum(t[P_HOLM].notna().sum() for t in tables if P_HOLM in t))
