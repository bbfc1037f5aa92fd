"""Logic of the LoRA/QLoRA experiment workflow; the Snakemake rules call these modules.

One subpackage per stage, mirroring rules/ (data, models, training, evaluation, report),
with `common` (config, I/O, provenance) and `launch` (GPU slots) beneath them and the
`studio` and `compare` on top. docs/architecture.md draws the layers.
"""
import logging as _logging

# On CPUs with AVX512-BF16, importing bitsandbytes (peft does, in every job) logs that an
# optional 4-bit kernel from the model hub could not be loaded; bitsandbytes' own kernel runs
# instead, so in these jobs the notice is noise.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
