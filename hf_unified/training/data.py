"""Streaming training and evaluation data for the dual encoders, built on `datasets`.

A *source* is one streamed dataset: local webdataset shards (img2dataset layout), parquet files, an imagefolder
with a metadata file, or a Hub dataset id. Each source names its image column and a text column, a label column, or
both. Sources are mixed with `interleave_datasets(probabilities=...)` (UniCL's balanced image-label / image-text
mix is two sources at 0.5 each), split per rank with `split_dataset_by_node`, shuffled with a buffer, and decoded and
augmented in DataLoader workers.

Exact resumption. `datasets`' own `IterableDataset.load_state_dict` drops the shuffle buffer's contents and, without
torchdata's `StatefulDataLoader`, cannot see the workers' positions. The stream here is therefore a pure function
of `(seed, rank, position)`: it is re-created with the same seed and fast-forwarded (`skip`, on undecoded bytes)
past what was consumed, and every random choice of decoding/augmentation is seeded by the batch index. So a resumed
run sees exactly the batches an uninterrupted run would have seen, with any shuffle buffer and any worker count.
`TrainStream.state_dict()` is what the checkpoints store. The price: every DataLoader worker reads (but does not
decode) the rank's whole raw stream, so raw reads grow with the worker count; decoding and augmentation, the costly
part, are split between the workers.

Corrupt or incomplete samples (undecodable image, missing text/label) are dropped in the workers and counted in
every batch (`num_skipped`), never raised. A column name that a source lacks raises `ValueError` when the source is
opened, before any training step.
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from datasets import Image as ImageFeature
from datasets import IterableDataset, interleave_datasets, load_dataset
from datasets.distributed import split_dataset_by_node
from PIL import Image

FORMATS = ("webdataset", "parquet", "imagefolder", "hub")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


@dataclass
class SourceSpec:
    """One training or evaluation source.

    Args:
        path: a directory or glob of `.tar` shards, of `.parquet` files, an imagefolder directory, or a Hub id.
        image_column: the image column (`"jpg"` for img2dataset shards, `"image"` for imagefolder).
        text_column: caption column, or None.
        label_column: integer class column, or None. A source with labels and no text gets a prompt built from the
            class name (UniCL's image-label data).
        probability: sampling weight when several sources are mixed.
        format: one of `FORMATS`, or None to detect it from `path`.
        split: split name for Hub and imagefolder datasets.
    """

    path: str
    image_column: str = "jpg"
    text_column: str | None = "txt"
    label_column: str | None = None
    probability: float = 1.0
    format: str | None = None
    split: str = "train"
    name: str = field(default="")

    def __post_init__(self):
        self.text_column = self.text_column or None
        self.label_column = self.label_column or None
        if self.text_column is None and self.label_column is None:
            raise ValueError(f"source {self.path!r} needs a text column, a label column or both")
        if self.format is None:
            self.format = detect_format(self.path)
        if self.format not in FORMATS:
            raise ValueError(f"source {self.path!r}: format must be one of {FORMATS}, got {self.format!r}")
        self.name = self.name or self.path


def _files(path: str, suffixes: Sequence[str]) -> list[str]:
    if os.path.isdir(path):
        return sorted(f for f in glob.glob(os.path.join(path, "*")) if f.endswith(tuple(suffixes)))
    return sorted(f for f in glob.glob(path) if f.endswith(tuple(suffixes)))


def detect_format(path: str) -> str:
    """`webdataset` for `.tar` files or a folder of them, `parquet` likewise, `imagefolder` for another local
    folder, `hub` for anything that does not exist locally."""
    if _files(path, (".tar",)):
        return "webdataset"
    if _files(path, (".parquet",)):
        return "parquet"
    if os.path.isdir(path):
        return "imagefolder"
    if any(ch in path for ch in "*?[") or path.startswith((".", "/")):
        raise ValueError(f"no .tar or .parquet files match {path!r}")
    return "hub"


def open_source(spec: SourceSpec) -> IterableDataset:
    """Streams one source with the image column left undecoded (bytes), checking its column names.

    Raises:
        ValueError: the source lacks a named column (the message lists the columns it has).
    """
    if spec.format == "webdataset":
        dataset = load_dataset(
            "webdataset", data_files={"train": _files(spec.path, (".tar",))}, split="train", streaming=True
        )
    elif spec.format == "parquet":
        dataset = load_dataset(
            "parquet", data_files={"train": _files(spec.path, (".parquet",))}, split="train", streaming=True
        )
    elif spec.format == "imagefolder":
        dataset = load_dataset("imagefolder", data_dir=spec.path, split=spec.split, streaming=True)
    else:
        dataset = load_dataset(spec.path, split=spec.split, streaming=True)
    columns = list(dataset.features) if dataset.features is not None else list(next(iter(dataset.take(1))))
    wanted = {"image_column": spec.image_column, "text_column": spec.text_column, "label_column": spec.label_column}
    for role, column in wanted.items():
        if column is not None and column not in columns:
            raise ValueError(
                f"source {spec.name!r} has no column {column!r} (given as {role}); its columns are {columns}"
            )
    if dataset.features is not None and isinstance(dataset.features[spec.image_column], ImageFeature):
        dataset = dataset.cast_column(spec.image_column, ImageFeature(decode=False))
    keep = [c for c in wanted.values() if c is not None]

    def standardise(example: dict) -> dict:
        return {
            "image": example[spec.image_column],
            "text": example[spec.text_column] if spec.text_column else None,
            "label": example[spec.label_column] if spec.label_column else None,
        }

    # Standard columns so that sources with different layouts can be interleaved.
    return dataset.select_columns(keep).map(standardise, remove_columns=keep)


def build_stream(
    specs: Sequence[SourceSpec], seed: int, rank: int, world_size: int, shuffle_buffer_size: int
) -> IterableDataset:
    """Mixed (by `probability`), shuffled, per-rank stream of undecoded `{image, text, label}` examples."""
    datasets = [open_source(spec) for spec in specs]
    if len(datasets) > 1:
        total = sum(spec.probability for spec in specs)
        if total <= 0 or any(spec.probability < 0 for spec in specs):
            raise ValueError(
                f"source probabilities must be >= 0 with a positive sum, got {[s.probability for s in specs]}"
            )
        stream = interleave_datasets(
            datasets,
            probabilities=[spec.probability / total for spec in specs],
            seed=seed,
            stopping_strategy="all_exhausted",
        )
    else:
        stream = datasets[0]
    if shuffle_buffer_size > 0:
        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
    return split_dataset_by_node(stream, rank=rank, world_size=world_size)


def load_class_names(path: str | None) -> list[list[str]] | None:
    """Class names from a JSON list (an entry may be a list of synonyms) or a text file (one class a line,
    synonyms separated by commas)."""
    if not path:
        return None
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        names = json.loads(text)
        if isinstance(names, dict):  # {"0": [...], "1": [...]}
            names = [names[k] for k in sorted(names, key=int)]
    else:
        names = [[s.strip() for s in line.split(",") if s.strip()] for line in text.splitlines() if line.strip()]
    return [[n] if isinstance(n, str) else list(n) for n in names]


class LabelVocabulary:
    """Maps captions that mention a class (any name or synonym as whole words, case-insensitive) to its label.

    The longest matching name wins ("red panda" over "panda"); a caption that mentions two different classes keeps
    no label (it is ambiguous).
    """

    def __init__(self, class_names: Sequence[Sequence[str]]):
        entries = sorted(
            ((name.lower(), label) for label, names in enumerate(class_names) for name in names),
            key=lambda e: -len(e[0]),
        )
        if not entries:
            raise ValueError("the label vocabulary is empty")
        self._label_of = {}
        for name, label in entries:
            self._label_of.setdefault(name, label)
        alternatives = "|".join(re.escape(name) for name, _ in entries)
        self._pattern = re.compile(rf"(?<!\w)({alternatives})(?!\w)", re.IGNORECASE)

    def __call__(self, caption: str) -> int | None:
        labels = {self._label_of[m.group(1).lower()] for m in self._pattern.finditer(caption)}
        return labels.pop() if len(labels) == 1 else None


@dataclass
class DecodeConfig:
    """What a worker does to one raw example; picklable so DataLoader workers get a copy."""

    image_transform: Callable  # PIL image -> tensor, or -> (views, params) for multi-view augmentation
    class_names: list[list[str]] | None = None
    templates: Sequence[str] = ("{}.",)
    label_vocabulary: LabelVocabulary | None = None
    with_labels: bool = True  # UniCL: give labels (-1 = image-text pair) to the loss
    multi_view: bool = False


def decode_image(value) -> Image.Image:
    """Undecoded image cell (`{"bytes", "path"}`, bytes, or PIL) -> RGB PIL image, fully loaded."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        payload = value.get("bytes")
        image = Image.open(io.BytesIO(payload)) if payload is not None else Image.open(value["path"])
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    else:
        raise TypeError(f"unsupported image cell {type(value)}")
    image.load()  # truncated files fail here, not later in a transform
    return image.convert("RGB")


def decode_example(example: dict, config: DecodeConfig, rng: random.Random) -> dict | None:
    """One raw `{image, text, label}` -> model inputs, or None when the sample is corrupt or incomplete."""
    label = example.get("label")
    text = example.get("text")
    try:
        image = decode_image(example["image"])
        if label is not None:
            label = int(label.decode() if isinstance(label, bytes) else label)
    except Exception:  # noqa: BLE001 - any undecodable sample is skipped and counted, never fatal
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    mapped = False
    if label is None and text and config.label_vocabulary is not None:
        label = config.label_vocabulary(text)
        mapped = label is not None
    if not text:
        if label is None or config.class_names is None or not 0 <= label < len(config.class_names):
            return None
        text = rng.choice(list(config.templates)).format(rng.choice(config.class_names[label]))
    transformed = config.image_transform(image)
    item = {"text": text, "label": -1 if label is None else label, "mapped": mapped}
    if config.multi_view:
        item["pixel_values"], item["augmentation_params"] = transformed
    else:
        item["pixel_values"] = transformed
    return item


def collate(items: list[dict | None], tokenizer, max_length: int, with_labels: bool) -> dict:
    """Stacks decoded items; `None` items (skipped samples) are counted in `num_skipped`."""
    good = [item for item in items if item is not None]
    batch = {"num_skipped": len(items) - len(good), "num_mapped": sum(item["mapped"] for item in good)}
    if not good:
        return batch
    text = tokenizer(
        [item["text"] for item in good], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    batch["input_ids"], batch["attention_mask"] = text["input_ids"], text["attention_mask"]
    batch["pixel_values"] = torch.stack([item["pixel_values"] for item in good])
    if "augmentation_params" in good[0]:
        batch["augmentation_params"] = torch.stack([item["augmentation_params"] for item in good])
    if with_labels:
        batch["labels"] = torch.tensor([item["label"] for item in good], dtype=torch.long)
    batch["texts"] = [item["text"] for item in good]
    return batch


class TrainStream(torch.utils.data.IterableDataset):
    """Endless per-rank stream of collated training batches, exactly resumable.

    Args:
        stream: this rank's `datasets.IterableDataset` of undecoded examples (`build_stream`); each pass over it
            calls `set_epoch(pass)`, which reshuffles.
        decode: `DecodeConfig`.
        tokenizer, max_length: text tokenisation in the workers.
        batch_size: raw examples per batch (skipped ones leave the batch smaller).
        seed, rank: seed the per-batch randomness (prompt choice, augmentation).

    Batch `b` of this rank is always built from the same raw examples with the same random draws, however the
    stream is split over workers; `state_dict()` / `load_state_dict()` record how many batches were consumed.
    """

    def __init__(
        self,
        stream: IterableDataset,
        decode: DecodeConfig,
        tokenizer,
        max_length: int,
        batch_size: int,
        seed: int,
        rank: int,
    ):
        super().__init__()
        self.stream, self.decode, self.tokenizer, self.max_length = stream, decode, tokenizer, max_length
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.batches_consumed = 0

    def state_dict(self) -> dict:
        return {"batches_consumed": self.batches_consumed, "batch_size": self.batch_size, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        if state["batch_size"] != self.batch_size:
            raise ValueError(
                f"the checkpoint's data stream used batch_size {state['batch_size']}, now {self.batch_size}"
            )
        self.batches_consumed = int(state["batches_consumed"])

    def _raw_examples(self):
        epoch = 0
        while True:
            self.stream.set_epoch(epoch)  # a new shuffle of shards and buffer on every pass
            count = 0
            # `iter(batch_size=...)` rather than `for x in stream`: inside a DataLoader worker the latter would hand
            # this worker only some of the shards, and batch b must not depend on the number of workers.
            for batch in self.stream.iter(batch_size=self.batch_size):
                columns = list(batch)
                for row in range(len(batch[columns[0]])):
                    count += 1
                    yield {column: batch[column][row] for column in columns}
            if count == 0:
                raise ValueError("the training sources yielded no examples on this rank")
            epoch += 1

    def __iter__(self):
        # Worker w builds batches w, w + W, w + 2W, ... of the single rank-level stream (the DataLoader returns
        # them round robin, i.e. in order). Every worker reads the raw stream, but decodes only its own batches.
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        start = self.batches_consumed
        raw = self._raw_examples()
        batch_index = 0
        while True:
            chunk = [next(raw) for _ in range(self.batch_size)]
            if batch_index >= start and (batch_index - start) % workers == worker:
                rng = random.Random(f"{self.seed}-{self.rank}-{batch_index}")
                torch.manual_seed(rng.getrandbits(63))  # augmentation draws from torch's global generator
                items = [decode_example(example, self.decode, rng) for example in chunk]
                yield collate(items, self.tokenizer, self.max_length, self.decode.with_labels)
            batch_index += 1


class _RawExamples(torch.utils.data.IterableDataset):
    """Evaluation: this rank's examples once, in order; decoded in the workers (split by `datasets`)."""

    def __init__(self, stream: IterableDataset, decode: DecodeConfig):
        super().__init__()
        self.stream, self.decode = stream, decode

    def __iter__(self):
        rng = random.Random(0)
        for example in self.stream:
            yield decode_example(example, self.decode, rng)


def eval_dataloader(
    spec: SourceSpec,
    decode: DecodeConfig,
    tokenizer,
    max_length: int,
    batch_size: int,
    rank: int,
    world_size: int,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """The evaluation split for this rank (`split_dataset_by_node`, no shuffling), decoded once."""
    stream = split_dataset_by_node(open_source(spec), rank=rank, world_size=world_size)
    workers = min(num_workers, stream.num_shards)
    return torch.utils.data.DataLoader(
        _RawExamples(stream, decode),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=partial(collate, tokenizer=tokenizer, max_length=max_length, with_labels=True),
    )


__all__ = [
    "FORMATS",
    "DecodeConfig",
    "LabelVocabulary",
    "SourceSpec",
    "TrainStream",
    "build_stream",
    "collate",
    "decode_example",
    "decode_image",
    "detect_format",
    "eval_dataloader",
    "load_class_names",
    "open_source",
]
