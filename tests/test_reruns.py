"""A change re-runs exactly what it touches: checked with `snakemake -n` and a real rerun."""
import json

import pytest
import yaml

pytestmark = pytest.mark.slow

REPORT_ONLY = {"render_report": 1, "all": 1}


def edit_config(workflow, change):
    config = yaml.safe_load(workflow.config.read_text())
    change(config)
    workflow.config.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))


@pytest.fixture
def clone(smoke_run, tmp_path):
    return smoke_run.clone(tmp_path)


def test_nothing_to_do_after_a_complete_run(smoke_run):
    assert smoke_run.planned_jobs() == {}


def test_reordered_yaml_keys_rerun_nothing(clone):
    config = yaml.safe_load(clone.config.read_text())
    reordered = dict(reversed(list(config.items())))
    reordered["defaults"] = dict(reversed(list(config["defaults"].items())))
    clone.config.write_text(yaml.safe_dump(reordered, sort_keys=False))
    assert clone.planned_jobs() == {}


def test_one_learning_rate_retrains_that_experiment_only(clone):
    def change(config):
        config["experiments"]["lccc-qlora"]["training"] = {"learning_rate": 5.0e-4}

    edit_config(clone, change)
    # lccc-qlora is also merged into a standalone model, so the merge follows it
    expected = {"train_adapter": 1, "evaluate": 1, "merge_adapter": 1, "snapshot_config": 1,
                "collect_metrics": 1, "render_report": 1, "all": 1}
    assert clone.planned_jobs() == expected
    clone.run("--cores", "2")
    assert clone.planned_jobs() == {}


def test_a_sweep_tokenizes_once_per_setting_and_a_rank_change_not_at_all(clone):
    edit_config(clone, lambda c: c["sweeps"]["rank"]["grid"].update({"lora.r": [2, 4, 8]}))
    planned = clone.planned_jobs()
    assert planned["train_adapter"] == 1 and "tokenize_dataset" not in planned
    # six new experiments over two max_length values: 64 is tokenized already, 128 once
    # (rank-dpo's start, rank-r2, is renamed by the new grid: it goes)
    edit_config(clone, lambda c: (c["sweeps"]["rank"]["grid"].update(
        {"training.max_length": [64, 128]}), c["experiments"].pop("rank-dpo")))
    planned = clone.planned_jobs()
    assert planned["train_adapter"] == 6 and planned["tokenize_dataset"] == 1


def test_a_tokenizer_or_template_change_tokenizes_again(clone):
    """Path models are keyed by their tokenizer's content: two copies share one tokenization,
    an edited chat template gets its own; the scratch model's template is code."""
    import shutil

    copies = {}
    for name in ("copy-a", "copy-b"):
        copies[name] = clone.workdir / "models" / name
        shutil.copytree(clone.workdir / "results/models/tiny", copies[name])

    def add_copies(config):
        for name, path in copies.items():
            config["base_models"][name] = {"source": "path", "path": str(path)}
            config["experiments"][f"{name}-exp"] = {"base_model": name, "dataset": "alpaca_zh"}

    edit_config(clone, add_copies)
    assert clone.planned_jobs()["tokenize_dataset"] == 1
    template = copies["copy-b"] / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_start|> "))
    assert clone.planned_jobs()["tokenize_dataset"] == 2
    module = clone.code / "workflow_scripts" / "models" / "chat_templates.py"
    module.write_text(module.read_text() + "\n# edited\n")
    planned = clone.planned_jobs()
    # the scratch model is rebuilt and its 4 tokenizations follow; copies' too (code input)
    assert planned["build_base_model"] == 1 and planned["tokenize_dataset"] == 6


def test_template_change_rerenders_the_report_only(clone):
    template = clone.code / "reports" / "templates" / "report.md.j2"
    template.write_text(template.read_text() + "\n<!-- edited -->\n")
    assert clone.planned_jobs() == REPORT_ONLY
    clone.run("--cores", "2")
    assert "<!-- edited -->" in (clone.workdir / "results/report/training_report.md").read_text()


