# Hyper-parameter searches (docs/search.md): round r asks the study for its trials
# (search_ask, a checkpoint: the jobs that read a trial's settings are made once its round
# file exists), trains them as ordinary experiments, and tells the study their results
# (search_tell), which round r+1 waits for. The study itself lives outside the outputs
# (results/search/{search}/study.db): asking and telling are idempotent, so a round killed
# anywhere resumes without losing or repeating a trial.
SEARCH_CODE = ("search/plan", "search/study", "search/pruning", "common/cli")


SEARCH_TARGETS = [plan.told_file(plan.rounds - 1) for plan in SEARCHES.values()]


checkpoint search_ask:
    input:
        told=lambda w: SEARCHES[w.search].told_file(int(w.round) - 1) if int(w.round) else [],
        code=code("search/ask", *SEARCH_CODE),
    output:
        "results/search/{search}/{key}/round-{round}.json",
    wildcard_constraints:
        search=alternatives_regex(SEARCHES),
        key="[0-9a-f]{10}",
        round=r"\d+",
    params:
        cfg=lambda w: canonical_json(SEARCHES[w.search].ask_job(int(w.round))),
    localrule: True
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/search_ask/{search}/{key}/round-{round}.log",
    shell:
        "python -m workflow_scripts.search.ask --config {params.cfg:q} --out {output:q} "
        "> {log:q} 2>&1"


rule search_tell:
    input:
        unpack(told_inputs),
        code=code("search/tell", "search/archive", *SEARCH_CODE),
    output:
        "results/search/{search}/{key}/told-{round}.json",
    wildcard_constraints:
        search=alternatives_regex(SEARCHES),
        key="[0-9a-f]{10}",
        round=r"\d+",
    params:
        cfg=lambda w: canonical_json(SEARCHES[w.search].tell_job(int(w.round))),
    localrule: True
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/search_tell/{search}/{key}/told-{round}.log",
    shell:
        "python -m workflow_scripts.search.tell --config {params.cfg:q} --out {output:q} "
        "> {log:q} 2>&1"

