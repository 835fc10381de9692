"""Helpers shared by every benchmark script: the repository on `sys.path`, the machine line, statistics (mean +- std,
same-seed differences with a t-interval), markdown tables, the CPU speed benchmarks' size arguments and the MS-CLIP-S
layout at given sizes. The training studies' own helpers are in `studies.py`.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
from collections.abc import Sequence
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


# ----------------------------------------------------------------------------------------------------------------
# Statistics and tables


def add_size_arguments(parser: argparse.ArgumentParser, text_len_help: str | None = None) -> None:
    """The tower dims and batch of the CPU speed benchmarks (`throughput.Sizes.from_args` reads them; defaults:
    the `towers` group). Here, not in throughput.py, so that a script parses them without importing torch."""
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--vision-width", type=int, default=192)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--text-width", type=int, default=128)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--text-len", type=int, default=32, help=text_len_help)
    parser.add_argument("--projection-dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired_difference(values: Sequence[float], reference: Sequence[float], confidence: float = 0.95):
    """The mean same-seed difference `values[i] - reference[i]` and the half-width of its `confidence` interval
    (Student's t with `n - 1` degrees of freedom; NaN for a single pair)."""
    from scipy import stats

    if len(values) != len(reference) or not values:
        raise ValueError(f"paired_difference needs two equally long lists, got {len(values)} and {len(reference)}")
    differences = [a - b for a, b in zip(values, reference)]
    mean = statistics.mean(differences)
    if len(differences) < 2:
        return mean, float("nan")
    quantile = stats.t.ppf((1 + confidence) / 2, len(differences) - 1)
    return mean, quantile * statistics.stdev(differences) / math.sqrt(len(differences))


def percent_spread(values: Sequence[float]) -> str:
    """`"mean +- std"` of fractions, in percent."""
    mean, std = spread(list(values))
    return f"{100 * mean:.1f} +- {100 * std:.1f}"


def percent_difference(values: Sequence[float], reference: Sequence[float]) -> str:
    """`"+d [lo, hi]"`: the same-seed difference in percentage points with its 95% interval."""
    mean, half = paired_difference(values, reference)
    if math.isnan(half):
        return f"{100 * mean:+.1f}"
    return f"{100 * mean:+.1f} [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-markdown table (printed as is, pasted into the script's page, benchmarks/<script>.md)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Model layouts


def msclip_s_layout(width: int, layers: int, image_size: int, patch_size: int) -> dict:
    """The released MS-CLIP-S layout at these sizes (exactly the released one at ViT-B/32: 12 layers, patch 32): a
    conv stem whose total stride is the patch size, and a parallel CNN branch of stride-2 stages (at most one per
    vision block) whose adapters are spread evenly over the vision blocks."""
    stem_stages = int(math.log2(patch_size)) - 1
    branch = min(layers - 1, stem_stages + 1)
    if branch < 1:
        raise ValueError("the MS-CLIP-S layout needs at least 2 layers (one vision block for the parallel branch)")
    first_size = image_size // 2  # after branch stage 0
    grid = image_size // patch_size
    return {
        "stem_strides": [2] * stem_stages,
        "stem_channels": [max(8, width >> (stem_stages - i)) for i in range(stem_stages)] + [width],
        "parallel_strides": [2] * branch,
        "parallel_channels": [max(8, width >> (branch - 1 - i)) for i in range(branch)],
        "parallel_t2b_kernels": [first_size // grid >> i for i in range(branch)],
        "parallel_lateral_layers": [(k + 1) * layers // (branch + 1) for k in range(branch)],
    }


# Process memory, as the memory benchmarks read it (loss_scaling.py, large_batch.py).


def status_bytes(key: str) -> int | None:
    """A field of this process's `/proc/self/status` in bytes (`VmRSS`, `VmHWM`), None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def allocate_large_tensors_with_mmap() -> None:
    """Makes glibc serve every allocation above 64 KiB by mmap (and stop raising that threshold dynamically), so
    freed tensors leave the resident set at once (`large_batch.py` resets the high-water mark between steps)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def reset_high_water_mark() -> bool:
    """Resets this process's resident-set high-water mark (`VmHWM`); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
