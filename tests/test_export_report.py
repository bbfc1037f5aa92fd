"""The report's exports table: a row per checked export from results/metrics/exports.tsv, in
both the Markdown and the HTML report; no section without exports."""
from __future__ import annotations

from report_fixtures import REPO, build_results, run_pipeline
from workflow_scripts.report import render_report

ROWS = ("experiment\ttarget\tfile\tsize_bytes\ttokens_compared\tagreement\tloss_transformers\t"
        "loss_llama_cpp\tloss_difference\tverdict\n"
        "lccc-lora\tq8_0\tresults/exports/lccc-lora/gguf/lccc-lora-q8_0.gguf\t1250000\t96\t"
        "0.9791666\t3.1\t3.1012\t0.0012\tpass\n"
        "lccc-lora\tvllm\tresults/exports/lccc-lora/vllm/serve.sh\t120\t\t\t\t\t\tpass\n")


def test_the_report_lists_each_checked_export(tmp_path):
    root = tmp_path
    build_results(root)
    results = run_pipeline(root, resamples=20)
    assert "Exports, each loaded back" not in (results / "report/training_report.md").read_text()
    (results / "metrics" / "exports.tsv").write_text(ROWS, encoding="utf-8")
    render_report.main(["--metrics-dir", str(results / "metrics"), "--results", str(results),
                        "--templates", str(REPO / "reports" / "templates"),
                        "--config", str(root / "run.json"), "--out-dir", str(results / "report")])
    md = (results / "report/training_report.md").read_text(encoding="utf-8")
    html = (results / "report/training_report.html").read_text(encoding="utf-8")
    assert ("| lccc-lora | q8_0 | results/exports/lccc-lora/gguf/lccc-lora-q8_0.gguf | 1.25 | "
            "97.9% of 96 | +0.0012 | pass |") in md
    assert "| lccc-lora | vllm | results/exports/lccc-lora/vllm/serve.sh | 0.00012 | n/a | n/a | pass |" in md
    assert "<h3>Exports, each loaded back (docs/export.md)</h3>" in html and "97.9% of 96" in html
