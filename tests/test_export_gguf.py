"""GGUF exports through llama.cpp's own converters (scripts/setup_export.sh puts them under
.venv/export): the scratch model's tokenizer declared by its pre-tokenizer settings, any other
unknown tokenizer refused with the reason and the fix, the LoRA GGUF, the Ollama Modelfile."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from random_chat_models import random_adapter, random_base

REPO = Path(__file__).resolve().parent.parent
TOOLS = Path(os.environ.get("LORA_ZH_EXPORT_TOOLS") or REPO / ".venv" / "export") / "llama.cpp"
needs_tools = pytest.mark.skipif(not (TOOLS / "convert_hf_to_gguf.py").is_file(),
                                 reason="run scripts/setup_export.sh")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return random_base(tmp_path_factory.mktemp("gguf") / "base", hidden=32, layers=1)


def convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workflow_scripts.export.gguf_convert", *args,
                           "--tools", str(TOOLS)], cwd=REPO, capture_output=True, text=True)


def gguf_fields(path: Path) -> dict:
    sys.path.insert(0, str(TOOLS / "gguf-py"))
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {}
    for name in ("general.architecture", "tokenizer.ggml.pre", "general.file_type"):
        field = reader.fields[name]
        value = field.parts[field.data[0]]
        fields[name] = bytes(value).decode() if value.dtype.kind == "u" and value.itemsize == 1 \
            else int(value[0])
    fields["tensor_types"] = {t.tensor_type.name for t in reader.tensors}
    return fields


def test_the_scratch_tokenizer_is_qwen2s_pre_tokenizer(base):
    from workflow_scripts.export.gguf_convert import declared_pre_tokenizer

    assert declared_pre_tokenizer(base) == "qwen2"


@needs_tools
@pytest.mark.parametrize("outtype, tensor_type", [("f16", "F16"), ("bf16", "BF16"),
                                                    ("q8_0", "Q8_0")])
def test_the_scratch_model_converts_with_its_pre_tokenizer_declared(base, tmp_path, outtype,
                                                                    tensor_type):
    out = tmp_path / f"m-{outtype}.gguf"
    proc = convert("model", "--model-dir", str(base), "--outtype", outtype, "--outfile", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"pre-tokenizer declared as 'qwen2' from {base / 'tokenizer.json'}" in proc.stderr
    fields = gguf_fields(out)
    assert (fields["general.architecture"], fields["tokenizer.ggml.pre"]) == ("qwen2", "qwen2")
    assert tensor_type in fields["tensor_types"]


@needs_tools
def test_an_unknown_pre_tokenizer_is_refused_naming_the_reason_and_the_fix(base, tmp_path):
    model = tmp_path / "other"
    shutil.copytree(base, model)
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    split = tokenizer["pre_tokenizer"]["pretokenizers"][0]
    split["pattern"]["Regex"] = split["pattern"]["Regex"].replace(r"\p{N}|", r"\p{N}{1,3}|")
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    out = tmp_path / "x.gguf"
    proc = convert("model", "--model-dir", str(model), "--outfile", str(out))
    assert proc.returncode != 0 and not out.exists()
    assert f"{model / 'tokenizer.json'}: llama.cpp's converter does not recognise" in proc.stderr
    assert "none of ['qwen2']" in proc.stderr and "Fix: a base model whose tokenizer" in proc.stderr


@needs_tools
def test_a_plain_lora_converts_and_trainable_tokens_are_refused(base, tmp_path):
    plain = random_adapter(base, tmp_path / "plain", seed=2, trainable_tokens=False)
    out = tmp_path / "lora.gguf"
    proc = convert("lora", "--model-dir", str(base), "--adapter-dir", str(plain),
                   "--outfile", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.stat().st_size > 0
    tokens = random_adapter(base, tmp_path / "tokens", seed=2, trainable_tokens=True)
    proc = convert("lora", "--model-dir", str(base), "--adapter-dir", str(tokens),
                   "--outfile", str(tmp_path / "t.gguf"))
    assert proc.returncode != 0
    assert "no LoRA GGUF: it trains embedding rows (lora.trainable_tokens)" in proc.stderr
    assert "use the merged GGUF" in proc.stderr


def test_rslora_alpha_keeps_the_adapters_scale_under_llama_cpps_alpha_over_r():
    from workflow_scripts.export.gguf_convert import llama_cpp_alpha

    assert llama_cpp_alpha({"r": 16, "lora_alpha": 8, "use_rslora": True}) / 16 == 8 / 16 ** 0.5
    assert llama_cpp_alpha({"r": 16, "lora_alpha": 8}) == 8
