"""Which memory figures the report's tables and plots show, and what they call them.

Training (train_metrics.json) and evaluation (metrics.json, `eval_` prefixed) record the
process's peak host RSS always and, when they ran on CUDA, the caching allocator's peak
allocated and reserved GPU memory. On GPUs the question a rank or method study answers is
GPU memory (显存): where any row has it, tables and plots show it first, labelled as GPU
memory; host RSS stays, labelled as host memory. A CPU-only run shows host RSS alone.
"""
from __future__ import annotations

import pandas as pd

HOST = {"peak_memory_mb": "host RSS (MB)"}
GPU = {"peak_cuda_reserved_mb": "GPU reserved (MB)",
       "peak_cuda_allocated_mb": "GPU allocated (MB)"}


def has_values(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and frame[column].notna().any()


def gpu_columns(frame: pd.DataFrame) -> dict[str, str]:
    """The GPU memory columns that some row of `frame` has, with their labels."""
    return {c: label for c, label in GPU.items() if has_values(frame, c)}


def with_memory(columns: dict[str, str], frame: pd.DataFrame) -> dict[str, str]:
    """`columns` with the GPU memory columns `frame` has placed before host RSS, and host
    RSS labelled as such."""
    out: dict[str, str] = {}
    for column, label in columns.items():
        if column in HOST:
            out.update(gpu_columns(frame))
            label = HOST[column]
        out[column] = label
    return out


def memory_panels(frame: pd.DataFrame) -> dict[str, str]:
    """Plot panels for memory: peak reserved GPU memory when there is any, and host RSS."""
    reserved = {c: "peak GPU memory, reserved (MB)" for c in gpu_columns(frame)
                if c == "peak_cuda_reserved_mb"}
    return reserved | {"peak_memory_mb": "peak host RSS (MB)"}
