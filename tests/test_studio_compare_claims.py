"""The studio's Compare page claims only what the report's tables back
(workflow_scripts/studio/compare_claims.py): colours from paired verdicts, never from the
sign of a bare difference, and no loss difference across base models."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from workflow_scripts.studio.app import StudioSettings, create_app
from workflow_scripts.studio.compare_claims import add_claims


def write_tsv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


def figure(name: str, values: dict) -> dict:
    first = next(iter(values.values()))
    return {"metric": name, "values": values, "intervals": {},
            "diff": {e: v - first for e, v in values.items()}, "lower_is_better": True}


def test_colours_only_where_the_tables_back_a_verdict(tmp_path):
    rank = lambda e, m, p, v: {"dataset": "d", "base_model": m, "position": p,  # noqa: E731
                               "experiment": e, "verdict": v}
    write_tsv(tmp_path / "results/metrics/ranking.tsv", [
        rank("best", "tiny", "1", ""), rank("close", "tiny", "2", "no clear difference"),
        rank("far", "tiny", "3", "worse"), rank("big", "big-model", "1", "")])
    write_tsv(tmp_path / "results/metrics/comparison.tsv", [
        {"experiment": "far", "metric": "loss", "difference": "-0.5", "difference_low": "-0.6",
         "difference_high": "-0.4", "verdict": "better"},
        {"experiment": "close", "metric": "bleu4", "difference": "2.0",
         "difference_low": "-1.0", "difference_high": "5.0", "verdict": "no clear difference"}])
    rows = [{"experiment": e, "base_model": m} for e, m in
            (("best", "tiny"), ("close", "tiny"), ("far", "tiny"), ("big", "big-model"))]
    loss = figure("test_loss", {"best": 2.0, "close": 2.01, "far": 2.5, "big": 1.0})
    bleu = figure("bleu4", {"best": 10.0, "close": 30.0, "far": 5.0, "big": 50.0})
    loss, bleu = add_claims(tmp_path, [loss, bleu], rows)
    assert loss["verdict"] == {"close": None, "far": "worse"}  # "close" differs, not clearly
    assert loss["diff"]["big"] is None and loss["not_compared"] == {"big": "another base model"}
    assert loss["diff"]["far"] == pytest.approx(0.5)
    assert loss["vs_base"]["far"] == {"difference": -0.5, "low": -0.6, "high": -0.4,
                                      "verdict": "better"}
    assert bleu["verdict"] == {} and bleu["diff"]["big"] == 40.0  # no verdict: uncoloured
    assert bleu["vs_base"]["close"]["verdict"] == "no clear difference"
    # seen from the runner-up, the first is better
    loss = add_claims(tmp_path, [figure("test_loss", {"far": 2.5, "best": 2.0})],
                      rows[2:3] + rows[:1])[0]
    assert loss["verdict"] == {"best": "better"}


def test_compare_api_uses_the_report_tables(smoke_run):
    workdir = smoke_run.workdir
    client = TestClient(create_app(StudioSettings(config=workdir / "config.yaml",
                                                  workdir=workdir)), base_url="http://127.0.0.1")
    body = client.get("/api/compare?e=rank-r2&e=rank-r4").json()
    loss = next(m for m in body["metrics"] if m["metric"] == "test_loss")
    ranking = {r["experiment"]: r for r in csv.DictReader(
        open(workdir / "results/metrics/ranking.tsv", encoding="utf-8"), delimiter="\t")}
    first = "rank-r2" if ranking["rank-r2"]["position"] == "1" else "rank-r4"
    other = ({"rank-r2", "rank-r4"} - {first}).pop()
    expected = ranking[other]["verdict"] if ranking[other]["verdict"] == "worse" else None
    if expected and first == "rank-r4":
        expected = "better"
    assert loss["verdict"] == {"rank-r4": expected}
    comparison = [r for r in csv.DictReader(open(workdir / "results/metrics/comparison.tsv",
                                                 encoding="utf-8"), delimiter="\t")
                  if r["experiment"] == "rank-r4" and r["metric"] == "loss"]
    assert loss["vs_base"]["rank-r4"]["verdict"] == comparison[0]["verdict"]
    assert loss["vs_base"]["rank-r4"]["difference"] == pytest.approx(float(comparison[0]["difference"]))


def test_compare_page_colours_only_backed_verdicts(smoke_run):
    """In the browser: a difference is green or red only where the API gave a verdict."""
    from test_studio_browser import start_chromium, wait_for

    from workflow_scripts.studio.background import BackgroundServer

    workdir = smoke_run.workdir
    app = create_app(StudioSettings(config=workdir / "config.yaml", workdir=workdir))
    with BackgroundServer(app) as server:
        body = TestClient(app, base_url="http://127.0.0.1").get(
            "/api/compare?e=rank-r2&e=rank-r4").json()
        browser = start_chromium()
        try:
            browser.get(f"{server.url}/compare?e=rank-r2&e=rank-r4")
            wait_for(browser, "document.querySelectorAll('#metrics .vs-base').length > 0")
            coloured = browser.execute_script("""
                return [...document.querySelectorAll('#metrics tbody tr')].map(tr => [
                  tr.cells[0].innerText,
                  [...tr.querySelectorAll('.vs-first.better, .vs-first.worse')].length,
                  [...tr.querySelectorAll('.vs-base.better, .vs-base.worse')].length]);""")
        finally:
            browser.quit()
    for metric, first_coloured, base_coloured in coloured:
        m = next(x for x in body["metrics"] if x["metric"] == metric)
        assert first_coloured == sum(v in ("better", "worse") for v in m["verdict"].values())
        assert base_coloured == sum(bool(b) and b["verdict"] in ("better", "worse")
                                    for b in m["vs_base"].values())
