"""Images/s of the training data pipeline, and of UniCLIP's multi-view augmentation alone, interleaved.

Two tables, each from interleaved rounds (every round runs every candidate once, in a rotated order; the tables give
min / median / max over rounds, so a slow-down of the shared machine hits every candidate alike):

1. **pipeline**: the stream `training/train.py` reads. Local webdataset shards (the embedded synthetic "shapes"
   set, JPEG + caption + class id) streamed by `datasets`, shuffled with a buffer; `TrainStream` decodes,
   transforms, tokenises and collates batches in DataLoader workers. Transforms:

   - `crop-flip`: torchvision v2 RandomResizedCrop + flip + normalise per image (UniCL, CLIP, MS-CLIP training);
   - `multiview-2`: `MultiViewAugmentation` with 2 views, per image in the workers (what UniCLIP trained on so
     far: crop, flip, colour jitter, grayscale, blur, each view with its parameter vector);
   - `batched-2`: the workers decode to a uint8 canvas (`ImageCanvas`) and `BatchMultiViewAugmentation` makes the
     2 views of the whole batch in the main process on `--device`, as the trainer does in its step.

   `--stream-lanes` splits the stream into lanes over disjoint shards (the trainer's `stream_lanes`: workers then
   divide the raw reading instead of each reading all of it). `--compile-views` adds, beside every `batched-N`
   row, the same views with their colour jitter compiled (the trainer's `torch_compile`; compiled before timing; a
   device it cannot compile for, e.g. a host without a C compiler, says so and keeps its eager rows).

   The multi-view rows run at each of `--view-presets` (`simclr`: the strong views, the default so far; `small`:
   the mild views `auto` picks at 64 px and below).

2. **raw stream**: the undecoded rows alone (`sources.build_stream`, read as `TrainStream` reads them), by how many
   shards feed the shuffle buffer at once (`--stream-input-shards`; the trainer's `shuffle_input_shards`). With
   one stream lane every DataLoader worker reads its rank's whole raw stream, so this rate then bounds one rank's
   pipeline whatever the worker count.

3. **views only**: the augmentation on batches already decoded in memory (`--views-sizes` pixels), no stream:
   per-image `MultiViewAugmentation` against `BatchMultiViewAugmentation`, on the CPU and on `--device`.

Figures: images/s of wall time (the first batch, worker start-up, is timed separately), and images per CPU second
(pipeline table): the CPU time of this process and of its DataLoader workers (counted when they exit) over the
loader's whole life, start-up and prefetched batches included, so it slightly under-states the workers' rate.
With 0 workers and 1 torch thread, images/s is images/s per core. On 2 busy cores more than 1-2 workers compete
with each other and with the main process.

Usage:

    python benchmarks/data_pipeline.py                           # 64 px shards, workers 0 1 2, 3 rounds
    python benchmarks/data_pipeline.py --image-size 224          # bigger JPEGs (decode cost grows with pixels)
    python benchmarks/data_pipeline.py --device cuda --workers 0 1 2 4 8   # views on the GPU
    python benchmarks/data_pipeline.py --smoke
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import torch
from common import describe_machine, markdown_table
from PIL import Image
from torchvision.transforms import v2

from hf_unified.tokenization import train_caption_tokenizer
from hf_unified.training import data as data_lib
from hf_unified.training.data import synthetic_data
from hf_unified.training.data.augmentation import CLIP_MEAN, CLIP_STD, MultiViewAugmentation
from hf_unified.training.data.batch_augmentation import BatchMultiViewAugmentation, compiled_jitter


def crop_flip(size: int):
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


class Candidate:
    """One pipeline row: a transform at a view preset, with a worker count and a number of stream lanes."""

    def __init__(
        self,
        transform: str,
        preset: str | None,
        workers: int,
        image_size: int,
        device: str,
        lanes: int = 1,
        compiled: bool = False,
    ):
        self.transform, self.preset, self.workers, self.lanes = transform, preset, workers, lanes
        self.compiled = compiled
        self.views = None
        if transform == "crop-flip":
            self.image_transform = data_lib.ImageFields(crop_flip(image_size))
        elif transform.startswith("multiview-"):
            num_views = int(transform.split("-")[1])
            views = MultiViewAugmentation(num_views=num_views, size=image_size, preset=preset)
            self.image_transform = data_lib.ImageFields(views, data_lib.VIEW_FIELDS)
        elif transform.startswith("batched-"):
            num_views = int(transform.split("-")[1])
            self.views = BatchMultiViewAugmentation(
                num_views=num_views, size=image_size, preset=preset, torch_compile=compiled
            )
            self.image_transform = self.views.canvas
        else:
            raise ValueError(f"unknown transform {transform!r}: crop-flip, multiview-N or batched-N")
        self.device = torch.device(device)
        self.label = transform if preset is None else f"{transform} ({preset}{', compiled' if compiled else ''})"
        # Views are made in the main process, so it works too; per-image transforms run in the workers only.
        self.processes = workers + (self.views is not None) if workers else 1

    def loader(self, shards: Path, tokenizer, batch_size: int, shuffle_buffer: int, input_shards: int):
        classes = json.loads((shards / "classes.json").read_text())
        stream = raw_lanes(shards, shuffle_buffer, input_shards, self.lanes)
        decode = data_lib.DecodeConfig(image_transform=self.image_transform, class_names=[[c] for c in classes])
        dataset = data_lib.TrainStream(stream, decode, tokenizer, max_length=32, batch_size=batch_size, seed=0, rank=0)
        # batch_size=None: TrainStream already yields collated batches.
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.workers,
            prefetch_factor=2 if self.workers else None,
            pin_memory=self.device.type == "cuda",
        )

    def pixel_values(self, batch: dict) -> torch.Tensor:
        """What the training step gets: the batch's own views, or the views made here on the device."""
        if self.views is None:
            return batch["pixel_values"].to(self.device, non_blocking=True)
        return self.views(batch, device=self.device)["pixel_values"]


