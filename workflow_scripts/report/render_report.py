"""Render the training report (Markdown and self-contained HTML) from the run's files.

    python -m workflow_scripts.report.render_report --metrics-dir results/metrics --results results \\
        --templates reports/templates --config results/metrics/config.json --out-dir results/report

The answer comes first: a summary generated from the metric tables (what was run, the best
experiment per dataset and base model with its gain over the base, which differences are
real and which are noise, whether losses still fall), then the evidence: results, studies,
training, data, samples, every metric, environment. Every number comes from
results/metrics/*.tsv, the data stage's files, run_info.json and predictions.jsonl; the plots
are drawn into OUT_DIR/plots first. Whatever is missing shows as "n/a".
"""
from __future__ import annotations

import base64
from pathlib import Path

import jinja2
import pandas as pd

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import read_json, write_json
from workflow_scripts.report import sections
from workflow_scripts.report.general_tables import report_tables as general_tables
from workflow_scripts.report.formatting import Table, fmt
from workflow_scripts.report.exports_section import exports_table
from workflow_scripts.report.judge_section import judge_context, judge_frame
from workflow_scripts.report.plots import draw_all
from workflow_scripts.report.preference_section import preference_section
from workflow_scripts.report.search_section import search_sections
from workflow_scripts.report.studies import HYPERPARAMETERS, METHOD, RANK
from workflow_scripts.report.summary import summary
from workflow_scripts.report.tracking_status import tracking_rows

PLOT_ORDER = ("test_loss", "base_vs_finetuned", "rank_metrics", "rank_cost", "method_cost",
              "training_loss")


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t") if path.is_file() else pd.DataFrame()


# Environment ------------------------------------------------------------------------------

def run_infos(names: list[str], results: Path) -> dict[str, dict]:
    paths = {name: results / "adapters" / name / "run_info.json" for name in names}
    return {name: read_json(path) for name, path in paths.items() if path.is_file()}


def environment(infos: dict[str, dict], extra_rows: list[list[str]] = ()) -> Table:
    """One row per field; a field whose value differs between experiments lists each.
    `extra_rows` (experiment tracking's status) come last."""
    flat = {}
    for name, info in infos.items():
        slim = {k: v for k, v in info.items() if k not in ("config", "data_files")}
        flat[name] = pd.json_normalize(slim, sep=".").iloc[0].to_dict()
    fields = list(dict.fromkeys(k for values in flat.values() for k in values))
    table = Table(["field", "value"])
    for key in fields:
        values = {name: fmt(values.get(key)) for name, values in flat.items()}
        shown = (next(iter(values.values())) if len(set(values.values())) == 1
                 else "; ".join(f"{name}: {v}" for name, v in values.items()))
        table.rows.append([key, shown])
    table.rows.extend(extra_rows)
    return table


def data_files(infos: dict[str, dict]) -> Table:
    users: dict[tuple[str, str], list[str]] = {}
    for name, info in infos.items():
        for path, digest in info.get("data_files", {}).items():
            users.setdefault((path, digest), []).append(name)
    rows = [[path, digest, ", ".join(names)] for (path, digest), names in sorted(users.items())]
    return Table(["file", "sha256", "used by"], rows)


# Rendering --------------------------------------------------------------------------------

def read_caption(captions: Path, name: str) -> str:
    path = captions / f"{name}.rst"
    return " ".join(path.read_text(encoding="utf-8").split()) if path.is_file() else name


def plots(plot_dir: Path, captions: Path) -> dict[str, dict]:
    found = {}
    for name in PLOT_ORDER:
        path = plot_dir / f"{name}.png"
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            found[name] = {"path": f"plots/{name}.png", "caption": read_caption(captions, name),
                           "data_uri": f"data:image/png;base64,{data}"}
    return found


def md_cell(text, limit: int = 300) -> str:
    """Text safe inside a Markdown table cell: one line, shortened, pipes and tags escaped."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def md_text(text) -> str:
    """Running Markdown text (not a table cell): one line, tags escaped, nothing cut."""
    return " ".join(str(text).split()).replace("<", "&lt;").replace(">", "&gt;")


def tables(metrics_dir: Path) -> dict[str, pd.DataFrame]:
    names = ("experiments", "comparison", "ranking", "quantization", "studies", "base_metrics",
             "training_log", "data_stats")
    return {name: read_tsv(metrics_dir / f"{name}.tsv") for name in names}


def family_others(metrics_dir: Path) -> dict[str, pd.DataFrame]:
    """The tables of the run's one family of comparisons beyond comparison, ranking and
    quantization: general text, benchmarks, searches against sweeps, preference experiments
    against their starting points, and the judge's when there is one."""
    judge = judge_frame(metrics_dir)
    return {name: read_tsv(metrics_dir / f"{name}.tsv")
            for name in ("general_text", "benchmarks", "search_vs_grid", "preference")} | (
        {"judge": judge} if judge is not None else {})


