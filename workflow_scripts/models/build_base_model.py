"""Build a `source: scratch` base model from the corpus.

A byte-level BPE tokenizer with ChatML special tokens, a small randomly initialised Qwen2,
and a short causal-LM pretraining on the plain text of the training records (no chat
template, no special tokens but the document separator), saved as an ordinary Hugging Face
model directory (see docs/artifacts.md). Like a real base model, it knows the language and
not the conversation format: that is what the adapters learn.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import read_jsonl, write_json, write_jsonl
from workflow_scripts.common.run_info import write_run_info
from workflow_scripts.data.cleaning import message_text
from workflow_scripts.models.chat_templates import CHATML_TEMPLATE

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
WARMUP_SHARE = 0.05


def read_conversations(data_files: Iterable[str]) -> list[list[dict]]:
    return [record["messages"] for path in data_files for record in read_jsonl(path)]


def message_texts(conversations: list[list[dict]]) -> Iterator[str]:
    for messages in conversations:
        for message in messages:
            yield message_text(message)


def train_tokenizer(conversations: list[list[dict]], vocab_size: int):
    """A byte-level BPE trained on the message texts, with Qwen2's pre-tokenizer and ChatML."""
    from transformers import Qwen2Tokenizer

    # An empty Qwen2 tokenizer holds only <|endoftext|>; retraining it keeps Qwen2's
    # normalizer, digit-splitting pre-tokenizer and byte-level decoder.
    tokenizer = Qwen2Tokenizer().train_new_from_iterator(
        message_texts(conversations), vocab_size, new_special_tokens=[IM_START, IM_END]
    )
    tokenizer.eos_token = IM_END
    tokenizer.pad_token = END_OF_TEXT
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def plain_text(messages: list[dict]) -> str:
    """A conversation as a plain document: its turns on separate lines, with no role names,
    chat template or special tokens, so that the base model learns the language and leaves
    the conversation format to fine-tuning, as a real base model does."""
    return "\n".join(message_text(m) for m in messages)


def pack_blocks(tokenizer, conversations: list[list[dict]], seq_len: int):
    """Plain-text documents joined by <|endoftext|>, cut into seq_len blocks."""
    import torch

    texts = [plain_text(m) for m in conversations]
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = [i for row in rows for i in row + [tokenizer.pad_token_id]]
    n_blocks = len(ids) // seq_len
    if n_blocks == 0:
        raise ValueError(f"corpus has {len(ids)} tokens, fewer than one block of {seq_len}")
    return torch.tensor(ids[: n_blocks * seq_len]).view(n_blocks, seq_len)


def qwen2_config(spec: dict, tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def log_recorder(rows: list[dict]):
    """A TrainerCallback that appends {step, loss, learning_rate, elapsed_s} to `rows`."""
    from transformers import TrainerCallback

    class LogRecorder(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                rows.append({
                    "step": state.global_step,
                    "loss": logs["loss"],
                    "learning_rate": logs["learning_rate"],
                    "elapsed_s": round(time.perf_counter() - self.start, 3),
                })

    return LogRecorder()


def pretrain(model, blocks, pretrain_spec: dict, seed: int) -> list[dict]:
    """Causal-LM pretraining on packed blocks; returns the per-step log rows.

    Trainer rather than a bare loop: at this size the model's own compute dominates each
    step, and Trainer brings the scheduler, clipping, seeding and determinism switches.
    """
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator
    from transformers.trainer_callback import PrinterCallback

    steps = pretrain_spec["steps"]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch_dir:
        args = TrainingArguments(
            output_dir=scratch_dir,
            max_steps=steps,
            per_device_train_batch_size=pretrain_spec["batch_size"],
            learning_rate=pretrain_spec["learning_rate"],
            lr_scheduler_type="cosine",
            warmup_steps=max(1, round(WARMUP_SHARE * steps)),
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=seed,
            full_determinism=True,
            use_cpu=not torch.cuda.is_available(),
        )
        # Every token is real text, so the labels are the inputs (<|endoftext|> included).
        dataset = [{"input_ids": block, "labels": block} for block in blocks]
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=default_data_collator,
            callbacks=[log_recorder(rows)],
        )
        trainer.remove_callback(PrinterCallback)  # every step is in pretrain_log.jsonl instead
        trainer.train()
    return rows


def build(
    name: str,
    spec: dict,
    seed: int,
    data_files: list[str],
    out_dir: str,
    threads: int | None = None,
) -> dict:
    """Build, pretrain and save the scratch model `name`; returns build_info."""
    import torch
    from transformers import Qwen2ForCausalLM, set_seed

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    conversations = read_conversations(data_files)
    tokenizer = train_tokenizer(conversations, spec["vocab_size"])
    pretrain_spec = spec["pretrain"]
    blocks = pack_blocks(tokenizer, conversations, pretrain_spec["seq_len"])
    tokenizer.model_max_length = spec["max_position_embeddings"]  # set after packing whole records

    set_seed(seed)
    model = Qwen2ForCausalLM(qwen2_config(spec, tokenizer))
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    rows = pretrain(model, blocks, pretrain_spec, seed)

    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_jsonl(out / "pretrain_log.jsonl", rows)
    info = {
        "name": name,
        "source": "scratch",
        "config": spec,
        "seed": seed,
        "data_files": list(data_files),
        "records": len(conversations),
        "vocab_size": len(tokenizer),
        "parameters": model.num_parameters(),
        "corpus_tokens": blocks.numel(),
        "tokens_seen": rows[-1]["step"] * pretrain_spec["batch_size"] * pretrain_spec["seq_len"],
        "initial_loss": rows[0]["loss"],
        "final_loss": rows[-1]["loss"],
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    write_json(out / "build_info.json", info)
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli_parser(__doc__)
    parser.add_argument("--name", required=True, help="the model's name in base_models")
    parser.add_argument("--config", required=True, help='JSON: {"model": {...}, "seed": 42}')
    parser.add_argument("--data", nargs="+", required=True, help="train.jsonl files")
    parser.add_argument("--out-dir", required=True, help="where the model directory is written")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's own choice)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = json.loads(args.config)
    info = build(args.name, config["model"], config["seed"], args.data, args.out_dir, args.threads)
    write_run_info(args.out_dir, config, config["seed"], args.data)
    print(json.dumps({k: info[k] for k in ("parameters", "initial_loss", "final_loss", "wall_time_s")}))


if __name__ == "__main__":
    main()
