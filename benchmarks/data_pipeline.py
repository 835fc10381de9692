"""Decoded and augmented images/s of the training data pipeline, by DataLoader worker count.

The pipeline is the one `training/train.py` uses: local webdataset shards (the embedded synthetic "shapes" set,
JPEG + caption + class id) streamed by `datasets.load_dataset("webdataset", streaming=True)`, shuffled with a
buffer, then `hf_unified.training.data.TrainStream`
decodes, augments, tokenises and collates batches in DataLoader workers.

Transforms:

- `crop-flip`: torchvision v2 RandomResizedCrop + horizontal flip + normalise (UniCL, CLIP, MS-CLIP training);
- `multiview-2`: `hf_unified.training.augmentation.MultiViewAugmentation` with 2 views (crop, flip, colour jitter,
  grayscale,
  blur, each view with its parameter vector), what UniCLIP trains on.

The first batch (worker start-up, shard opening) is timed separately; images/s counts the following batches. With
W workers each worker reads the whole stream and decodes every W-th batch (exact resumption), so "per worker"
divides by W. On 2 cores more than 1-2 workers compete with each other and with the main process.

Usage:

    python benchmarks/data_pipeline.py                       # 64 px shards, workers 0 1 2, prints a table
    python benchmarks/data_pipeline.py --image-size 224      # bigger JPEGs (decode cost grows with pixels)
    python benchmarks/data_pipeline.py --smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
import torch
from common import describe_machine, markdown_table
from torchvision.transforms import v2

from hf_unified.training import data as data_lib
from hf_unified.training import synthetic_data
from hf_unified.training.augmentation import MultiViewAugmentation
from hf_unified.training.tokenization import train_caption_tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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


def build_loader(
    shards: Path, transform_name: str, image_size: int, tokenizer, batch_size: int, workers: int, shuffle_buffer: int
):
    multi_view = transform_name.startswith("multiview")
    transform = (
        MultiViewAugmentation(num_views=int(transform_name.split("-")[1]), size=image_size)
        if multi_view
        else crop_flip(image_size)
    )
    classes = json.loads((shards / "classes.json").read_text())
    spec = data_lib.SourceSpec(path=str(shards), image_column="jpg", text_column="txt", label_column="cls")
    stream = data_lib.build_stream([spec], seed=0, rank=0, world_size=1, shuffle_buffer_size=shuffle_buffer)
    decode = data_lib.DecodeConfig(
        image_transform=transform, class_names=[[c] for c in classes], multi_view=multi_view
    )
    dataset = data_lib.TrainStream(stream, decode, tokenizer, max_length=32, batch_size=batch_size, seed=0, rank=0)
    # batch_size=None: TrainStream already yields collated batches.
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, persistent_workers=False, prefetch_factor=2 if workers else None
    )


def measure(loader, batches: int) -> dict:
    iterator = iter(loader)
    start = time.perf_counter()
    first = next(iterator)
    startup = time.perf_counter() - start
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        images += batch["pixel_values"].shape[0]
    seconds = time.perf_counter() - start
    del iterator  # shuts the workers down
    return {"startup_s": startup, "images_per_s": images / seconds, "shape": tuple(first["pixel_values"].shape)}


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
    parser.add_argument("--transforms", nargs="+", default=["crop-flip", "multiview-2"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches after the first")
    parser.add_argument("--shuffle-buffer", type=int, default=256)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in the main process (workers always use 1)"
    )
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.num_samples, args.num_shards = 32, 64, 2
        args.workers, args.batch_size, args.batches, args.shuffle_buffer = [0], 8, 2, 16
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {describe_machine()}")
    root = Path(args.data_dir or Path(tempfile.gettempdir()) / "hf_unified_bench")
    shards = root / f"shapes-{args.image_size}px-{args.num_samples}"
    start = time.perf_counter()
    synthetic_data.ensure_dataset(
        shards, num_train=args.num_samples, num_eval=32, num_train_shards=args.num_shards, image_size=args.image_size
    )
    print(f"shards: {shards} (ready in {time.perf_counter() - start:.1f} s)")
    captions = [
        synthetic_data.caption(
            synthetic_data.sample_attributes(__import__("random").Random(i), "train"), __import__("random").Random(i)
        )
        for i in range(200)
    ]
    tokenizer = train_caption_tokenizer(captions, vocab_size=300, model_max_length=32)

    results = []
    for transform_name in args.transforms:
        for workers in args.workers:
            loader = build_loader(
                shards, transform_name, args.image_size, tokenizer, args.batch_size, workers, args.shuffle_buffer
            )
            result = measure(loader, args.batches)
            result.update(transform=transform_name, workers=workers)
            results.append(result)
            print(f"  {transform_name} workers={workers}: {result['images_per_s']:.0f} images/s", flush=True)

    rows = [
        [
            r["transform"],
            r["workers"],
            f"{r['images_per_s']:.0f}",
            f"{r['images_per_s'] / max(1, r['workers']):.0f}",
            f"{r['startup_s']:.2f}",
            "x".join(map(str, r["shape"])),
        ]
        for r in results
    ]
    print(
        f"\n### data pipeline: {args.image_size} px JPEG webdataset shards ({args.num_samples} samples, "
        f"{args.num_shards} shards), batch {args.batch_size}, {args.batches} timed batches"
    )
    print(
        markdown_table(
            ["transform", "workers", "images/s", "images/s per worker", "first batch s", "batch pixel_values"], rows
        )
    )
    return results


if __name__ == "__main__":
    main()
