"""Where a training step's time goes: torch.profiler tables of candidates from `throughput.py`, side by side.

Each candidate runs a few warm-up steps, then `--steps` profiled steps (forward, loss, backward, AdamW). The script
prints, per candidate, the operators with the most self CPU time, and then one table comparing the self time of
each operator across candidates (ms per step), so a difference between, e.g., UniCL with CLIP towers and
transformers' CLIPModel shows up as the rows that differ.

Usage:

    python benchmarks/profile_step.py                                  # CLIPModel vs UniCL vs open_clip
    python benchmarks/profile_step.py --models "UniCL, CLIP towers (CLIP loss)" "MS-CLIP shared (attn+MLP)" \
        --group equal-width
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import common  # noqa: F401  (puts the repository on sys.path)
import throughput
import torch
from common import describe_machine, markdown_table
from torch.profiler import ProfilerActivity, profile


def profile_candidate(candidate: throughput.Candidate, steps: int, warmup: int) -> dict[str, float]:
    """Self CPU milliseconds per step, by operator name."""
    for _ in range(warmup):
        candidate.train_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            candidate.train_step()
    times: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        times[event.key] += event.self_cpu_time_total / 1e3 / steps
    return dict(times)


def main(argv=None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--group", default="towers", choices=["towers", "equal-width"])
    parser.add_argument(
        "--models", nargs="+", default=[throughput.CLIP_REFERENCE, "UniCL, CLIP towers (CLIP loss)", "open_clip CLIP"]
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    known, rest = parser.parse_known_args(argv)
    args = throughput.parse_args(rest)  # sizes, threads, device
    torch.set_num_threads(args.threads)
    print(f"machine: {describe_machine(args.device)}")
    sizes = throughput.Sizes.from_args(args)
    if known.group == "equal-width":
        sizes = sizes.equal_width(args.equal_width)
    batch = throughput.make_batch(sizes, args.device)
    builders = dict(throughput.candidates_for(known.group, sizes))
    profiles = {}
    for name in known.models:
        if name not in builders:
            raise ValueError(f"unknown candidate {name!r}; choose from {list(builders)}")
        torch.manual_seed(0)
        candidate = throughput.make_candidate(name, builders[name](), batch, args.device, args)
        profiles[name] = profile_candidate(candidate, known.steps, args.warmup)
        total = sum(profiles[name].values())
        print(f"\n{name}: {total:.1f} ms self CPU per step")

    names = list(profiles)
    keys = sorted(
        {k for p in profiles.values() for k in p}, key=lambda k: -max(p.get(k, 0.0) for p in profiles.values())
    )
    rows = [[key] + [f"{profiles[n].get(key, 0.0):.2f}" for n in names] for key in keys[: known.top]]
    rows.append(["total"] + [f"{sum(profiles[n].values()):.1f}" for n in names])
    print(f"\n### self CPU ms per training step (batch {sizes.batch_size}), top {known.top} operators")
    print(markdown_table(["operator"] + names, rows))
    return profiles


if __name__ == "__main__":
    main()
