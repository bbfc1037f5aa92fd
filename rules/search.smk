# Hyper-parameter searches (docs/search.md): round r asks the study for its trials
# (search_ask, a checkpoint: the jobs that read a trial's settings are made once its round
# file exists), trains them as ordinary experiments, and tells the study their results
# (search_tell), which round r+1 waits for. The study itself lives outside the outputs
# (results/search/{search}/study.db): asking and telling are idempotent, so a round killed
# anywhere resumes without losing or repeating a trial.
SEARCH_CODE = ("search/plan", "search/study", "search/pruning", "common/cli")


def trial_round(name):
    """A search trial's round file, made before any job that reads the trial's settings
    (asking for it before its round is asked puts the round in the DAG); [] for other
    experiments."""
    plan = EXPERIMENTS.plan_of(name)
    if plan is None:
        return []
    round_ = plan.round_of(name)
    return checkpoints.search_ask.get(search=plan.name, key=plan.key, round=round_).output[0]


def trial_round_file(wildcards):
    return trial_round(wildcards.experiment)


def trial_job_entries(name):
    """What a trial's training job adds to an experiment's: the round's stop rules."""
    plan = EXPERIMENTS.plan_of(name)
    if plan is None:
        return {}
    trial_round(name)  # wait for the round
    return {"stop": trial_params(plan, name)["stop"]}


def all_round_files(wildcards=None):
    """Every round file of every search (their trials' settings go into the tables)."""
    return [trial_round(plan.round_trials(r)[0])
            for plan in SEARCHES.values() for r in range(plan.rounds)]


def told_inputs(wildcards):
    plan = SEARCHES[wildcards.search]
    trials = plan.round_trials(int(wildcards.round))
    files = {"round": plan.round_file(int(wildcards.round)),
             "train": [f"results/adapters/{t}/train_metrics.json" for t in trials],
             "log": [f"results/adapters/{t}/trainer_log.jsonl" for t in trials]}
    if plan.spec["objective"]["metric"] != "eval_loss":  # a test-set metric
        files["eval"] = [f"results/eval/{t}/metrics.json" for t in trials]
    return files


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
        code=code("search/tell", *SEARCH_CODE),
    output:
        "results/search/{search}/{key}/told-{round}.json",
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
        "logs/search_tell/{search}/{key}/told-{round}.log",
    shell:
        "python -m workflow_scripts.search.tell --config {params.cfg:q} --out {output:q} "
        "> {log:q} 2>&1"


def search_snapshot():
    """What the report and the studio read about each search (results/metrics/config.json)."""
    return {name: {"key": plan.key, "trials": plan.trials, "directory": plan.directory,
                   "rounds": plan.rounds, "space": plan.spec["space"],
                   "objective": plan.spec["objective"], "pruner": plan.spec["pruner"]["name"]}
            for name, plan in SEARCHES.items()}


def when_rounds_asked(value):
    """`value`, for a params function that reads trials' settings: until every round is
    asked, Snakemake holds the job (the rounds are among its inputs)."""
    all_round_files()
    return value
