"""Logic of the LoRA/QLoRA experiment workflow; the Snakemake rules call these modules.

One subpackage per stage, mirroring rules/ (data, models, training, evaluation, report),
with `common` (config, I/O, provenance) and `launch` (GPU slots) beneath them and the
`studio` and `compare` on top. docs/architecture.md draws the layers.
"""
