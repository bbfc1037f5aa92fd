"""The summary at the top of the report: every sentence is generated from the metric tables.

Claims follow docs/metrics.md: "best" only where the paired loss interval against every
runner-up excludes zero; a difference from the base only where its paired interval excludes
zero; and either only where it survives Holm's correction over every comparison of the run
(report/family.py: the comparison, ranking, quantization, general-text, benchmark, preference
and judge tables); everything else is called "no clear difference", or "too few items" below
MIN_ITEMS paired items.
"""
from __future__ import annotations

import pandas as pd

from workflow_scripts.evaluation.bootstrap import BETTER, MIN_ITEMS, TOO_FEW, UNCLEAR, WORSE
from workflow_scripts.report.family import P_HOLM, family_size
from workflow_scripts.report.formatting import ci, diff, fmt, names

HEADLINE_METRICS = {"loss": "test loss", "bleu4": "BLEU-4", "rougeL": "ROUGE-L"}
METHOD_NAMES = {"lora": "LoRA", "qlora": "QLoRA", "dora": "DoRA"}
TREND_SHARE = 0.2  # the loss trend compares the last 20% of logged steps with the 20% before
# what each table of the family compares, in the order the summary names them
FAMILY_PARTS = {"comparison": "each fine-tuned model against its base per metric",
                "ranking": "runner-ups against the lowest test loss",
                "quantization": "4-bit against unquantized bases",
                "general_text": "general-text losses against the base's",
                "benchmarks": "benchmark accuracies against the base's",
                "search_vs_grid": "searches' best trials against the sweeps' best points",
                "preference": "preference experiments against their starting points",
                "judge": "the judge's win rates and scores"}


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def what_was_run(experiments: pd.DataFrame) -> str:
    methods = experiments["method"].value_counts().sort_index()
    counts = names([f"{n} {METHOD_NAMES.get(m, m)}" for m, n in methods.items()])
    samples = sorted({int(v) for v in experiments["n_samples"].dropna()})
    records = sorted({int(v) for v in experiments["n_records"].dropna()})
    return (f"{plural(len(experiments), 'fine-tuning experiment')} ({counts}) of "
            f"{plural(experiments['base_model'].nunique(), 'base model')} on "
            f"{plural(experiments['dataset'].nunique(), 'dataset')}, each scored on "
            f"{names([str(r) for r in records]) or 'n/a'} test records (loss) and "
            f"{names([str(s) for s in samples]) or 'n/a'} generated answers (text metrics). "
            "Intervals are 95% bootstrap intervals; a difference is claimed only where at "
            f"least {MIN_ITEMS} items were paired, its paired interval excludes zero and "
            "Holm's correction over all comparisons keeps it.")


def family_sentence(tables: dict[str, pd.DataFrame]) -> str | None:
    """How many comparisons the run made (every table of the one family, by name), how many
    better/worse claims survived Holm, and how many had too few items to be tested."""
    tested = {name: t for name, t in tables.items() if P_HOLM in t and t[P_HOLM].notna().any()}
    n = family_size(list(tables.values()))
    few = sum(int((t["verdict"] == TOO_FEW).sum()) for t in tables.values() if "verdict" in t)
    untested = (f"{plural(few, 'comparison')} paired fewer than {MIN_ITEMS} items and "
                "claim nothing") if few else ""
    if not n:
        return f"No difference is tested: {untested}." if few else None
    claims = sum(int((t[P_HOLM].notna() & t["verdict"].isin([BETTER, WORSE])).sum())
                 for t in tested.values())
    parts = [text for name, text in FAMILY_PARTS.items() if name in tested]
    parts += sorted(name for name in tested if name not in FAMILY_PARTS)
    return (f"This report makes {plural(n, 'paired comparison')} ({'; '.join(parts)}); "
            f"{plural(claims, 'better/worse claim')} remain after Holm's correction, which "
            "keeps the chance of any false claim among all of them at 5%"
            + (f"; {untested}" if few else "") + ".")


def best_sentence(group: pd.DataFrame) -> str:
    """The best experiment of one (dataset, base model) ranking, as far as the data allow."""
    first = group.iloc[0]
    head = (f"On {first['dataset']} with {first['base_model']}, the lowest test loss is "
            f"{first['experiment']}'s, {ci(first, 'test_loss')}")
    rest = group.iloc[1:]
    if rest.empty:
        return head + " (the only experiment)."
    ties = rest[rest["verdict"] != WORSE]
    if ties.empty:
        others = (f"{rest.iloc[0]['experiment']}'s" if len(rest) == 1
                  else f"each of the other {len(rest)}")
        return f"{head}: it is the best, clearly lower than {others}."
    gaps = [f"{r['experiment']} ({diff(r)})" for _, r in ties.iterrows()]
    clear = len(rest) - len(ties)
    tail = f"; it is clearly lower than the other {clear}" if clear else ""
    return f"{head}, but it cannot be told apart from {names(gaps)}{tail}."


