rule snapshot_config:
    input:
        rounds=all_round_files,  # search trials' settings (search.smk)
    output:
        "results/metrics/config.json",
    params:
        cfg=lambda w: when_rounds_asked(canonical_json({
            "experiments": experiments_with_base_evals(),
            "sweeps": CFG["sweeps"],
            **({"searches": search_snapshot()} if SEARCHES else {}),
            "datasets": CFG["datasets"],
            "base_models": CFG["base_models"],
            "report": CFG["report"],
            "seed": CFG["seed"],
            **({"judge": JUDGE} if JUDGE else {}),
        })),
    localrule: True
    log:
        "logs/snapshot_config.log",
    run:
        Path(output[0]).write_text(params.cfg, encoding="utf-8")


rule collect_metrics:
    input:
        config="results/metrics/config.json",
        train=expand("results/adapters/{e}/train_metrics.json", e=EXPERIMENTS),
        evals=expand("results/eval/{e}/metrics.json", e=EXPERIMENTS),
        base=[f"results/eval/base/{m}/{d}/{k}/metrics.json" for m, d, k in BASE_EVALS],
        # The per-item files behind the bootstrap intervals and paired differences.
        eval_items=expand(
            "results/eval/{e}/{f}.jsonl", e=EXPERIMENTS,
            f=("predictions", "record_losses", "general_text", "benchmarks"),
        ),
        base_items=[
            f"results/eval/base/{m}/{d}/{k}/{f}.jsonl"
            for m, d, k in BASE_EVALS
            for f in ("predictions", "record_losses", "general_text", "benchmarks")
        ],
        stats=expand("results/data/{d}/stats.json", d=CFG["datasets"]),
        judgments=JUDGMENTS,  # empty unless a judge is configured
        # every preference experiment against its starting point (evaluate_preference)
        preference=expand("results/eval/{e}/{f}", e=PREFERENCE.names,
                          f=("preference.json", "preference_pairs.jsonl")),
        searches=SEARCH_TARGETS,  # each search's told rounds: its best trial (search.smk)
        code=code(
            "report/collect_metrics",
            "report/search_grid",
            "report/search_section",
            "search/tell",
            "report/general_tables",
            "evaluation/bootstrap",
            "evaluation/text_metrics",
            "common/config",
            "evaluation/metric_intervals",
            "report/studies",
            "report/family",
            "report/judge_table",
            "evaluation/judge",
            "report/preference_table",
            "evaluation/preference_eval",
        ),
    output:
        **({"judge": "results/metrics/judge.tsv"} if JUDGE else {}),
        experiments=report(
            "results/metrics/experiments.tsv",
            caption="../reports/captions/experiments.rst",
            category="Tables",
        ),
        base=report(
            "results/metrics/base_metrics.tsv",
            caption="../reports/captions/base_metrics.rst",
            category="Tables",
        ),
        comparison=report(
            "results/metrics/comparison.tsv",
            caption="../reports/captions/comparison.rst",
            category="Tables",
        ),
        training_log=report(
            "results/metrics/training_log.tsv",
            caption="../reports/captions/training_log.rst",
            category="Tables",
        ),
        data_stats=report(
            "results/metrics/data_stats.tsv",
            caption="../reports/captions/data_stats.rst",
            category="Tables",
        ),
        quantization=report(
            "results/metrics/quantization.tsv",
            caption="../reports/captions/quantization.rst",
            category="Tables",
        ),
        ranking=report(
            "results/metrics/ranking.tsv",
            caption="../reports/captions/ranking.rst",
            category="Tables",
        ),
        studies=report(
            "results/metrics/studies.tsv",
            caption="../reports/captions/studies.rst",
            category="Tables",
        ),
        general_text=report(
            "results/metrics/general_text.tsv",
            caption="../reports/captions/general_text.rst",
            category="Tables",
        ),
        benchmarks=report(
            "results/metrics/benchmarks.tsv",
            caption="../reports/captions/benchmarks.rst",
            category="Tables",
        ),
        preference=report(
            "results/metrics/preference.tsv",
            caption="../reports/captions/preference.rst",
            category="Tables",
        ),
        search_vs_grid="results/metrics/search_vs_grid.tsv",
        manifest="results/metrics/experiments.json",
    localrule: True
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/collect_metrics.log",
    shell:
        "python -m workflow_scripts.report.collect_metrics --config {input.config} "
        "--results results --out-dir results/metrics > {log} 2>&1"


# What render_report reads by name, for a github(...) module, whose folders cannot be listed.
REPORT_TEMPLATES = ("report.md.j2", "report.html.j2", "report.css")
REPORT_CAPTIONS = ()
if not WORKFLOW_ON_DISK:  # the plots' captions (a heavy import: only here)
    from workflow_scripts.report.render_report import PLOT_ORDER

    REPORT_CAPTIONS = [f"{name}.rst" for name in PLOT_ORDER]


rule render_report:
    input:
        tables=rules.collect_metrics.output,
        config="results/metrics/config.json",
        searches=SEARCH_TARGETS,  # every search's last round told (search.smk)
        predictions=expand("results/eval/{e}/predictions.jsonl", e=EXPERIMENTS),
        data=expand("results/data/{d}/{f}", d=CFG["datasets"], f=("stats.json", "rejects.jsonl")),
        templates=workflow_files("reports/templates", REPORT_TEMPLATES),
        captions=workflow_files("reports/captions", REPORT_CAPTIONS),
        code=code(
            "report/render_report",
            "report/general_tables",
            "report/plots",
            "evaluation/bootstrap",
            "common/config",
            "report/formatting",
            "report/sections",
            "report/memory_columns",
            "report/studies",
            "report/summary",
            "report/tracking_status",
            "report/family",
            "report/judge_section",
            "report/search_section",
            "search/study",
            "search/pruning",
            "report/exports_section",
            "report/preference_section",
            "report/preference_table",
            "evaluation/preference_eval",
        ),
        tracking=lambda w: TRACKING_RECEIPTS,  # empty unless tracking is configured
        exports=lambda w: ["results/metrics/exports.tsv"] if CFG["export"] else [],  # export.smk
    output:
        md="results/report/training_report.md",
        summary="results/report/summary.json",
        html=report(
            "results/report/training_report.html",
            caption="../reports/captions/training_report.rst",
            category="Report",
        ),
        plots=report(
            directory("results/report/plots"),
            patterns=["{name}.png"],
            caption="../reports/captions/plots.rst",
            category="Plots",
        ),
    localrule: True
    params:
        templates=lambda w, input: os.path.dirname(input.templates[0]),
        tracking=lambda w, input: " ".join(["--tracking-receipts", *map(shlex.quote, input.tracking)])
        if input.tracking else "",
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/render_report.log",
    shell:
        "python -m workflow_scripts.report.render_report --metrics-dir results/metrics "
        "--results results --templates {params.templates} "
        "--config {input.config} --out-dir results/report {params.tracking} > {log} 2>&1"