def raw_lanes(shards: Path, shuffle_buffer: int, input_shards: int, lanes: int = 1) -> list:
    """The shards' raw stream as the trainer builds it for one rank (`sources.build_lanes`; one lane by default)."""
    spec = data_lib.SourceSpec(path=str(shards), image_column="jpg", text_column="txt", label_column="cls")
    return data_lib.build_lanes([spec], 0, 0, 1, shuffle_buffer, shuffle_input_shards=input_shards, lanes=lanes)


def warm_up_compiled_jitter(device: str, sizes: set[int]) -> None:
    """Compiles the jitter's graphs before anything is timed: `torch.compile` makes one for several views (dynamic
    shapes) and one for a single view, and inductor another for views above 64 x 64 pixels (its reductions differ);
    the hue is shifted in every view the presets jitter."""
    for size in sorted(sizes):
        for num_views in (2, 1):
            views, factors = (
                torch.rand(num_views, 3, size, size, device=device),
                torch.ones(num_views, 4, device=device),
            )
            compiled_jitter()(views, factors, True)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_pipeline(candidate: Candidate, loader, batches: int) -> dict:
    cpu_start = _cpu_seconds()
    iterator = iter(loader)
    start = time.perf_counter()
    first = candidate.pixel_values(next(iterator))
    _synchronize(candidate.device)
    startup = time.perf_counter() - start
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        images += candidate.pixel_values(next(iterator)).shape[0]
    _synchronize(candidate.device)
    seconds = time.perf_counter() - start
    del iterator  # shuts the workers down (their CPU time is counted once they are joined)
    cpu = _cpu_seconds() - cpu_start
    return {
        "startup_s": startup,
        "images_per_s": images / seconds,
        "images_per_cpu_s": (images + first.shape[0]) / max(cpu, 1e-9),
        "shape": tuple(first.shape),
    }


def measure_views(augment, images: list, batch, device: torch.device, repeats: int) -> float:
    """Images/s of one multi-view augmentation: per image (a `MultiViewAugmentation`) or batched."""
    start = time.perf_counter()
    for repeat in range(repeats):
        if isinstance(augment, BatchMultiViewAugmentation):
            augment({**batch, "augmentation_seed": repeat}, device=device)
        else:
            for image in images:
                augment(image)
    _synchronize(device)
    return repeats * len(images) / (time.perf_counter() - start)


def spread(values: list[float]) -> str:
    """`median (min-max)` of per-round figures."""
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def interleaved(candidates: list, rounds: int, run) -> dict:
    """Runs every candidate once per round, rotating the order; returns candidate index -> list of results."""
    results = {index: [] for index in range(len(candidates))}
    for round_index in range(rounds):
        shift = round_index % len(candidates)
        order = list(range(len(candidates)))[shift:] + list(range(len(candidates)))[:shift]
        for index in order:
            results[index].append(run(candidates[index]))
        print(f"  round {round_index + 1}/{rounds} done", flush=True)
    return results


