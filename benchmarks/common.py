"""Helpers shared by the benchmark scripts: the repository on `sys.path`, machine description, table printing."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/x.py` from anywhere finds hf_unified
    sys.path.insert(0, str(REPO_ROOT))


def cpu_flags() -> str:
    """`avx2`, `avx512f`, `amx` presence from /proc/cpuinfo (Linux), for the machine line of every table."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown ISA"
    present = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {name}" in flags]
    return ", ".join(present) if present else "no AVX2"


def describe_machine(device: str = "cpu") -> str:
    """One line naming the hardware the numbers come from."""
    import torch

    if device.startswith("cuda"):
        return f"GPU {torch.cuda.get_device_name()} | torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = cpu
    return (
        f"CPU {model} | {os.cpu_count()} logical cores visible | torch threads {torch.get_num_threads()} | "
        f"{cpu_flags()} | torch {torch.__version__}"
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-markdown table (printed as is, pasted into benchmarks/README.md)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
