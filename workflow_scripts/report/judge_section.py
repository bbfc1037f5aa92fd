"""The report's judge table, from results/metrics/judge.tsv (report/judge_table.py)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from workflow_scripts.report.formatting import NA, Table, fmt, fmt_ci, diff, missing

LABELS = {"win_rate": "win rate (fine-tuned)", "relevance": "对话相关性 relevance",
          "fluency": "中文流畅度 fluency", "instruction_following": "指令跟随度 instruction following"}


def judge_table(table: pd.DataFrame) -> Table:
    out = Table(["experiment", "criterion", "base [95% CI]", "fine-tuned [95% CI]",
                 "difference [95% CI]", "verdict", "prompts", "unparseable", "refused",
                 "same winner in both orders"])
    for row in table.to_dict("records"):
        verdict = row.get("verdict")
        out.rows.append([
            row["experiment"], LABELS.get(row["criterion"], row["criterion"]),
            fmt_ci(row.get("base"), row.get("base_low"), row.get("base_high")),
            fmt_ci(row.get("finetuned"), row.get("finetuned_low"), row.get("finetuned_high")),
            diff(row), verdict if isinstance(verdict, str) else NA, fmt(row.get("n")),
            f"{fmt(row.get('unparseable'))} of {fmt(row.get('judgments'))}",
            f"{fmt(row.get('refused', 0))} of {fmt(row.get('judgments'))}",
            NA if missing(row.get("position_agreement"))
            else f"{100 * row['position_agreement']:.0f}%"])
    return out


def judge_frame(metrics_dir: Path) -> pd.DataFrame | None:
    """judge.tsv, or None without a judge."""
    path = metrics_dir / "judge.tsv"
    return pd.read_csv(path, sep="\t") if path.is_file() else None


def judge_context(metrics_dir: Path) -> dict:
    """{"judge": Table, "judge_model": name}; an empty table without judge.tsv."""
    table = judge_frame(metrics_dir)
    if table is None:
        return {"judge": Table([]), "judge_model": ""}
    model = str(table["judge_model"].iloc[0]) if not table.empty else ""
    return {"judge": judge_table(table), "judge_model": model}