def pipeline_table(args, shards: Path, tokenizer) -> list[dict]:
    candidates = []
    for transform in args.transforms:
        presets = [None] if transform == "crop-flip" else args.view_presets
        compiled_too = args.device in args.compiled_devices and transform.startswith("batched-")
        for preset, workers, lanes, compiled in itertools.product(
            presets, args.workers, args.stream_lanes, (False, True) if compiled_too else (False,)
        ):
            candidates.append(Candidate(transform, preset, workers, args.image_size, args.device, lanes, compiled))

    def run(candidate: Candidate) -> dict:
        loader = candidate.loader(shards, tokenizer, args.batch_size, args.shuffle_buffer, args.shuffle_input_shards)
        return measure_pipeline(candidate, loader, args.batches)

    measured = interleaved(candidates, args.rounds, run)
    results, rows = [], []
    for index, candidate in enumerate(candidates):
        runs = measured[index]
        result = {
            "transform": candidate.transform,
            "preset": candidate.preset,
            "workers": candidate.workers,
            "lanes": candidate.lanes,
            "compiled": candidate.compiled,
            "processes": candidate.processes,
            "images_per_s": statistics.median(r["images_per_s"] for r in runs),
            "images_per_s_rounds": [r["images_per_s"] for r in runs],
            "images_per_cpu_s": statistics.median(r["images_per_cpu_s"] for r in runs),
            "startup_s": statistics.median(r["startup_s"] for r in runs),
            "shape": runs[0]["shape"],
        }
        results.append(result)
        rows.append(
            [
                candidate.label,
                candidate.workers,
                *([candidate.lanes] if len(args.stream_lanes) > 1 else []),
                candidate.processes,
                spread(result["images_per_s_rounds"]),
                f"{result['images_per_s'] / candidate.processes:.0f}",
                spread([r["images_per_cpu_s"] for r in runs]),
                f"{result['startup_s']:.2f}",
                "x".join(map(str, result["shape"])),
            ]
        )
    print(
        f"\n### pipeline: {args.image_size} px JPEG webdataset shards ({args.num_samples} samples, "
        f"{args.num_shards} shards), batch {args.batch_size}, views on {args.device}, {args.shuffle_input_shards} "
        f"shuffle input shard(s), stream lanes {args.stream_lanes}, {args.rounds} interleaved rounds x "
        f"{args.batches} timed batches; median (min-max) over rounds"
    )
    header = [
        "transform",
        "workers",
        *(["lanes"] if len(args.stream_lanes) > 1 else []),
        "processes",
        "images/s",
        "images/s per process",
        "images per CPU s",
        "first batch s",
        "batch pixel_values",
    ]
    print(markdown_table(header, rows))
    return results


def stream_table(args, shards: Path) -> list[dict]:
    """Raw rows per CPU second of the shuffled stream, by the number of shards feeding the shuffle buffer."""

    def run(input_shards: int) -> float:
        (stream,) = raw_lanes(shards, args.shuffle_buffer, input_shards)
        cpu_start, rows = _cpu_seconds(), 0
        for batch in stream.iter(batch_size=args.batch_size):  # as TrainStream reads it
            rows += len(batch["damage"])
        return rows / max(_cpu_seconds() - cpu_start, 1e-9)

    candidates = list(args.stream_input_shards)
    measured = interleaved(candidates, args.rounds, run)
    reference = candidates.index(max(candidates))
    results, rows = [], []
    for index, input_shards in enumerate(candidates):
        ratios = [value / base for value, base in zip(measured[index], measured[reference])]
        results.append({"input_shards": input_shards, "rows_per_cpu_s": measured[index]})
        rows.append(
            [
                input_shards,
                spread(measured[index]),
                f"{1e6 / statistics.median(measured[index]):.0f}",
                f"{statistics.median(ratios):.2f}x",
            ]
        )
    print(
        f"\n### raw stream: {args.num_samples} undecoded rows of {args.num_shards} shards per measurement, shuffle "
        f"buffer {args.shuffle_buffer}, {args.rounds} interleaved rounds; median (min-max) over rounds"
    )
    header = ["shuffle input shards", "rows per CPU s", "us per row", f"vs {candidates[reference]}"]
    print(markdown_table(header, rows))
    return results


