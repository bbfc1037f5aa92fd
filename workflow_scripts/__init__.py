"""Logic of the LoRA/QLoRA experiment workflow; the Snakemake rules call these modules."""
