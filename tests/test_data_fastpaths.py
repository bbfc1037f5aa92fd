"""The fast paths of data preparation give exactly what the general code gives."""
from __future__ import annotations

import hashlib
import random
import unicodedata

import pytest

from workflow_scripts.data import formats
from workflow_scripts.data.cleaning import nfkc
from workflow_scripts.data.split import HashSplitter, record_id

ALPACA_KEYS = formats.resolve_columns("alpaca", None)


def test_nfkc_equals_unicodedata_on_mixed_text():
    rng = random.Random(3)
    pool = "你好，世界！？：；（）　ＡＢＣ１２３ａ\u00a0\u2026\ufe50\u3002e\u0301\u212b ab\n"
    for _ in range(3000):
        text = "".join(rng.choices(pool, k=rng.randint(0, 30)))
        assert nfkc(text) == unicodedata.normalize("NFKC", text), repr(text)


@pytest.mark.parametrize("record", [
    {"instruction": " 问 ", "input": " 补充 ", "output": " 答 "},
    {"instruction": "问", "input": "", "output": "答", "system": " 系统 "},
    {"instruction": "", "input": "只有输入", "output": "答", "system": "  "},
    {"instruction": "问", "input": None, "output": "答", "system": None, "history": None},
    {"instruction": "问", "output": "答", "history": [["早", "好"]]},
    {"instruction": "问", "output": "答", "history": []},
    {"instruction": "问", "output": 3},
    {"instruction": "问", "input": 1, "output": "答"},
    {"output": "答"},
    ["not", "an", "object"],
])
def test_plain_alpaca_path_matches_the_general_one(record):
    fast = formats._plain_alpaca(record, ALPACA_KEYS)
    if fast is None:
        return  # the general path handles it, as before
    general = dict(record, history=[["x", "y"]])  # forces the checked path, minus the pair
    expected = formats.normalize_alpaca(general, ALPACA_KEYS)
    messages = [m for m in expected.messages if m["content"] not in ("x", "y")]
    assert fast == expected._replace(messages=messages)


def reference_split(valid: float, test: float, seed: int, digest: bytes) -> str:
    """The splitter as first written: a fresh hash read as a number."""
    salt = seed.to_bytes(8, "big", signed=True)
    point = int.from_bytes(hashlib.blake2b(salt + digest, digest_size=8).digest(), "big")
    return ("test" if point < int(test * 2**64)
            else "valid" if point < int((test + valid) * 2**64) else "train")


@pytest.mark.parametrize("valid, test, seed", [(0.05, 0.05, 42), (0.3, 0.6, -5), (0, 0, 1)])
def test_splitter_matches_the_reference(valid, test, seed):
    splitter = HashSplitter(valid, test, seed)
    for i in range(5000):
        digest = hashlib.blake2b(str(i).encode(), digest_size=16).digest()
        assert splitter(digest) == reference_split(valid, test, seed, digest)
        assert record_id(digest) == digest.hex()[:16]
