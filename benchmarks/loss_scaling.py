"""Time and peak memory of the local (gathered) contrastive loss against the full N x N loss as the global batch grows.

`hf_unified.losses.clip_loss` / `unicl_loss` compute only this rank's `n_local` rows against all `N` gathered
columns: the logits are `[n_local, N]`. With a fixed per-rank batch (the way a global batch grows in practice: more
ranks), memory and time are linear in `N`. The "full" alternative (every rank builds the whole `[N, N]` logits, as
a single process holding the global batch does) is quadratic.

Simulation of one rank, in one process: `losses.gather_with_grad` is replaced by a function that returns this
rank's rows (with gradient) concatenated with the other `N - n_local` rows (random unit vectors, constants here,
as received from the other ranks), i.e. exactly the tensor the all-gather produces. The library's loss code then
runs unchanged: forward and backward (the backward produces the gradient of the whole gathered tensor, as it does
under `torch.distributed`; only the reduce-scatter of it is not simulated). The full loss is the same function with
`n_local = N` and no other ranks.

Peak memory (CPU): Linux's resident-set high-water mark. Writing "5" to `/proc/self/clear_refs` resets `VmHWM` to
the current RSS; after the forward + backward, `VmHWM - RSS before` is the peak memory the loss itself needed
(inputs already allocated are not counted). Large tensors are mmap-ed by glibc and returned on free, so the figure
tracks live tensor memory; its resolution is a few MB. (`tracemalloc` cannot see torch's allocations and
the CPU profiler reports no allocation timeline, hence this method; on CUDA use `torch.cuda.max_memory_allocated`.)

Usage:

    python benchmarks/loss_scaling.py                 # D=64, 256 rows per rank, N = 1k .. 64k, full loss to 8k
    python benchmarks/loss_scaling.py --smoke         # seconds
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.nn.functional as F
from common import describe_machine, markdown_table, median

from hf_unified import losses

_REAL_GATHER = losses.gather_with_grad
_REAL_GATHER_METADATA = losses._gather_no_grad


def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _allocate_large_tensors_with_mmap() -> None:
    """Makes glibc serve every allocation above 64 KiB by mmap (and stop raising that threshold dynamically), so
    freed tensors leave the resident set at once and each measurement starts from a clean high-water mark."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class SimulatedRank:
    """Replaces `losses.gather_with_grad` so that one process sees what rank 0 of `N / n_local` ranks sees."""

    def __init__(self, others: dict[torch.dtype, torch.Tensor]):
        self.others = others  # rows of the other ranks, per dtype (float features, integer labels)

    def __call__(self, local: torch.Tensor) -> tuple[torch.Tensor, int]:
        others = self.others["labels" if not local.dtype.is_floating_point else "features"]
        if others is None or others.shape[0] == 0:
            return local, 0
        return torch.cat([local, others.reshape(-1, *local.shape[1:])]), 0  # image views arrive as [n, 1, D]

    def gather_metadata(self, local: torch.Tensor) -> torch.Tensor:
        return self(local)[0]

    def __enter__(self):
        losses.gather_with_grad = self
        losses._gather_no_grad = self.gather_metadata  # labels are gathered too (without gradient)
        return self

    def __exit__(self, *exc):
        losses.gather_with_grad, losses._gather_no_grad = _REAL_GATHER, _REAL_GATHER_METADATA


def unit_rows(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=generator), dim=-1)


