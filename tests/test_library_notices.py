"""A plain LoRA run or `compare` prints no library notices that do not apply: transformers'
"generation flags are not valid ... ['top_k']" (fixed at the cause: greedy decoding sets no
top_k, with the same tokens) and bitsandbytes' optional CPU kernel notice (silenced)."""
import logging
import subprocess
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from workflow_scripts.evaluation.generation import generation_config

GREEDY = {"do_sample": False, "max_new_tokens": 12, "temperature": 0.7, "top_p": 0.9,
          "top_k": 20}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)


def test_greedy_generation_config_raises_no_flag_notice():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        generation_config(GREEDY, [2], 0).validate()
        generation_config({**GREEDY, "do_sample": True}, [2], 0).validate()
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "top_k" in r.getMessage()], records


def test_greedy_tokens_are_what_they_were_with_top_k_zero():
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1)).eval()
    prompt = torch.randint(3, 64, (2, 5))
    config = generation_config(GREEDY, [2], 0)
    old = generation_config(GREEDY, [2], 0)
    old.top_k = 0  # what the config held before
    assert config.top_k != 0 and config.do_sample is False
    with torch.no_grad():
        new_tokens = model.generate(prompt, generation_config=config)
        old_tokens = model.generate(prompt, generation_config=old)
    assert torch.equal(new_tokens, old_tokens)
    sampling = generation_config({**GREEDY, "do_sample": True}, [2], 0)
    assert (sampling.top_k, sampling.temperature, sampling.top_p) == (20, 0.7, 0.9)


def test_bitsandbytes_cpu_kernel_notice_is_silenced():
    proc = run_python(
        "import logging, workflow_scripts\n"
        "logging.basicConfig()\n"
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning("
        "'Failed to load CPU gemm_4bit_forward from kernels-community')\n"
        "logging.getLogger('bitsandbytes.backends.cpu.ops').error('a real error')\n")
    assert "gemm_4bit_forward" not in proc.stderr and "a real error" in proc.stderr
