"""A tokenizer's content identity: the hash of the files that decide its tokens.

Two model directories whose tokenizer files are byte for byte the same (Qwen2.5-0.5B and
Qwen2.5-7B) have the same identity, whatever their names or weights; an edited chat template
or vocabulary gives a new one. Imported while Snakemake builds the DAG: standard library only,
and only the tokenizer files are read (megabytes, never the weights).
"""
from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path

# What AutoTokenizer reads: vocabularies and merges, sentencepiece and tiktoken models, the
# tokenizer config (special tokens, the chat template), a separate template file, and Python
# modules (remote-code tokenizers). config.json and the weights are left out.
TOKENIZER_FILE_PATTERNS = (
    "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*", "merges.txt",
    "*.model", "*.tiktoken", "chat_template*", "*.py",
)


def tokenizer_files(model_dir: str | Path) -> list[Path]:
    """The directory's tokenizer files (top level only), sorted by name."""
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such model directory")
    return sorted(p for p in root.iterdir() if p.is_file()
                  and any(fnmatch.fnmatch(p.name, pattern) for pattern in TOKENIZER_FILE_PATTERNS))


def tokenizer_content_hash(model_dir: str | Path) -> str:
    """SHA-256 (16 hex digits) over the names and contents of the tokenizer files."""
    files = tokenizer_files(model_dir)
    if not files:
        raise FileNotFoundError(f"{model_dir}: no tokenizer files ({', '.join(TOKENIZER_FILE_PATTERNS)})")
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as fh:
            content = hashlib.file_digest(fh, "sha256").hexdigest()
        digest.update(f"{path.name}:{content}\n".encode())
    return digest.hexdigest()[:16]
