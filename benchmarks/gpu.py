"""The GPU run: ViT-B/32 training samples/s and MFU in bf16 (SDPA; eager and `torch.compile`) of UniCL, UniCLIP and
MS-CLIP-S against transformers' `CLIPModel` and open_clip, the data pipeline's images/s per core, and the DataLoader
workers one GPU needs. Written for one H100/H200-class GPU; NOT yet run on one (no GPU was lent to this work).

Sections (each writes `<section>.json` into `--out`; `--report` reads whatever is there and writes `summary.md`):

- `throughput`: `throughput.py` on the device, eager, at ViT-B/32 dims (224 px, patch 32, ViT 768 x 12, text
  512 x 12 x 77 tokens, 512-d, batch 256): CLIPModel, open_clip, UniCL (CLIP towers), UniCLIP (2 views), and at
  equal widths (768 / 768, MS-CLIP's shared width) CLIPModel and the released MS-CLIP-S layout;
- `compile`: the same under `torch.compile` (FLOPs counted on the eager step);
- `data`: `data_pipeline.py` on 224 px JPEG shards: the single-view pipeline (UniCL / CLIP / MS-CLIP) and UniCLIP's
  batched views made on the device (eager, and with their colour jitter compiled), by worker count;
- `end-to-end` (not in the default list; minutes): `end_to_end.py --device cuda` at the same dims.

The report gives, per model, samples/s and MFU eager and compiled, the ratio to CLIPModel at the same widths and to
open_clip, and the workers needed: estimated from the pipeline's images per CPU-second with no worker (what one
core decodes and augments) and the raw stream's rows per CPU-second, which every worker reads whole (`workers_needed`;
"none" when the model outruns the raw stream), and the smallest measured worker count that kept up.

    bash benchmarks/gpu.sh                        # every default section, then the report, into $OUT
    python benchmarks/gpu.py --sections throughput --out results/
    python benchmarks/gpu.py --report --out results/
    python benchmarks/gpu.py --smoke --out /tmp/gpu-smoke      # every section on CPU at tiny sizes (the tests)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
from common import describe_machine, markdown_table, median

SECTIONS = ("throughput", "compile", "data", "end-to-end")
DEFAULT_SECTIONS = ("throughput", "compile", "data")
# Candidates of throughput.py run here, per group (its --models filter; CLIPModel is always run).
# Throughput groups and the models of each (`throughput.py --groups/--models`); patch dropout: every model type.
MODELS = {
    "towers": ("open_clip", "(CLIP loss)", "2 views"),
    "equal-width": ("MS-CLIP-S",),
    "patch-dropout": ("UniCL", "MS-CLIP"),
}
# What feeds each model: UniCLIP's workers only decode to a canvas, its views are made on the device.
PIPELINE_OF = {"UniCLIP": "batched-2"}
SINGLE_VIEW_PIPELINE = "crop-flip"


def vit_b32(args) -> list[str]:
    """throughput.py / end_to_end.py size flags (ViT-B/32; tiny under --smoke)."""
    if args.smoke:
        return ["--image-size", "32", "--patch-size", "16", "--vision-width", "64", "--vision-layers", "2",
                "--text-width", "64", "--text-layers", "1", "--text-len", "8", "--projection-dim", "32"]  # fmt: skip
    return ["--image-size", "224", "--patch-size", "32", "--vision-width", "768", "--vision-layers", "12",
            "--text-width", "512", "--text-layers", "12", "--text-len", "77", "--projection-dim", "512"]  # fmt: skip


def run_throughput(args, compiled: bool) -> dict:
    import throughput

    argv = vit_b32(args) + ["--device", args.device]
    if args.smoke:
        argv += ["--equal-width", "64", "--vocab-size", "1000", "--batch-size", "4", "--rounds", "1", "--steps", "1"]
        argv += ["--warmup", "1"] + (["--compile-backend", "aot_eager"] if compiled else [])
    else:
        argv += ["--equal-width", "768", "--batch-size", str(args.batch_size), "--rounds", "3", "--steps", "10"]
        argv += ["--warmup", "3"]
    if args.peak_tflops:
        argv += ["--peak-tflops", str(args.peak_tflops)]
    argv += ["--compile"] if compiled else []
    results = {"machine": describe_machine(args.device)}
    for group, models in MODELS.items():
        results.update(throughput.main(argv + ["--groups", group, "--models", *models]))
    return results


def data_argv(args) -> list[str]:
    """data_pipeline.py's flags for the data section. On the GPU the views are also measured with their jitter
    compiled (`--compile-views`); the CPU smoke leaves that out (compiling takes longer than the smoke itself, and
    tests/benchmarks/test_benchmarks_smoke.py runs data_pipeline.py with it)."""
    argv = ["--device", args.device, "--transforms", SINGLE_VIEW_PIPELINE, PIPELINE_OF["UniCLIP"]]
    argv += ["--view-presets", "simclr", "--data-dir", str(Path(args.out) / "shards")]
    if args.smoke:
        argv += ["--smoke"]
    else:
        argv += ["--image-size", "224", "--num-samples", "2048", "--num-shards", "8", "--batch-size", "256"]
        argv += ["--batches", "8", "--rounds", "2", "--views-sizes", "224", "--workers", *map(str, args.workers)]
        argv += ["--compile-views"]
    return argv + ["--stream-lanes", *map(str, args.stream_lanes)]


def run_data(args) -> dict:
    import data_pipeline

    return data_pipeline.main(data_argv(args))


def run_end_to_end(args) -> dict:
    import end_to_end

    argv = ["--device", args.device, "--work-dir", str(Path(args.out) / "end_to_end")]
    if args.smoke:
        argv += ["--smoke"]
    else:
        argv += vit_b32(args) + ["--batch-size", str(args.batch_size), "--workers", str(max(args.workers))]
        argv += ["--threads", "4", "--rounds", "2", "--steps", "60", "--warmup-steps", "20"]
    outcome = end_to_end.main(argv)
    return {"results": outcome["results"], "params": outcome["params"], "loads": outcome["loads"]}


RUNNERS = {
    "throughput": lambda args: run_throughput(args, compiled=False),
    "compile": lambda args: run_throughput(args, compiled=True),
    "data": run_data,
    "end-to-end": run_end_to_end,
}


EQUAL_WIDTH = " @ equal width"
CLIP_REFERENCE = "transformers CLIPModel (sdpa)"


def _rows(section: dict | None) -> dict[str, dict]:
    """Model name -> throughput row, over both groups (the equal-width group's names get `EQUAL_WIDTH`)."""
    rows = {}
    for group, results in (section or {}).items():
        if group in ("towers", "equal-width"):
            for row in results:
                rows[row["name"] + (EQUAL_WIDTH if group == "equal-width" else "")] = row
    return rows


def workers_needed(
    samples_per_s: float, pipeline: list[dict], transform: str, raw_rows_per_s: float | None = None
) -> tuple[str, str]:
    """(estimate from the per-core rates, smallest measured worker count whose images/s kept up).

    With one stream lane (the trainer's default, and what the data section runs) every worker reads the rank's whole
    raw stream (`data.TrainStream`) and decodes its share: at `R` samples/s with `W` workers each one spends
    `R / raw_rows_per_s + R * d / W` of its core, with `d = 1 / per_core - 1 / raw_rows_per_s` the rest of a
    sample's cost (the pipeline's images per CPU-s without workers; for batched views that includes the views, which
    the main process makes, so the estimate errs high). So `W = R * d / (1 - R / raw_rows_per_s)`, and no worker
    count reaches `R` at or above the raw-stream rate (`stream_lanes` a multiple of `W` lifts that bound).
    """
    # The eager rows of this transform (the data section's compiled-jitter rows are reported, not used here).
    rows = [r for r in pipeline if r["transform"] == transform and not r.get("compiled")]
    per_core = next((r["images_per_cpu_s"] for r in rows if r.get("lanes", 1) == 1 and r["workers"] == 0), None)
    if not per_core:
        estimate = "-"
    elif raw_rows_per_s is None:
        estimate = f"{math.ceil(samples_per_s / per_core)}"
    elif samples_per_s >= raw_rows_per_s:
        estimate = f"none (the raw stream reads {raw_rows_per_s:.0f} rows/s)"
    else:
        rest = max(1 / per_core - 1 / raw_rows_per_s, 0.0)
        workers = samples_per_s * rest / (1 - samples_per_s / raw_rows_per_s)
        estimate = f"{max(1, math.ceil(workers - 1e-9))}"
    measured = []
    for lanes in sorted({r.get("lanes", 1) for r in rows}):
        lane_runs = [r for r in rows if r.get("lanes", 1) == lanes]
        enough = sorted(r["workers"] for r in lane_runs if r["workers"] and r["images_per_s"] >= samples_per_s)
        found = str(enough[0]) if enough else f"> {max((r['workers'] for r in lane_runs), default=0)}"
        measured.append(found if lanes == 1 else f"{found} with {lanes} lanes")
    return estimate, ", ".join(measured) or "-"


def report(out: Path) -> str:
    """`summary.md` from the section files present in `out`."""
    loaded = {
        name: json.loads((out / f"{name}.json").read_text()) for name in SECTIONS if (out / f"{name}.json").exists()
    }
    eager, compiled = _rows(loaded.get("throughput")), _rows(loaded.get("compile"))
    pipeline = (loaded.get("data") or {}).get("pipeline", [])
    # The raw stream at the pipeline's setting (data_pipeline.py's default: 10 shuffle input shards).
    raw_rows_per_s = next(
        (median(r["rows_per_cpu_s"]) for r in (loaded.get("data") or {}).get("stream", []) if r["input_shards"] == 10),
        None,
    )
    machine = (loaded.get("throughput") or loaded.get("compile") or {}).get("machine", "unknown machine")
    header = [
        "model",
        "eager samples/s",
        "eager MFU",
        "compiled samples/s",
        "compiled MFU",
        "vs CLIPModel (eager / compiled)",
        "vs open_clip (eager / compiled)",
        "data workers needed (per-core estimate / measured)",
    ]
    rows = []
    for name in eager or compiled:
        figures = []
        for table in (eager, compiled):
            row = table.get(name)
            mfu = f"{100 * row['mfu']:.1f}%" if row and "mfu" in row else "-"
            figures += [f"{row['train_samples_per_s']:.0f}" if row else "-", mfu]
        ratios = []
        for reference in (CLIP_REFERENCE + (EQUAL_WIDTH if name.endswith(EQUAL_WIDTH) else ""), "open_clip CLIP"):
            pair = []
            for table in (eager, compiled):
                row, ref = table.get(name), table.get(reference)
                pair.append(f"{row['train_samples_per_s'] / ref['train_samples_per_s']:.2f}x" if row and ref else "-")
            ratios.append(" / ".join(pair))
        best = max((t[name]["train_samples_per_s"] for t in (eager, compiled) if name in t), default=0.0)
        transform = next((p for model, p in PIPELINE_OF.items() if name.startswith(model)), SINGLE_VIEW_PIPELINE)
        needed = " / ".join(workers_needed(best, pipeline, transform, raw_rows_per_s)) if pipeline else "-"
        rows.append([name, *figures, *ratios, needed])
    lines = [f"machine: {machine}", "", markdown_table(header, rows) if rows else "(no throughput section yet)"]
    if pipeline:
        pipe_rows = [
            [
                r["transform"] + (", jitter compiled" if r.get("compiled") else ""),
                r["workers"],
                r.get("lanes", 1),
                f"{r['images_per_s']:.0f}",
                f"{r['images_per_cpu_s']:.0f}",
            ]
            for r in pipeline
        ]
        lines += ["", markdown_table(["pipeline", "workers", "lanes", "images/s", "images per CPU-s"], pipe_rows)]
    stream = (loaded.get("data") or {}).get("stream", [])
    if stream:
        stream_rows = [[r["input_shards"], f"{median(r['rows_per_cpu_s']):.0f}"] for r in stream]
        lines += [
            "",
            markdown_table(
                ["raw stream: shuffle input shards", "rows per CPU-s (one lane: every worker reads all)"], stream_rows
            ),
        ]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=list(DEFAULT_SECTIONS), choices=SECTIONS)
    parser.add_argument("--out", default="benchmarks/results", help="folder for the section files and summary.md")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4, 8, 12])
    parser.add_argument(
        "--stream-lanes", type=int, nargs="+", default=[1], help="data section: stream lanes, e.g. 1 8 (8 shards)"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="default: from the device name (H100/H200)")
    parser.add_argument("--report", action="store_true", help="only write summary.md from the section files")
    parser.add_argument("--smoke", action="store_true", help="every code path on the CPU at tiny sizes")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device = "cpu"
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        print(f"machine: {describe_machine(args.device)}", flush=True)
        for section in args.sections:
            result = RUNNERS[section](args)
            (out / f"{section}.json").write_text(json.dumps(result, indent=2, default=str))
    text = report(out)
    print(text)
    return text


if __name__ == "__main__":
    main()