def build_context(run: dict, metrics_dir: Path, results: Path, plot_info: dict,
                  tracking_receipts: list[Path] = ()) -> dict:
    t = tables(metrics_dir)
    experiments, comparison, studies = t["experiments"], t["comparison"], t["studies"]
    configs = run["experiments"]
    datasets = list(run.get("datasets", {}))
    infos = run_infos(list(configs), results)
    report = run.get("report", {})
    return {
        "title": report.get("title", "Training report"),
        "summary": summary(experiments, comparison, t["ranking"], t["quantization"],
                           t["training_log"], family_others(metrics_dir)),
        "rankings": sections.ranking_tables(t["ranking"]) if not t["ranking"].empty else [],
        "gains": sections.gains_table(comparison, experiments),
        "tools": sections.tool_table(comparison),
        **general_tables(metrics_dir),  # general text (forgetting) and benchmarks
        **judge_context(metrics_dir),  # the judge's table, empty without judge.tsv
        "exports": exports_table(metrics_dir),  # empty without export: in the config
        "studies": {label: sections.study_tables(studies, experiments, comparison, kind)
                    for label, kind in (("Rank", RANK), ("LoRA vs QLoRA", METHOD),
                                        ("Hyper-parameter rounds", HYPERPARAMETERS))},
        "quantization": sections.quantization_table(t["quantization"])
        if not t["quantization"].empty else Table([]),
        "parameters": sections.parameter_table(experiments),
        "data": sections.data_tables(datasets, results),
        "lengths": sections.length_table(datasets, results, t["data_stats"]),
        "rejected": sections.rejected_examples(datasets, results),
        "samples": (sections.sample_groups(t["ranking"], configs, results.parent, results,
                                           int(report.get("sample_count", 3)))
                    if not t["ranking"].empty else [])
        + sections.tool_sample_groups(configs, results.parent, results,
                                      int(report.get("sample_count", 3))),
        "metric_tables": sections.metric_tables(comparison, experiments),
        "base": sections.base_table(t["base_metrics"]),
        "environment": environment(infos, tracking_rows(list(tracking_receipts))),
        "data_files": data_files(infos),
        "plots": plot_info,
    }


def environment_for(templates: Path, html: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=html,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["md"] = md_cell
    env.filters["mdtext"] = md_text
    return env


def render(run: dict, metrics_dir: Path, results: Path, templates: Path, out_dir: Path,
           captions: Path, tracking_receipts: list[Path] = ()) -> tuple[Path, Path]:
    draw_all(metrics_dir, out_dir / "plots")
    context = build_context(run, metrics_dir, results, plots(out_dir / "plots", captions),
                            tracking_receipts)
    context["searches"] = search_sections(run, results, read_tsv(metrics_dir / "comparison.tsv"),
                                          out_dir / "plots",
                                          read_tsv(metrics_dir / "search_vs_grid.tsv"))
    context["preference"] = preference_section(run, metrics_dir, out_dir / "plots")
    write_json(out_dir / "summary.json", context["summary"])
    outputs = []
    for template, html in (("report.md.j2", False), ("report.html.j2", True)):
        text = environment_for(templates, html).get_template(template).render(**context)
        path = out_dir / ("training_report.html" if html else "training_report.md")
        path.write_text(text, encoding="utf-8")
        outputs.append(path)
    return outputs[0], outputs[1]


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--metrics-dir", default=Path("results/metrics"), type=Path,
                        help="collect_metrics' tables")
    parser.add_argument("--results", default=Path("results"), type=Path,
                        help="the results directory (predictions, data statistics)")
    parser.add_argument("--templates", default=Path("reports/templates"), type=Path,
                        help="the jinja2 templates of the report")
    parser.add_argument("--captions", type=Path, help="default: TEMPLATES/../captions")
    parser.add_argument("--config", required=True, type=Path,
                        help="the config snapshot (results/metrics/config.json)")
    parser.add_argument("--out-dir", default=Path("results/report"), type=Path,
                        help="where the Markdown, HTML, plots and summary.json go")
    parser.add_argument("--tracking-receipts", nargs="*", type=Path, default=[],
                        help="track_experiment's receipts, shown in the Environment section")
    args = parser.parse_args(argv)
    captions = args.captions or args.templates.parent / "captions"
    render(read_json(args.config), args.metrics_dir, args.results, args.templates,
           args.out_dir, captions, args.tracking_receipts)


if __name__ == "__main__":
    main()
