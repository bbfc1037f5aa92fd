# Reproducible LoRA/QLoRA fine-tuning experiments on Chinese language models.
# Raw corpora -> cleaned splits -> base models -> adapters -> evaluations -> report.
from snakemake.utils import min_version

min_version("9.0")


# A config given with --configfile replaces the default one instead of extending it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "reports/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/tokenize.smk"
include: "rules/search.smk"
include: "rules/train.smk"
include: "rules/preference.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/track.smk"
include: "rules/export.smk"


rule all:
    input:
        "results/report/training_report.md",
        "results/report/training_report.html",
        expand("results/merged/{experiment}", experiment=CFG["merge"]),
        TRACKING_TARGETS,
        EXPORT_TARGETS,
    default_target: True