def views_table(args) -> list[dict]:
    devices = ["cpu"] + ([args.device] if args.device != "cpu" else [])
    candidates = []
    for size in args.views_sizes:
        rng = np.random.default_rng(size)
        images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(64)]
        for preset in args.view_presets:
            per_image = MultiViewAugmentation(num_views=2, size=size, preset=preset)
            candidates.append(("per image", "cpu", size, preset, per_image, images, None))
            batched = BatchMultiViewAugmentation(num_views=2, size=size, preset=preset)
            batch = batched.canvas.batch(images)
            for device in devices:
                candidates.append(("batched", device, size, preset, batched, images, batch))
                if device in args.compiled_devices:
                    compiled = BatchMultiViewAugmentation(num_views=2, size=size, preset=preset, torch_compile=True)
                    candidates.append(("batched, compiled", device, size, preset, compiled, images, batch))

    def run(candidate) -> float:
        _, device, _, _, augment, images, batch = candidate
        device = torch.device(device)
        repeats = 1 if batch is None else args.views_repeats
        measure_views(augment, images[:2], batch and {k: v[:2] for k, v in batch.items()}, device, 1)  # warm-up
        return measure_views(augment, images, batch, device, repeats)

    measured = interleaved(candidates, args.rounds, run)
    results, rows = [], []
    for index, (kind, device, size, preset, *_) in enumerate(candidates):
        reference = next(
            i for i, c in enumerate(candidates) if c[0] == "per image" and c[2] == size and c[3] == preset
        )
        ratios = [b / a for a, b in zip(measured[reference], measured[index])]
        results.append(
            {"kind": kind, "device": device, "size": size, "preset": preset, "images_per_s": measured[index]}
        )
        rows.append([f"{size} px", preset, kind, device, spread(measured[index]), f"{statistics.median(ratios):.1f}x"])
    print(
        f"\n### views only: 2 views of 64 in-memory images per batch, 1 torch thread on the CPU; "
        f"{args.rounds} interleaved rounds; median (min-max) over rounds"
    )
    print(markdown_table(["views", "preset", "augmentation", "device", "images/s", "vs per image"], rows))
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir",
        default=None,
        help="where the shards are generated (default: a per-size folder in the temp directory)",
    )
    parser.add_argument("--image-size", type=int, default=64, help="stored JPEG size and output size")
    parser.add_argument("--num-samples", type=int, default=2048)
    parser.add_argument("--num-shards", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--transforms", nargs="+", default=["crop-flip", "multiview-2", "batched-2"])
    parser.add_argument("--view-presets", nargs="+", default=["simclr", "small"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches after the first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shuffle-buffer", type=int, default=256)
    parser.add_argument(
        "--shuffle-input-shards", type=int, default=10, help="shards feeding the shuffle buffer (pipeline table)"
    )
    parser.add_argument(
        "--stream-input-shards", type=int, nargs="*", default=[1, 10], help="raw stream table candidates"
    )
    parser.add_argument(
        "--stream-lanes",
        type=int,
        nargs="+",
        default=[1],
        help="lanes of the pipeline table's stream, one row each (the trainer's stream_lanes)",
    )
    parser.add_argument("--device", default="cpu", help="where batched views are made (cpu, cuda)")
    parser.add_argument("--compile-views", action="store_true", help="also every batched row with its jitter compiled")
    parser.add_argument("--views-sizes", type=int, nargs="*", default=[64, 224], help="views-only table sizes")
    parser.add_argument("--views-repeats", type=int, default=3, help="batches per batched views-only measurement")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in the main process (workers always use 1)"
    )
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.num_samples, args.num_shards = 32, 64, 2
        args.workers, args.batch_size, args.batches, args.shuffle_buffer = [0], 8, 2, 16
        args.rounds, args.view_presets, args.views_sizes, args.views_repeats = 1, ["simclr"], [16], 1
    return args


def main(argv=None) -> dict[str, list[dict]]:
    """Runs the tables; returns their rows: `{"pipeline": [...], "stream": [...], "views": [...]}` (a table not
    asked for is an empty list)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {describe_machine()}" + (f" | {describe_machine(args.device)}" if args.device != "cpu" else ""))
    root = Path(args.data_dir or Path(tempfile.gettempdir()) / "hf_unified_bench")
    shards = root / f"shapes-{args.image_size}px-{args.num_samples}"
    start = time.perf_counter()
    synthetic_data.ensure_dataset(
        shards, num_train=args.num_samples, num_eval=32, num_train_shards=args.num_shards, image_size=args.image_size
    )
    print(f"shards: {shards} (ready in {time.perf_counter() - start:.1f} s)")
    captions = [
        synthetic_data.caption(synthetic_data.sample_attributes(random.Random(i), "train"), random.Random(i))
        for i in range(200)
    ]
    tokenizer = train_caption_tokenizer(captions, vocab_size=300, model_max_length=32)
    args.compiled_devices = set()
    for device in sorted({"cpu", args.device}) if args.compile_views else ():
        start = time.perf_counter()
        try:
            warm_up_compiled_jitter(device, {args.image_size, *args.views_sizes})
        except Exception as error:  # noqa: BLE001 - e.g. no C compiler on this host: the eager rows still run
            print(f"no compiled views on {device} ({type(error).__name__}: {str(error)[:300]})")
            continue
        args.compiled_devices.add(device)
        print(f"compiled the views' jitter on {device} in {time.perf_counter() - start:.1f} s")
    return {
        "pipeline": pipeline_table(args, shards, tokenizer),
        "stream": stream_table(args, shards) if args.stream_input_shards else [],
        "views": views_table(args) if args.views_sizes else [],
    }


if __name__ == "__main__":
    main()
