"""Peak memory and time of the contrastive objective, dense and in blocks of anchor rows, as the global batch grows.

`hf_unified.losses.contrastive_objective` scores a rank's anchors against every gathered candidate. Densely
(`chunk_size=0`) it builds each side's `anchors x candidates` logits and masks at once; in blocks
(`chunk_size=None`, the default: blocks of 2^20 logits on a CPU once a side is larger) it never holds more than one
block, with the same value and gradients (`tests/core/test_losses_chunked.py`). Four points of the objective:

- `clip`: one view, every item its own positive, SupCon (= CLIP's loss);
- `unicl`: `clip` with labels (half the items of 1000 classes, half image-text pairs);
- `uniclip`: 2 views per item and the text in one space (image-image and text-text pairs too), a scale and an
  offset per domain pair, duplicate-text masking, MP-NCE; its batch counts items (3 embeddings each);
- `sigmoid`: SigLIP's loss on the CLIP point (one scale, one offset).

Two settings:

- `one process` (`--local-batch` not given): one process holds the global batch, as one device does with
  `full_batch` accumulation or a single GPU. The issue's targets live here: a 32768-batch CLIP loss and 8192 UniCLIP
  items with 2 views, forward + backward at dim 128, under 1.5 GiB peak RSS of the whole process.
- `rank 0 of N / n` (`--local-batch n`): one process computes what rank 0 of `N / n` data-parallel ranks computes:
  `losses.gather_with_grad` is replaced by a function that returns this rank's rows (with gradient) followed by the
  other ranks' rows (constant unit vectors, as received from the all-gather), and the library's code runs unchanged.

Every measurement is a fresh Python subprocess (one loss, one batch, one path), so a row's peak is that process's
whole resident-set high-water mark (`VmHWM`: the interpreter, torch, hf_unified, the inputs and the loss), as a
training process would see it; the table also gives the resident set before the inputs were made. Time is one
forward + backward (the median of 4 after a warm-up when a step takes under 2 s, else the first). Dense and chunked
subprocesses alternate round by round, so both meet the same load on a shared machine; `chunked / dense` is the
median (min-max) of the per-round ratios. "Chunked" is the default, `chunk_size=None`: the table says the rows per
block it chose for each side, or `dense` where a side stays at or below 2^20 logits. The dense path is skipped above
`--max-dense-logits` (its memory grows with anchors x candidates), both above `--max-logits` (time).

Usage:

    python benchmarks/loss_scaling.py                              # one process, N = 1k .. 32k (about 30 min)
    python benchmarks/loss_scaling.py --local-batch 1024           # rank 0 of N / 1024, N = 1k .. 64k
    python benchmarks/loss_scaling.py --smoke                      # seconds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
from common import describe_machine, markdown_table, median, status_bytes

LOSSES = ("clip", "unicl", "uniclip", "sigmoid")
PATHS = ("dense", "chunked")
TARGETS = {("clip", 32768): 1.5 * 2**30, ("uniclip", 8192): 1.5 * 2**30}  # one process, chunked: peak RSS bytes
TIME_TARGET = 1.3  # chunked / dense where dense runs


# ----------------------------------------------------------------------------------------------------------------
# The loss points


def objective_kwargs(loss: str) -> dict:
    """`contrastive_objective` arguments of a point, besides the embeddings and the per-item integers."""
    return {
        "clip": dict(variant="supcon"),
        "unicl": dict(variant="supcon"),
        "uniclip": dict(variant="mp_nce", intra_domain_pairs=True),
        "sigmoid": dict(variant="sigmoid"),
    }[loss]


def num_views(loss: str) -> int:
    return 2 if loss == "uniclip" else 1


def sides(loss: str, local: int, global_batch: int) -> list[tuple[int, int]]:
    """`(anchors, candidates)` of the image-anchor and the text-anchor side on one rank."""
    views = num_views(loss)
    if loss == "uniclip":  # both sides against all (V + 1) N embeddings
        return [(local * views, (views + 1) * global_batch), (local, (views + 1) * global_batch)]
    return [(local * views, global_batch), (local, global_batch * views)]


def default_blocks(loss: str, local: int, global_batch: int) -> str:
    """What `chunk_size=None` does on a CPU: the rows per block of each side, or `dense` for a side small enough."""
    import torch

    from hf_unified import losses

    cpu = torch.device("cpu")
    blocks = [losses._rows_per_block(rows, columns, None, cpu) for rows, columns in sides(loss, local, global_batch)]
    return " / ".join("dense" if rows is None else str(rows) for rows in blocks)


def logits_per_step(loss: str, local: int, global_batch: int) -> int:
    """Entries of the `anchors x candidates` logits of both sides (image anchors, text anchors) on one rank."""
    return sum(rows * columns for rows, columns in sides(loss, local, global_batch))


class SimulatedRank:
    """Replaces `losses.gather_with_grad` so that one process sees what rank 0 of `N / n_local` ranks sees.

    `others` holds the other ranks' rows: `"features"` `[N - n, D]` unit vectors (each serves the texts, and every
    view of the image views: equal values cost the same) and `"labels"` `[N - n]` integers (the other ranks' pair ids
    and text keys).
    """

    def __init__(self, others: dict[str, object]):
        self.others = others

    def __call__(self, local):
        others = self.others["features" if local.dtype.is_floating_point else "labels"]
        if others is None or others.shape[0] == 0:
            return local, 0
        if local.ndim == 3:  # image views [n, V, D]
            others = others[:, None].expand(-1, local.shape[1], -1)
        return self.torch.cat([local, others.to(local.dtype)]), 0

    def gather_metadata(self, local):
        return self(local)[0]

    def __enter__(self):
        import torch

        from hf_unified import losses

        self.torch, self.losses = torch, losses
        self.real = losses.gather_with_grad, losses._gather_no_grad
        losses.gather_with_grad = self
        losses._gather_no_grad = self.gather_metadata  # labels and text keys are gathered too (without gradient)
        return self

    def __exit__(self, *exc):
        self.losses.gather_with_grad, self.losses._gather_no_grad = self.real


def measure(loss: str, path: str, local: int, global_batch: int, dim: int, threads: int) -> dict:
    """One subprocess's measurement: seconds of a forward + backward and the process's peak resident set."""
    import torch
    import torch.nn.functional as F

    from hf_unified import losses

    torch.set_num_threads(threads)
    start_rss = status_bytes("VmRSS")
    generator = torch.Generator().manual_seed(global_batch)
    views = num_views(loss)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, dim, generator=generator), dim=-1)

    image = unit(local, views).requires_grad_()
    text = unit(local).requires_grad_()
    labels = text_keys = None
    if loss == "unicl":
        labels = torch.randint(0, 1000, (local,), generator=generator)
        labels[: local // 2] = -1
    if loss == "uniclip":
        text_keys = torch.randint(0, local, (local,), generator=generator)  # some captions repeat
    if loss == "uniclip":
        scale, offset = torch.tensor([20.0, 14.0, 20.0]), torch.tensor([0.9, 0.0, 0.75])
    elif loss == "sigmoid":
        scale, offset = torch.tensor([10.0]), torch.tensor([1.0])
    else:
        scale, offset = torch.tensor([1 / 0.07]), None
    scale.requires_grad_()
    if offset is not None:
        offset.requires_grad_()
    other = global_batch - local
    others = {
        "features": unit(other) if other else None,
        "labels": -1 - torch.arange(local, global_batch),  # other ranks' items: pairs of their own
    }
    chunk_size = 0 if path == "dense" else None

    def step() -> float:
        begin = time.perf_counter()
        value = losses.contrastive_objective(
            image, text, scale, offset, labels, text_keys, chunk_size=chunk_size, **objective_kwargs(loss)
        )
        value.backward()
        image.grad = text.grad = scale.grad = None
        if offset is not None:
            offset.grad = None
        return time.perf_counter() - begin

    with SimulatedRank(others):
        first = step()
        times = [step() for _ in range(4)] if first < 2.0 else [first]
    return {"seconds": median(times), "peak_bytes": status_bytes("VmHWM"), "start_bytes": start_rss}


def run_child(loss: str, path: str, local: int, global_batch: int, dim: int, threads: int) -> dict:
    """`measure` in a fresh interpreter (its peak is its own)."""
    spec = json.dumps(dict(loss=loss, path=path, local=local, global_batch=global_batch, dim=dim, threads=threads))
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", spec], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on busy shared cores)")
    parser.add_argument("--dim", type=int, default=128, help="embedding width D")
    parser.add_argument(
        "--local-batch",
        type=int,
        default=None,
        help="rows of this rank (rank 0 of N / n, simulated); default: one process holds the global batch",
    )
    parser.add_argument(
        "--global-batches", type=int, nargs="+", help="default: 1k .. 64k (--smoke: 64 and 128); UniCLIP counts items"
    )
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--rounds", type=int, default=3, help="dense/chunked rounds where dense runs (else 1)")
    parser.add_argument(
        "--max-dense-logits",
        type=float,
        default=2**28,
        help="skip the dense path above this many logits per step (both sides; its memory grows with them)",
    )
    parser.add_argument(
        "--max-logits", type=float, default=2**31, help="skip both paths above this many logits per step (time)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.dim, args.rounds, args.max_dense_logits = 16, 1, 2 * 64 * 64
    if args.global_batches is None:
        args.global_batches = [64, 128] if args.smoke else [1024 << k for k in range(7)]
    return args


def paths_to_measure(loss: str, local: int, global_batch: int, args) -> tuple[str, ...]:
    """Both paths, only the chunked one above `--max-dense-logits`, none above `--max-logits`."""
    logits = logits_per_step(loss, local, global_batch)
    if logits > args.max_logits:
        return ()
    return PATHS if logits <= args.max_dense_logits else ("chunked",)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))))
        return []
    print(f"machine: {describe_machine()} (torch threads per measurement: {args.threads})")
    results = []
    for loss in args.losses:
        for n in args.global_batches:
            local = n if args.local_batch is None else args.local_batch
            if n % local:
                raise ValueError(f"global batch {n} is not a multiple of the per-rank batch {local}")
            logits = logits_per_step(loss, local, n)
            paths = paths_to_measure(loss, local, n, args)
            if not paths:
                print(f"  {loss} N={n}: skipped ({logits:.3g} logits > --max-logits)", flush=True)
                continue
            runs = {path: [] for path in PATHS}
            for _ in range(args.rounds if len(paths) > 1 else 1):
                for path in paths:
                    runs[path].append(run_child(loss, path, local, n, args.dim, args.threads))
            row = {
                "loss": loss,
                "N": n,
                "ranks": n // local,
                "logits": logits,
                "blocks": default_blocks(loss, local, n),
            }
            for path in PATHS:
                row[path] = (
                    {
                        "seconds": median([r["seconds"] for r in runs[path]]),
                        "peak_bytes": max(r["peak_bytes"] for r in runs[path]),
                        "start_bytes": median([r["start_bytes"] for r in runs[path]]),
                    }
                    if runs[path]
                    else None
                )
            row["ratios"] = [c["seconds"] / d["seconds"] for c, d in zip(runs["chunked"], runs["dense"])]
            results.append(row)
            dense = row["dense"]
            print(
                f"  {loss} N={n}: chunked {row['chunked']['seconds'] * 1e3:.0f} ms, "
                f"{row['chunked']['peak_bytes'] / 2**20:.0f} MiB; dense "
                + (
                    "skipped"
                    if dense is None
                    else f"{dense['seconds'] * 1e3:.0f} ms, {dense['peak_bytes'] / 2**20:.0f} MiB"
                ),
                flush=True,
            )
    print_tables(results, args)
    return results


def print_tables(results: list[dict], args) -> None:
    def mib(value) -> str:
        return f"{value / 2**20:.0f}"

    rows = []
    for r in results:
        dense, chunked, ratios = r["dense"], r["chunked"], r["ratios"]
        ratio = f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "n/a"
        rows.append(
            [
                r["loss"],
                r["N"],
                r["ranks"],
                f"{r['logits'] / 1e6:.0f}",
                r["blocks"],
                "skipped" if dense is None else f"{dense['seconds'] * 1e3:.0f}",
                "skipped" if dense is None else mib(dense["peak_bytes"]),
                f"{chunked['seconds'] * 1e3:.0f}",
                mib(chunked["peak_bytes"]),
                ratio,
            ]
        )
    setting = "one process holds the global batch" if args.local_batch is None else f"rank 0 of N / {args.local_batch}"
    start = median([r["chunked"]["start_bytes"] for r in results])
    print(
        f"\n### loss scaling: {setting}, D={args.dim}, forward + backward; peak = whole-process peak RSS (the "
        f"process held {start / 2**20:.0f} MiB before its inputs); chunked/dense = median (min-max) of "
        f"{args.rounds} interleaved rounds"
    )
    print(
        markdown_table(
            [
                "loss",
                "global batch N",
                "ranks",
                "logits per step (M)",
                "default: rows per block (image / text anchors)",
                "dense ms",
                "dense peak MiB",
                "chunked ms",
                "chunked peak MiB",
                "chunked / dense time",
            ],
            rows,
        )
    )
    if args.local_batch is None:
        by_key = {(r["loss"], r["N"]): r for r in results}
        for (loss, n), limit in TARGETS.items():
            if (loss, n) in by_key:
                peak = by_key[loss, n]["chunked"]["peak_bytes"]
                verdict = "met" if peak < limit else "NOT met"
                print(f"target {loss} N={n}: peak {mib(peak)} MiB < {mib(limit)} MiB: {verdict}")
    # Where the default keeps both sides dense, the two paths are one computation and their ratio is noise.
    ratios = [median(r["ratios"]) for r in results if r["ratios"] and r["blocks"] != "dense / dense"]
    if ratios:
        verdict = "met" if max(ratios) <= TIME_TARGET else "NOT met"
        print(
            f"target chunked / dense time <= {TIME_TARGET} where dense runs and the default chunks: worst median "
            f"{max(ratios):.2f}: {verdict}"
        )


if __name__ == "__main__":
    main()
