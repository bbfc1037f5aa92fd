# Optional: one MLflow and/or SwanLab run per experiment (docs/tracking.md). Local jobs: the
# submitting node reaches the tracking server, and a SQLite store is written from one
# machine only, its writers taking turns under a file lock.
TRACKING = CFG["tracking"]
TRACKING_ON = bool(TRACKING.get("mlflow") or TRACKING.get("swanlab"))
TRACKING_RECEIPTS = (
    expand("results/tracking/experiments/{e}.json", e=EXPERIMENTS) if TRACKING_ON else []
)
TRACKING_TARGETS = ["results/tracking/report.json"] if TRACKING_ON else []
TRACK_CODE = ("tracking/track_experiment", "tracking/run_record", "tracking/mlflow_backend",
              "tracking/swanlab_backend", "tracking/model_hash", "models/content_hash")


rule track_experiment:
    input:
        adapter_config="results/adapters/{experiment}/adapter_config.json",
        trainer_log="results/adapters/{experiment}/trainer_log.jsonl",
        train_metrics="results/adapters/{experiment}/train_metrics.json",
        run_info="results/adapters/{experiment}/run_info.json",
        eval_metrics="results/eval/{experiment}/metrics.json",
        tables=expand("results/metrics/{t}.tsv", t=("experiments", "base_metrics", "comparison")),
        weights=lambda w: (
            [f"results/adapters/{w.experiment}/adapter_model.safetensors"]
            if TRACKING["log_adapter"] else []
        ),
        model=get_experiment_model_dir,
        code=code(*TRACK_CODE),
    output:
        "results/tracking/experiments/{experiment}.json",
    params:
        cfg=tracking_job,
    localrule: True
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/track_experiment/{experiment}.log",
    benchmark:
        "results/benchmarks/track_experiment/{experiment}.tsv"
    shell:
        "python -m workflow_scripts.tracking.track_experiment --config {params.cfg:q} "
        "--results results --receipt {output:q} > {log:q} 2>&1"


rule track_report:
    input:
        receipts=TRACKING_RECEIPTS,
        report=["results/report/training_report.html", "results/report/training_report.md"],
        code=code("tracking/track_report", *TRACK_CODE),
    output:
        "results/tracking/report.json",
    params:
        cfg=canonical_json(TRACKING),
    localrule: True
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/track_report.log",
    shell:
        "python -m workflow_scripts.tracking.track_report --config {params.cfg:q} "
        "--receipts {input.receipts:q} --report {input.report:q} --out {output:q} > {log:q} 2>&1"
