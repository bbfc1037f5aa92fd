"""Every YAML snippet in the README and docs/ is a config the schema accepts (merged into the
default config, since most show one part of it), or, where its page says it belongs in a
profile, keys that profile has; and the README's sample config error is what `validate`
prints for that key."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from workflow_scripts.common.config import ConfigError, deep_merge, validate

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)
PROFILE = re.compile(r"`(profiles/\w+/config\.yaml)`")
TOP_KEY = re.compile(r"^([\w-]+):")
PLACEHOLDER = re.compile(r"<[\w ]+>")  # `revision: <commit sha>`: a value the reader fills in


def snippets(lang: str) -> list[tuple[str, str, str]]:
    """(page:line, the text since the previous fence, the block's body) of each `lang` block."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        last = 0
        for m in FENCE.finditer(text):
            if m.group(2) == lang:
                where = f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
                body = "".join(line[len(m.group(1)):] + "\n"
                               for line in m.group(3).splitlines())
                found.append((where, text[last:m.start()], body))
            last = m.end()
    return found


def fragments(body: str) -> list[dict]:
    """A block may list alternatives for one key (three `judge:` lines): a top-level key seen
    before starts the next fragment."""
    parts, seen = [[]], set()
    for line in body.splitlines():
        key = TOP_KEY.match(line)
        if key and key.group(1) in seen:
            parts.append([])
            seen = set()
        if key:
            seen.add(key.group(1))
        parts[-1].append(line)
    return [yaml.safe_load(PLACEHOLDER.sub("a" * 40, "\n".join(lines))) for lines in parts]


def key_paths(mapping: dict, prefix: tuple = ()) -> set[tuple]:
    paths = set()
    for key, value in mapping.items():
        paths.add(prefix + (key,))
        if isinstance(value, dict):
            paths |= key_paths(value, prefix + (key,))
    return paths


YAML_BLOCKS = snippets("yaml")
DEFAULT = yaml.safe_load((ROOT / "config/config.yaml").read_text(encoding="utf-8"))


def test_the_pages_have_config_snippets():
    assert len(YAML_BLOCKS) >= 10
    assert any("judge" in f for _, _, body in YAML_BLOCKS for f in fragments(body))


@pytest.mark.parametrize("where,before,body", YAML_BLOCKS, ids=[w for w, _, _ in YAML_BLOCKS])
def test_yaml_snippet_validates(where, before, body):
    profile = PROFILE.findall(before.rstrip().split("\n\n")[-1])  # the paragraph above
    for fragment in fragments(body):
        assert isinstance(fragment, dict), where
        if profile:  # the page says this goes into a profile
            keys = yaml.safe_load((ROOT / profile[-1]).read_text(encoding="utf-8"))
            assert key_paths(fragment) <= key_paths(keys), f"{where}: not in {profile[-1]}"
            continue
        try:
            validate(deep_merge(DEFAULT, fragment), source=where)
        except ConfigError as err:
            pytest.fail(str(err))


def test_a_wrong_snippet_would_be_found():
    with pytest.raises(ConfigError, match="lora.rr"):
        validate(deep_merge(DEFAULT, fragments("defaults:\n  lora: {rr: 8}\n")[0]))
    assert len(fragments("judge: {model: a}\njudge: {model: b}\nseed: 1\n")) == 2


def test_readme_config_error_is_what_validate_says():
    [(_, _, sample)] = [s for s in snippets("") if s[2].startswith("invalid config in")]
    source = sample.split("invalid config in ", 1)[1].split(":\n", 1)[0]
    key = re.search(r"unknown key (\S+)", sample).group(1)
    experiment, *path, bad = key.split(".")[1:]
    config = deep_merge(DEFAULT, {"experiments": {experiment: {
        "base_model": "tiny-zh", "dataset": "lccc"}}})
    config["experiments"][experiment].setdefault(path[0], {})[bad] = 8
    with pytest.raises(ConfigError) as err:
        validate(config, source=source)
    assert str(err.value) == sample.rstrip("\n")
