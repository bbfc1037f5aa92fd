"""Find, fetch and load base models and their tokenizers.

Imported while Snakemake builds the DAG, so torch and transformers are imported inside the
functions that need them. Weights are read as safetensors only, and remote code runs only
where the config turns `trust_remote_code` on.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.models.chat_templates import CHATML_TEMPLATE

logger = logging.getLogger(__name__)

# What a hub snapshot needs: safetensors weights (never *.bin or *.pt pickles), the JSON
# configs and index, and tokenizer files (vocab/merges, sentencepiece, chat template).
HUB_ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def resolve_model_dir(name: str, spec: dict, models_root: str = "results/models") -> str:
    """The local directory a base model is loaded from.

    `scratch` models are built into `{models_root}/{name}` and `hub` models are fetched
    there; `path` models are used where they are.
    """
    source = spec["source"]
    if source == "path":
        return spec["path"]
    if source in ("scratch", "hub"):
        return str(Path(models_root) / name)
    raise ValueError(f"base model {name}: unknown source {source!r}")


def fetch_hub_model(spec: dict, out_dir: str) -> str:
    """Download the pinned revision of a hub model into `out_dir` (safetensors only)."""
    from huggingface_hub import snapshot_download

    return snapshot_download(
        repo_id=spec["id"],
        revision=spec["revision"],
        local_dir=out_dir,
        allow_patterns=HUB_ALLOW_PATTERNS,
    )


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(model_dir: str, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token and a chat template guaranteed."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{model_dir}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        logger.warning("%s: the tokenizer has no chat template; using ChatML", model_dir)
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def compute_dtype():
    """bf16 on a CUDA GPU that supports it, else fp32."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def quantization_config(quantization: str | None):
    """The BitsAndBytesConfig for `quantization` ("4bit": QLoRA's NF4), or None."""
    if quantization is None:
        return None
    if quantization != "4bit":
        raise ValueError(f"unsupported quantization {quantization!r} (supported: 4bit)")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
    )


def keep_4bit_layers_unpacked(model) -> int:
    """Keep every bitsandbytes 4-bit layer of `model` in the NF4 layout it was quantized in.

    On a CPU with AVX512-BF16, bitsandbytes' `Linear4bit.forward` repacks a layer's weights
    into a bf16 inference layout the first time it runs in eval mode on an input that needs
    no gradient, and keeps that layout. That conversion fails on layers narrower than the
    quantization block (hidden size 32), makes later training steps run the inference kernel
    (or fail on layers with a bias), and computes in bf16, so evaluation would differ from a
    CPU without the instruction set. Each layer decides from its own
    `support_avx512bf16_for_cpu` flag, set when it is built; clearing it keeps training,
    evaluation and merging on the same dequantize-and-matmul kernels everywhere. The flag is
    read only for CPU inputs, so CUDA is unaffected. Returns the number of 4-bit layers.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


# glibc's M_MMAP_THRESHOLD: blocks this big or bigger get their own mapping, returned to the
# OS on free. Left dynamic, glibc raises it to the largest block freed so far (up to 32 MiB), so
# the freed temporaries of loading and every step's activations stay in the heap, fragmented.
MMAP_THRESHOLD_BYTES = 128 * 1024
M_MMAP_THRESHOLD = -3


def glibc():
    """The C library if it is glibc (it has mallopt and malloc_trim), else None."""
    import ctypes
    import ctypes.util
    import platform

    if platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c"))


def pin_mmap_threshold(libc) -> None:
    """Give large tensors their own mappings for the rest of the process (see above)."""
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def release_freed_memory(libc) -> None:
    """Hand the heap's free pages back to the OS: loading frees the checkpoint's tensors
    (and, when quantizing, their unquantized copies) but glibc keeps the pages."""
    import gc

    gc.collect()
    libc.malloc_trim(0)


def load_model(
    model_dir: str,
    *,
    trust_remote_code: bool = False,
    quantization: str | None = None,
    dtype: Any = None,
    device: str | None = None,
):
    """A causal LM from `model_dir`, optionally 4-bit quantized, placed on `device`.

    `dtype` None means fp32 on the CPU, the compute dtype when quantized, and the
    checkpoint's own dtype ("auto") on an accelerator.
    """
    from transformers import AutoModelForCausalLM

    libc = glibc()
    if libc is not None and quantization is not None:
        # QLoRA trades speed for memory: pinned, the threshold keeps peak RSS down (0.61x
        # LoRA's on a 277M model) but makes CPU steps ~60% slower, so plain LoRA keeps it dynamic.
        pin_mmap_threshold(libc)
    device = device or pick_device()
    bnb_config = quantization_config(quantization)
    if dtype is None:
        if bnb_config is not None:
            dtype = bnb_config.bnb_4bit_compute_dtype
        else:
            dtype = "float32" if device == "cpu" else "auto"
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        quantization_config=bnb_config,
        dtype=dtype,
        device_map={"": device},
    )
    if bnb_config is not None:
        keep_4bit_layers_unpacked(model)
    if libc is not None:
        release_freed_memory(libc)
    return model


def main(argv: list[str] | None = None) -> None:
    """CLI: `fetch --config SPEC_JSON --out-dir DIR` downloads a `source: hub` model."""
    parser = cli_parser("Fetch a pinned hub base model (safetensors weights only).")
    parser.add_argument("command", choices=["fetch"], help="what to do")
    parser.add_argument("--config", required=True, help="the base_models entry as JSON")
    parser.add_argument("--out-dir", required=True, help="where the snapshot is written")
    args = parser.parse_args(argv)
    spec = json.loads(args.config)
    if spec.get("source") != "hub":
        parser.error(f"fetch needs a source: hub model, not {spec.get('source')!r}")
    print(fetch_hub_model(spec, args.out_dir))


if __name__ == "__main__":
    main()
