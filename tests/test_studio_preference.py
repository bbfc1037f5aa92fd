"""The studio lists a preference experiment like any adapter and charts its reward curves."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from fastapi.testclient import TestClient

from workflow_scripts.studio.app import StudioSettings, create_app
from workflow_scripts.studio.progress import curves_from_trainer_log

REPO = Path(__file__).resolve().parent.parent
PREFERENCE = "rank-dpo"  # the smoke config's DPO experiment, continuing rank-r2


def write_lines(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def preference_log() -> list[dict]:
    return [{"step": 1, "epoch": 0.5, "loss": 0.6931, "rewards/margins": 0.0,
             "rewards/accuracies": 0.0, "rewards/chosen": 0.0, "logps/chosen": -30.0},
            {"step": 2, "epoch": 1.0, "loss": 0.65, "rewards/margins": 0.08,
             "rewards/accuracies": 0.75},
            {"step": 2, "epoch": 1.0, "eval_loss": 0.66, "eval_rewards/margins": 0.05,
             "eval_rewards/accuracies": 0.5}]


def test_reward_curves_are_read_from_a_preference_trainer_log(tmp_path):
    write_lines(tmp_path / "trainer_log.jsonl", preference_log())
    curves = curves_from_trainer_log(tmp_path / "trainer_log.jsonl")
    assert curves["train"] == [[1, 0.6931], [2, 0.65]] and curves["eval"] == [[2, 0.66]]
    assert curves["rewards"] == {
        "rewards/margins": {"train": [[1, 0.0], [2, 0.08]], "eval": [[2, 0.05]]},
        "rewards/accuracies": {"train": [[1, 0.0], [2, 0.75]], "eval": [[2, 0.5]]}}
    write_lines(tmp_path / "sft.jsonl", [{"step": 1, "loss": 2.0}])
    assert "rewards" not in curves_from_trainer_log(tmp_path / "sft.jsonl")


def test_a_preference_experiment_is_listed_and_compared_with_its_rewards(tmp_path):
    shutil.copy(REPO / "tests" / "configs" / "smoke.yaml", tmp_path / "config.yaml")
    adapter = tmp_path / "results" / "adapters" / PREFERENCE
    write_lines(adapter / "trainer_log.jsonl", preference_log())
    (adapter / "train_metrics.json").write_text('{"steps": 2, "final_loss": 0.65}')
    (tmp_path / "results" / "eval" / PREFERENCE).mkdir(parents=True)
    (tmp_path / "results" / "eval" / PREFERENCE / "metrics.json").write_text('{"loss": 2.5}')
    client = TestClient(create_app(StudioSettings(config=tmp_path / "config.yaml",
                                                  workdir=tmp_path)), base_url="http://127.0.0.1")
    rows = {r["experiment"]: r for r in client.get("/api/experiments").json()["experiments"]}
    row = rows[PREFERENCE]
    assert (row["status"], row["test_loss"], row["steps"]) == ("done", 2.5, 2)
    assert (row["base_model"], row["r"]) == (rows["rank-r2"]["base_model"], 2)  # inherited
    body = client.get(f"/api/compare?e={PREFERENCE}&e=rank-r2").json()
    assert body["curves"][PREFERENCE]["rewards"]["rewards/margins"]["eval"] == [[2, 0.05]]
    assert "rewards" not in body["curves"]["rank-r2"]
    page = client.get(f"/compare?e={PREFERENCE}").text
    assert 'id="reward-charts"' in page
    script = client.get("/static/studio.js").text
    assert "function rewardCharts" in script and "rewardCharts(data.curves" in script
