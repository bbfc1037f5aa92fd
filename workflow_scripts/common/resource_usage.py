"""Peak memory of this process: resident set size, and on CUDA the allocator's peaks."""
from __future__ import annotations

import resource
import sys

MEMORY_KEYS = ("peak_memory_mb", "peak_cuda_allocated_mb", "peak_cuda_reserved_mb")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def peak_memory() -> dict[str, float]:
    """`peak_memory_mb` (CPU RSS) always; on CUDA also the peak memory allocated to tensors
    and the peak reserved by the caching allocator (what the GPU really had to hold)."""
    peaks = {"peak_memory_mb": round(peak_rss_mb(), 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        peaks["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        peaks["peak_cuda_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return peaks


def max_peaks(samples: list[dict]) -> dict[str, float]:
    """The largest value of each memory key over `samples` (e.g. every process of a resumed
    run); keys that no sample has are left out."""
    return {key: max(s[key] for s in samples if key in s)
            for key in MEMORY_KEYS if any(key in s for s in samples)}
