"""An Ollama Modelfile beside a GGUF: FROM, the chat template as Ollama's TEMPLATE, the stop
tokens, and the decoding settings the evaluation used.

Only template families this module can translate exactly get a TEMPLATE: ChatML (Qwen's,
the scratch model's), recognised by rendering probe conversations with the tokenizer's own
template. Any other family is said in the file and in the result, never guessed.
"""
from __future__ import annotations

import json
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser

CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n")
PROBE = [{"role": "system", "content": "S1"}, {"role": "user", "content": "U1"},
         {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]


def chatml(messages: list[dict]) -> str:
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def template_family(tokenizer) -> tuple[str | None, str | None]:
    """("chatml", default system prompt or None) when the tokenizer's template renders the
    probes exactly as ChatML does; (None, why) otherwise."""
    def render(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    if not tokenizer.chat_template:
        return None, "the tokenizer has no chat template"
    if render(PROBE) != chatml(PROBE):
        return None, "its chat template does not render as ChatML"
    plain = render(PROBE[1:])
    if plain == chatml(PROBE[1:]):
        return "chatml", None
    head = "<|im_start|>system\n"
    system, sep, rest = plain.removeprefix(head).partition("<|im_end|>\n")
    if plain.startswith(head) and sep and head + system + sep + rest == chatml(
            [{"role": "system", "content": system}, *PROBE[1:]]):
        return "chatml", system  # Qwen2.5's default system prompt
    return None, "its chat template adds text ChatML does not"


def go_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def parameters(evaluation: dict, stops: list[str], context: int) -> list[str]:
    """Ollama PARAMETER lines for the evaluation's decoding (greedy: temperature 0)."""
    lines = [f"PARAMETER stop {go_string(s)}" for s in stops]
    lines += [f"PARAMETER num_predict {evaluation['max_new_tokens']}", f"PARAMETER num_ctx {context}"]
    if evaluation["do_sample"]:
        lines += [f"PARAMETER temperature {evaluation['temperature']}",
                  f"PARAMETER top_p {evaluation['top_p']}", f"PARAMETER top_k {evaluation['top_k']}"]
    else:
        lines.append("PARAMETER temperature 0")
    if evaluation.get("repetition_penalty", 1.0) != 1.0:
        lines.append(f"PARAMETER repeat_penalty {evaluation['repetition_penalty']}")
    return lines


def modelfile(gguf_name: str, tokenizer, evaluation: dict, stops: list[str],
              context: int) -> tuple[str, str | None]:
    """The Modelfile's text, and why it has no TEMPLATE (None when it has one)."""
    family, detail = template_family(tokenizer)
    lines = [f"FROM ./{gguf_name}"]
    if family == "chatml":
        lines.append(f'TEMPLATE """{CHATML_TEMPLATE}"""')
        if detail:
            lines.append(f"SYSTEM {go_string(detail)}")
        why = None
    else:
        why = f"no TEMPLATE: {detail}; Ollama's own template would not match the evaluation's"
        lines.append(f"# {why}")
    return "\n".join(lines + parameters(evaluation, stops, context)) + "\n", why


def write_modelfile(merged_dir: Path, gguf: Path, evaluation: dict, out: Path) -> str | None:
    """Write the Modelfile for `gguf` (a file beside `out`); return why it has no TEMPLATE."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    generation = json.loads((merged_dir / "generation_config.json").read_text(encoding="utf-8"))
    stops = tokenizer.convert_ids_to_tokens(generation["eos_token_id"])
    positions = getattr(AutoConfig.from_pretrained(merged_dir), "max_position_embeddings", None)
    context = min(evaluation["max_length"], positions or evaluation["max_length"])
    text, why = modelfile(gguf.name, tokenizer, evaluation, stops, context)
    out.write_text(text, encoding="utf-8")
    return why


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--merged-dir", required=True, type=Path,
                        help="the merged export (tokenizer, generation_config.json)")
    parser.add_argument("--gguf", required=True, type=Path, help="the GGUF the Modelfile names")
    parser.add_argument("--evaluation", required=True, help="the evaluation settings as JSON")
    parser.add_argument("--out", required=True, type=Path, help="the Modelfile")
    args = parser.parse_args(argv)
    why = write_modelfile(args.merged_dir, args.gguf, json.loads(args.evaluation), args.out)
    print(why or "TEMPLATE: ChatML")


if __name__ == "__main__":
    main()