def measure(loss_name: str, n_local: int, global_batch: int, dim: int, repeats: int) -> dict:
    """Median seconds and peak bytes of one forward + backward of rank 0's share of the loss."""
    generator = torch.Generator().manual_seed(global_batch)
    image = unit_rows(n_local, dim, generator).requires_grad_()
    text = unit_rows(n_local, dim, generator).requires_grad_()
    labels = torch.randint(0, 1000, (n_local,), generator=generator)
    labels[: n_local // 2] = -1
    n_other = global_batch - n_local
    # The other ranks' text rows (image rows are identical in cost; one constant block serves both gathers).
    other_features = unit_rows(n_other, dim, generator) if n_other else None
    other_labels = torch.randint(0, 1000, (n_other,), generator=generator)
    other_labels[: n_other // 2] = -1 - torch.arange(n_local, n_local + n_other // 2)  # already-unique pair ids
    scale = torch.tensor(1 / 0.07)

    def step() -> None:
        if loss_name == "clip_loss":
            loss = losses.clip_loss(image, text, scale)
        else:
            loss = losses.unicl_loss(image, text, labels, scale)
        loss.backward()
        image.grad = text.grad = None

    times, peaks = [], []
    with SimulatedRank({"features": other_features, "labels": other_labels}):
        step()  # warm-up
        for _ in range(repeats):
            gc.collect()
            have_hwm = _reset_high_water_mark()
            before = _status_bytes("VmRSS")
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
            after = _status_bytes("VmHWM")
            if have_hwm and before is not None and after is not None:
                peaks.append(after - before)
    return {"seconds": median(times), "peak_bytes": median(peaks) if peaks else float("nan")}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on busy shared cores, thread synchronisation would dominate)",
    )
    parser.add_argument("--dim", type=int, default=64, help="embedding width D")
    parser.add_argument("--local-batch", type=int, default=256, help="rows per rank (n_local), fixed")
    parser.add_argument("--global-batches", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    parser.add_argument(
        "--max-full",
        type=int,
        default=8192,
        help="largest N for the full N x N loss (beyond: skipped, it grows as N^2)",
    )
    parser.add_argument(
        "--losses", nargs="+", default=["clip_loss", "unicl_loss"], choices=["clip_loss", "unicl_loss"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.dim, args.local_batch, args.global_batches, args.max_full, args.repeats = 16, 32, [64, 128], 64, 1
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    _allocate_large_tensors_with_mmap()
    print(f"machine: {describe_machine()}")
    results = []
    for loss_name in args.losses:
        for n in args.global_batches:
            if n % args.local_batch:
                raise ValueError(f"global batch {n} is not a multiple of the per-rank batch {args.local_batch}")
            local = measure(loss_name, args.local_batch, n, args.dim, args.repeats)
            full = measure(loss_name, n, n, args.dim, args.repeats) if n <= args.max_full else None
            results.append({"loss": loss_name, "N": n, "ranks": n // args.local_batch, "local": local, "full": full})
            full_text = "skipped" if full is None else f"{full['seconds'] * 1e3:.1f} ms"
            print(f"  {loss_name} N={n}: local {local['seconds'] * 1e3:.1f} ms, full {full_text}", flush=True)

    def mb(value: float) -> str:
        return "n/a" if value != value else f"{value / 2**20:.1f}"

    rows = []
    for r in results:
        full = r["full"]
        rows.append(
            [
                r["loss"],
                r["N"],
                r["ranks"],
                f"{r['local']['seconds'] * 1e3:.1f}",
                mb(r["local"]["peak_bytes"]),
                "skipped" if full is None else f"{full['seconds'] * 1e3:.1f}",
                "skipped" if full is None else mb(full["peak_bytes"]),
                f"{4 * args.local_batch * r['N'] / 2**20:.1f}",
                f"{4 * r['N'] ** 2 / 2**20:.1f}",
            ]
        )
    print(
        f"\n### loss scaling: D={args.dim}, {args.local_batch} rows per rank (rank 0 of N/{args.local_batch}), "
        f"forward + backward, median of {args.repeats}; full loss up to N={args.max_full}"
    )
    print(
        markdown_table(
            [
                "loss",
                "global batch N",
                "ranks",
                "local ms",
                "local peak MiB",
                "full N x N ms",
                "full peak MiB",
                "one [n_local, N] fp32 matrix MiB",
                "one [N, N] fp32 matrix MiB",
            ],
            rows,
        )
    )
    return results


if __name__ == "__main__":
    main()