def test_evaluation_setting_reruns_evaluations_not_training(clone):
    edit_config(clone, lambda c: c["defaults"]["evaluation"].update(max_new_tokens=6))
    planned = clone.planned_jobs()
    assert "train_adapter" not in planned and "build_base_model" not in planned
    assert "tokenize_dataset" not in planned
    # rank-r2, rank-r4, rank-dpo and lccc-qlora; the tool experiments set their own
    # max_new_tokens. Bases: alpaca_zh, pref_zh, and lccc in 4 bits (lccc-qlora's twin) and
    # unquantized (its cost)
    assert planned["evaluate"] == 4 and planned["evaluate_base"] == 4


def test_exam_edit_reruns_its_task_and_the_evaluations_only(clone):
    exam = clone.workdir / "tests/data/exam_small.csv"
    exam.write_text(exam.read_text(encoding="utf-8") + "k3,一年有几个月？,10,11,12,13,C\n",
                    encoding="utf-8")
    # every experiment and base evaluation names the exam (smoke.yaml's defaults)
    assert clone.planned_jobs() == {"prepare_benchmark": 1, "evaluate": 6, "evaluate_base": 6,
                                    "collect_metrics": 1, "render_report": 1, "all": 1}


def test_new_records_rerun_that_dataset_downstream_only(clone):
    raw = clone.workdir / "data/raw/alpaca_zh_demo.json"
    records = json.loads(raw.read_text())
    records.append({"instruction": "新增的问题是什么？", "input": "", "output": "这是新增的回答。"})
    raw.write_text(json.dumps(records, ensure_ascii=False))
    planned = clone.planned_jobs()
    # alpaca_zh feeds the two rank experiments and one base evaluation, and rank-r2 is
    # rank-dpo's start (its reference, training and evaluations follow); lccc is untouched
    assert planned["prepare_dataset"] == 1
    assert planned["tokenize_dataset"] == 1  # the two rank experiments share it
    assert planned["train_adapter"] == 2 and planned["evaluate"] == 3
    assert planned["reference_logps"] == planned["train_preference"] == 1
    assert "tokenize_preference" not in planned and "prepare_pairs" not in planned
    assert planned["evaluate_base"] == 1
    assert "build_base_model" not in planned


def test_code_change_reruns_the_rules_that_use_it(clone):
    module = clone.code / "workflow_scripts" / "evaluation" / "text_metrics.py"
    module.write_text(module.read_text() + "\n# edited\n")
    planned = clone.planned_jobs()
    assert planned == {"evaluate": 6, "evaluate_base": 6, "collect_metrics": 1,
                       "render_report": 1, "all": 1}


def test_training_seed_keeps_the_splits(clone):
    edit_config(clone, lambda c: c.update(seed=8))
    planned = clone.planned_jobs()
    assert "prepare_dataset" not in planned  # splits have their own seed
    assert planned["build_base_model"] == 1 and planned["train_adapter"] == 5


def is_cost(key: str) -> bool:
    """A measurement of the job's own time or memory, which a rerun does not reproduce."""
    return key in {"gen_time_per_sample_s", "eval_wall_time_s"} or key.startswith("eval_peak_")


def test_the_same_config_run_again_gives_identical_weights_and_metrics(clone):
    results = clone.workdir / "results"
    target = "results/eval/rank-r2/metrics.json"  # with its base evaluation
    before = json.loads((results / "eval/rank-r2/metrics.json").read_text())
    weights = {p: (results / p).read_bytes() for p in
               ("models/tiny/model.safetensors", "adapters/rank-r2/adapter_model.safetensors")}
    clone.run("--cores", "2", "--forcerun", "build_base_model", "--", target)
    after = json.loads((results / "eval/rank-r2/metrics.json").read_text())
    assert {k: v for k, v in after.items() if not is_cost(k)} == {
        k: v for k, v in before.items() if not is_cost(k)}
    for path, content in weights.items():
        assert (results / path).read_bytes() == content, path
