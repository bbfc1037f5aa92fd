rule snapshot_config:
    output:
        "results/metrics/config.json",
    params:
        cfg=canonical_json({
            "experiments": EXPERIMENTS,
            "datasets": CFG["datasets"],
            "base_models": CFG["base_models"],
            "report": CFG["report"],
            "seed": CFG["seed"],
        }),
    localrule: True
    run:
        Path(output[0]).write_text(params.cfg, encoding="utf-8")


rule collect_metrics:
    input:
        config="results/metrics/config.json",
        train=expand("results/adapters/{e}/train_metrics.json", e=EXPERIMENTS),
        evals=expand("results/eval/{e}/metrics.json", e=EXPERIMENTS),
        base=[f"results/eval/base/{m}/{d}/metrics.json" for m, d in base_eval_pairs()],
        stats=expand("results/data/{d}/stats.json", d=CFG["datasets"]),
        code=code("collect_metrics"),
    output:
        experiments="results/metrics/experiments.tsv",
        base="results/metrics/base_metrics.tsv",
        comparison="results/metrics/comparison.tsv",
        training_log="results/metrics/training_log.tsv",
        data_stats="results/metrics/data_stats.tsv",
    localrule: True
    log:
        "logs/collect_metrics.log",
    shell:
        "{PYTHON} -m workflow_scripts.collect_metrics --config {input.config} "
        "--results results --out-dir results/metrics > {log} 2>&1"


rule render_report:
    input:
        tables=rules.collect_metrics.output,
        config="results/metrics/config.json",
        predictions=expand("results/eval/{e}/predictions.jsonl", e=EXPERIMENTS),
        templates=Path(workflow.basedir).joinpath("reports/templates").glob("*"),
        code=code("render_report", "plots"),
    output:
        md="results/report/training_report.md",
        html="results/report/training_report.html",
        plots=directory("results/report/plots"),
    localrule: True
    log:
        "logs/render_report.log",
    shell:
        "{PYTHON} -m workflow_scripts.render_report --metrics-dir results/metrics "
        "--results results --templates {workflow.basedir}/reports/templates "
        "--config {input.config} --out-dir results/report > {log} 2>&1"