def gain_sentence(experiment: str, comparison: pd.DataFrame) -> str:
    """The best experiment's change against its base, metric by metric."""
    rows = comparison[comparison["experiment"] == experiment].set_index("metric")
    parts = []
    for metric, label in HEADLINE_METRICS.items():
        if metric not in rows.index:
            continue
        r = rows.loc[metric]
        parts.append(f"{label} {fmt(r['base'])} → {fmt(r['finetuned'])}, {diff(r)} "
                     f"({r['verdict'] if isinstance(r['verdict'], str) else 'n/a'})")
    return f"Against its base model, {experiment}: " + "; ".join(parts) + "." if parts else ""


def best_per_group(ranking: pd.DataFrame, comparison: pd.DataFrame) -> list[str]:
    lines = []
    for _, group in ranking.groupby(["dataset", "base_model"], sort=True):
        group = group.sort_values("position")
        lines.append(best_sentence(group))
        gain = gain_sentence(group.iloc[0]["experiment"], comparison)
        if gain:
            lines.append(gain)
    return lines


def verdict_counts(comparison: pd.DataFrame) -> list[str]:
    """Per headline metric: how many fine-tuned models differ clearly from their base."""
    lines = []
    for metric, label in HEADLINE_METRICS.items():
        rows = comparison[(comparison["metric"] == metric) & comparison["verdict"].notna()]
        if rows.empty:
            continue
        by = {v: sorted(rows.loc[rows["verdict"] == v, "experiment"])
              for v in (BETTER, WORSE, UNCLEAR, TOO_FEW)}
        parts = [f"{label}: better than the base in {len(by[BETTER])} of {len(rows)} experiments"]
        if by[WORSE]:
            parts.append(f"worse in {len(by[WORSE])} ({names(by[WORSE])})")
        if by[UNCLEAR]:
            noise = by[UNCLEAR]
            parts.append(f"no clear difference (noise) in {len(noise)} ({names(noise)})")
        if by[TOO_FEW]:
            parts.append(f"not measurable with fewer than {MIN_ITEMS} paired items in "
                         f"{len(by[TOO_FEW])} ({names(by[TOO_FEW])})")
        lines.append(", ".join(parts) + ".")
    return lines


def loss_trend(log: pd.DataFrame, name: str) -> tuple[float, float] | None:
    """Mean logged training loss over the 20% of logged steps before the last 20%, and over
    the last 20%; None for fewer than ten logged losses."""
    losses = log[(log["experiment"] == name)]["loss"].dropna().astype(float)
    k = int(len(losses) * TREND_SHARE)
    if k < 2:
        return None
    return float(losses.iloc[-2 * k:-k].mean()), float(losses.iloc[-k:].mean())


def trend_sentence(experiments: pd.DataFrame, log: pd.DataFrame) -> str | None:
    """The end of each training loss curve, described and not tested: consecutive logged
    losses are autocorrelated (one model, a drifting learning rate, overlapping windows), so
    resampling them as independent values would claim trends that are noise, and the few
    values of a short log leave no valid test of a trend. The validation loss and the
    test-set comparisons carry the claims."""
    parts = []
    for name in experiments["experiment"]:
        trend = loss_trend(log, name) if not log.empty else None
        if trend:
            parts.append(f"{name} {fmt(trend[0])} → {fmt(trend[1])}")
    if not parts:
        return None
    return ("Training loss, mean of the last 20% of logged steps against the 20% before "
            "(described, not tested: logged losses are autocorrelated): " + "; ".join(parts)
            + ".")


def quantization_sentence(quantization: pd.DataFrame) -> str | None:
    rows = quantization[quantization["metric"] == "loss"].drop_duplicates("unquantized_eval")
    if rows.empty:
        return None
    parts = [f"{r['dataset']}/{r['base_model']} test loss {fmt(r['unquantized'])} → "
             f"{fmt(r['quantized'])}, {diff(r)} ({r['verdict']})"
             for _, r in rows.iterrows()]
    return "Loading the base model in 4 bits (QLoRA) changes its own " + "; ".join(parts) + "."


def summary(experiments: pd.DataFrame, comparison: pd.DataFrame, ranking: pd.DataFrame,
            quantization: pd.DataFrame, log: pd.DataFrame,
            others: dict[str, pd.DataFrame] | None = None) -> dict:
    """{"run": sentence, "best": [sentences], "findings": [sentences]}; `others` are the
    family's other tables by name (general_text, benchmarks, judge: those the run has)."""
    if experiments.empty:
        return {"run": "No experiment is configured.", "best": [], "findings": []}
    family = {"comparison": comparison, "ranking": ranking, "quantization": quantization,
              **(others or {})}
    findings = [s for s in [family_sentence(family)] if s]
    findings += verdict_counts(comparison) if not comparison.empty else []
    findings += [s for s in (quantization_sentence(quantization) if not quantization.empty
                             else None, trend_sentence(experiments, log)) if s]
    return {"run": what_was_run(experiments),
            "best": best_per_group(ranking, comparison) if not ranking.empty else [],
            "findings": findings}
