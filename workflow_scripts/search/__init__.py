"""Stage rules/search.smk: hyper-parameter searches as rounds of Optuna ask and tell, each
trial an ordinary experiment (docs/search.md)."""
