"""Helpers shared by the benchmark scripts (imported as ``common`` when a script runs from ``benchmarks/``)."""

from __future__ import annotations

import resource


def sync(device: str) -> None:
    """Wait for queued GPU work so that wall-clock timings are complete."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def peak_mb(device: str) -> float:
    """Peak memory in MiB: ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS on a CPU."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device: str) -> None:
    """Start a new CUDA peak-memory window (the CPU's peak RSS cannot be reset)."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
