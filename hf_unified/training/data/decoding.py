"""Streaming training and evaluation data for the dual encoders: decoding, batches, exact resumption, damage.

The sources (`sources.py`) stream undecoded `{image, text, label}` rows mixed, shuffled and split per rank by
`datasets`; this module decodes and augments them in DataLoader workers and collates batches.

Exact resumption. `datasets`' own `IterableDataset.load_state_dict` drops the shuffle buffer's contents and, without
torchdata's `StatefulDataLoader`, cannot see the workers' positions. The stream here is therefore a pure function
of `(seed, rank, position)`: it is re-created with the same seed and fast-forwarded (`skip`, on undecoded bytes)
past what was consumed, and every random choice of decoding/augmentation is seeded by the batch index. So a resumed
run sees exactly the batches an uninterrupted run would have seen, with any shuffle buffer and any worker count.
`TrainStream.state_dict()` is what the checkpoints store. The price: a worker reads (but does not decode) the rows
of the batches other workers build, to know where its own begin. With one stream every worker reads the rank's
whole raw stream, so raw reads grow with the worker count; split into lanes over disjoint shards (`build_lanes`,
the trainer's `stream_lanes`; batch `b` from lane `b % lanes`) a worker reads only the lanes of its batches, 1 / W
of the stream when the lanes are a multiple of the W workers. Decoding and augmentation, the costly part, are
split between the workers either way. Damage is part of the raw stream (a damaged sample or shard is a row with
`damage` set, found the same way by every worker), so this holds on damaged data too.

Damaged data never stops a run. A sample that cannot be used (undecodable image, an image over `max_image_pixels`
or `max_aspect_ratio` (refused from its header, before decoding or resizing), caption that is not UTF-8 or is longer
than `max_caption_chars`, label that is not an integer or is outside the class list, a stray tar member, a missing
value: the kinds are `data_health.SAMPLE_DAMAGE`) is skipped and counted by kind; a shard that cannot be opened or
ends early is read up to where it broke, named, and the stream goes on with the next one. A column name that a
source lacks raises `ValueError` when the source is opened, before any training step.

The interface for a trainer. Every collated batch (`collate`, from `TrainStream` and `eval_dataloader`) holds

- `input_ids`, `attention_mask` (`torch.LongTensor` of shape `(batch_size, sequence_length)`), `pixel_values`
  (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`, or `(batch_size, num_views,
  num_channels, height, width)` for multi-view augmentation, then with `augmentation_params` (`torch.FloatTensor`
  of shape `(batch_size, num_views, num_params)`)), `labels` (`torch.LongTensor` of shape `(batch_size,)`, -1 for
  an image-text pair; when `with_labels`) and `texts` (`list[str]`): absent when every sample of the batch was
  skipped;
- with `ImageCanvas` as the image transform (batched views), `images` (`torch.ByteTensor` of shape `(batch_size, 3,
  canvas_height, canvas_width)`), `image_sizes` and `resized_image_sizes` (`torch.LongTensor` of shape
  `(batch_size, 2)`: each image's original (height, width) and its size on the canvas) instead of `pixel_values`;
  the training step turns them into `pixel_values` and `augmentation_params` with `BatchMultiViewAugmentation`
  (absent too when every sample was skipped);
- `num_skipped` (`int`), `skipped` (`dict[str, int]`: damage kind -> samples skipped), `num_mapped` (`int`: captions
  given a label by the `LabelVocabulary`) and `damaged_shards` (`dict[str, str]`: shard -> what broke it, for the
  shards whose damage was met while building this batch);
- from `TrainStream`, `augmentation_seed` (`int`): the batch's seed, a function of `(seed, rank, batch index)`.

The trainer sums them in a `DataHealth` (`update(batch)` for every batch, `check(max_skipped_fraction,
min_samples)`, `state_dict()` in checkpoints, `merge` across ranks, `as_dict()` for logs); `eval_dataloader` keeps
its own in `loader.health`. `iter_texts(specs, limit)` gives clean captions for a tokenizer pre-pass.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from datasets import IterableDataset
from datasets.distributed import split_dataset_by_node
from PIL import Image

from ...image_processing import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, ImageTooLarge, load_image
from .health import SAMPLE_DAMAGE, SHARD_DAMAGE, DamageLog, DataError, DataHealth, Skipped
from .sources import FORMATS, RAW_FEATURES, SourceSpec, build_lanes, build_stream, detect_format, iter_texts, open_source


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
    """What a worker does to one raw example; picklable so DataLoader workers get a copy.

    `image_transform` takes the decoded RGB PIL image and returns one of:

    - a tensor: the sample's `pixel_values` (a single-view transform, or an evaluation processor);
    - `(views, params)` when `multi_view` is set: `pixel_values` and `augmentation_params` of a per-image multi-view
      augmentation (`augmentation.MultiViewAugmentation`);
    - a mapping of batch fields, stacked as they are (whatever `multi_view` says): `batch_augmentation.ImageCanvas`
      gives `images` (uint8), `image_sizes` and `resized_image_sizes`, from which `BatchMultiViewAugmentation`
      makes the views on the training device (the workers then only decode).

    It may be None where only `read_sample` runs (the model card's example images keep the PIL image).

    `max_image_pixels` (default 64,000,000) and `max_aspect_ratio` (default 20) bound every image before it is decoded
    (from the size in its header): an image past either is skipped as `oversized_image` (`image_processing`).
    """

    image_transform: Callable | None
    class_names: list[list[str]] | None = None
    templates: Sequence[str] = ("{}.",)
    label_vocabulary: LabelVocabulary | None = None
    with_labels: bool = True  # UniCL: give labels (-1 = image-text pair) to the loss
    multi_view: bool = False
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_aspect_ratio: float = MAX_ASPECT_RATIO


def decode_image(value, max_pixels: int = MAX_IMAGE_PIXELS, max_aspect_ratio: float = MAX_ASPECT_RATIO) -> Image.Image:
    """Undecoded image cell (`{"bytes", "path"}`, bytes, or PIL) -> RGB PIL image, fully loaded, converted by
    `image_processing.to_rgb`.

    Raises:
        ImageTooLarge: the image's header declares more than `max_pixels` pixels or a thinner shape than
            `max_aspect_ratio` (nothing is decoded then).
        UnreadableImage, TypeError: not an image.
    """
    if isinstance(value, dict):
        value = value.get("bytes") if value.get("bytes") is not None else value["path"]
    elif not isinstance(value, (Image.Image, bytes, bytearray)):
        raise TypeError(f"unsupported image cell {type(value)}")
    return load_image(value, max_pixels, max_aspect_ratio)


@dataclass
class Sample:
    """One usable sample, before the image transform: the RGB image, its text (the caption, or a prompt built from
    its class name), its label (-1 for an image-text pair) and whether the label was mapped from the caption."""

    image: Image.Image
    text: str
    label: int
    mapped: bool = False


def read_sample(example: dict, config: DecodeConfig, rng: random.Random) -> Sample | Skipped:
    """One raw row (`sources.RAW_FEATURES`) -> a checked, decoded `Sample`, or a `Skipped` record saying why it
    gives none. What training and evaluation decode (`decode_example`), and the model card's example images."""

    def skipped(kind: str, detail: str) -> Skipped:
        return Skipped(kind, example.get("shard") or "", example.get("key"), detail)

    if example.get("damage"):
        return skipped(example["damage"], example.get("detail") or "")
    label, text = example.get("label"), example.get("text")
    num_classes = len(config.class_names) if config.class_names is not None else None
    if label is not None and (label < 0 or (num_classes is not None and label >= num_classes)):
        expected = f"in [0, {num_classes})" if num_classes is not None else ">= 0"
        return skipped("label_out_of_range", f"label {label}, expected {expected}")
    try:
        image = decode_image(example["image"], config.max_image_pixels, config.max_aspect_ratio)
    except ImageTooLarge as error:
        return skipped("oversized_image", str(error))
    except Exception as error:  # noqa: BLE001 - any undecodable image is skipped and counted, never fatal
        return skipped("corrupt_image", f"{type(error).__name__}: {error}")
    mapped = False
    if label is None and text and config.label_vocabulary is not None:
        label = config.label_vocabulary(text)
        mapped = label is not None
    if not text:
        if label is None or config.class_names is None:
            return skipped("missing_text", "no caption, and no class names to build a prompt from its label")
        text = rng.choice(list(config.templates)).format(rng.choice(config.class_names[label]))
    return Sample(image, text, -1 if label is None else label, mapped)


def decode_example(example: dict, config: DecodeConfig, rng: random.Random) -> dict | Skipped:
    """One raw row (`sources.RAW_FEATURES`) -> model inputs (`read_sample`, then the image transform), or a
    `Skipped` record saying why it gives none."""
    sample = read_sample(example, config, rng)
    if isinstance(sample, Skipped):
        return sample
    transformed = config.image_transform(sample.image)
    item = {"text": sample.text, "label": sample.label, "mapped": sample.mapped}
    if isinstance(transformed, Mapping):  # whatever `multi_view` says: the canvas of batched views
        item.update(transformed)
    elif config.multi_view:
        item["pixel_values"], item["augmentation_params"] = transformed
    else:
        item["pixel_values"] = transformed
    return item


def collate(
    items: list[dict | Skipped], tokenizer, max_length: int, with_labels: bool, damage_log: DamageLog | None = None
) -> dict:
    """Stacks decoded items and counts the `Skipped` ones (the batch keys are listed in the module docstring);
    `damage_log` warns about them (rate-limited)."""
    good = [item for item in items if not isinstance(item, Skipped)]
    skips = [item for item in items if isinstance(item, Skipped)]
    for skip in skips if damage_log is not None else ():
        damage_log.report(skip)
    skipped = Counter(skip.kind for skip in skips if skip.kind not in SHARD_DAMAGE)
    batch = {
        "num_skipped": sum(skipped.values()),
        "skipped": dict(skipped),
        "num_mapped": sum(item["mapped"] for item in good),
        "damaged_shards": {s.shard: f"{s.kind}: {s.detail}" for s in skips if s.kind in SHARD_DAMAGE},
    }
    if not good:
        return batch
    text = tokenizer(
        [item["text"] for item in good], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    batch["input_ids"], batch["attention_mask"] = text["input_ids"], text["attention_mask"]
    for name, value in good[0].items():  # the image transform's tensors (`DecodeConfig`)
        if isinstance(value, torch.Tensor):
            batch[name] = torch.stack([item[name] for item in good])
    if with_labels:
        batch["labels"] = torch.tensor([item["label"] for item in good], dtype=torch.long)
    batch["texts"] = [item["text"] for item in good]
    return batch


class TrainStream(torch.utils.data.IterableDataset):
    """Endless per-rank stream of collated training batches, exactly resumable.

    Args:
        stream: this rank's `datasets.IterableDataset` of raw rows (`build_stream`), or a list of `K` lanes
            (`build_lanes`: disjoint shards, each shuffled on its own); each pass over a stream calls
            `set_epoch(pass)` on the iterator's own copy of it, which reshuffles it.
        decode: `DecodeConfig`.
        tokenizer, max_length: text tokenisation in the workers.
        batch_size: raw samples per batch (skipped ones leave the batch smaller; rows naming a damaged shard are
            not samples and take no place).
        seed, rank: seed the per-batch randomness (prompt choice, augmentation).

    Batch `b` of this rank is built from the `b // K`-th group of `batch_size` samples of lane `b % K`, with random
    draws seeded by `b`: the same rows and draws however the lanes are split over workers, and after a resume;
    `state_dict()` / `load_state_dict()` record how many batches were consumed. DataLoader worker `w` of `W` builds
    batches `w, w + W, ...` (counted from the resume point), so it reads the lanes `k` with `k = w (mod gcd(W, K))`:
    with one lane every worker reads the whole raw stream (and decodes only its batches); with `K` a multiple of
    `W` each worker reads `1 / W` of it, so raw reading no longer bounds the pipeline.

    Raises (from the iterator):
        DataError: a whole pass over a lane gave no sample (every shard damaged, or no rows on this rank).
    """

    def __init__(
        self,
        stream: IterableDataset | Sequence[IterableDataset],
        decode: DecodeConfig,
        tokenizer,
        max_length: int,
        batch_size: int,
        seed: int,
        rank: int,
    ):
        super().__init__()
        self.lanes = list(stream) if isinstance(stream, Sequence) else [stream]
        if not self.lanes:
            raise ValueError("TrainStream needs at least one stream of raw rows")
        self.decode, self.tokenizer, self.max_length = decode, tokenizer, max_length
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.batches_consumed = 0
        self.damage_log = DamageLog()

    def state_dict(self) -> dict:
        return {
            "batches_consumed": self.batches_consumed,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "lanes": len(self.lanes),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["batch_size"] != self.batch_size:
            raise ValueError(
                f"the checkpoint's data stream used batch_size {state['batch_size']}, now {self.batch_size}"
            )
        if state.get("lanes", 1) != len(self.lanes):
            raise ValueError(
                f"the checkpoint's data stream had {state.get('lanes', 1)} lane(s) (stream_lanes), now "
                f"{len(self.lanes)}: resume with the stream_lanes it was trained with, since lanes decide which rows "
                "make each batch"
            )
        self.batches_consumed = int(state["batches_consumed"])

    def _raw_rows(self, lane: int):
        # This iterator's own copy of the lane: `datasets` keeps the epoch in shared memory (for a main process
        # steering persistent workers), and our workers walk their passes each on its own, so one worker's
        # `set_epoch` could otherwise land in another's pass as it starts.
        stream, epoch = copy.deepcopy(self.lanes[lane]), 0
        while True:
            stream.set_epoch(epoch)  # a new shuffle of shards and buffer on every pass
            samples, damaged_shards = 0, {}
            # `iter(batch_size=...)` rather than `for x in stream`: inside a DataLoader worker the latter would hand
            # this worker only some of the shards, and batch b must not depend on the number of workers.
            for batch in stream.iter(batch_size=self.batch_size):
                columns = list(batch)
                for index in range(len(batch[columns[0]])):
                    row = {column: batch[column][index] for column in columns}
                    if row["damage"] in SHARD_DAMAGE:
                        damaged_shards[row["shard"]] = f"{row['damage']}: {row['detail']}"
                    else:
                        samples += 1
                    yield row
            if samples == 0:
                shards = "; ".join(f"{shard} ({reason})" for shard, reason in list(damaged_shards.items())[:5])
                where = f"rank {self.rank}" + (f", lane {lane} of {len(self.lanes)}" if len(self.lanes) > 1 else "")
                raise DataError(
                    f"the training sources gave no samples on {where}"
                    + (f": every shard read is damaged: {shards}" if shards else "")
                )
            epoch += 1

    def _groups(self, lane: int):
        """The lane's raw rows cut into batches: `batch_size` samples each (rows naming a damaged shard ride
        along with the samples they came between)."""
        raw = self._raw_rows(lane)
        while True:
            rows, samples = [], 0
            while samples < self.batch_size:
                rows.append(next(raw))
                samples += rows[-1]["damage"] not in SHARD_DAMAGE
            yield rows

    def __iter__(self):
        # The DataLoader returns its workers' batches round robin, i.e. in order. Every worker reads (without
        # decoding) the groups of its lanes that other workers build, to know where its own begin.
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        start, lanes = self.batches_consumed, len(self.lanes)
        step = math.gcd(workers, lanes)
        groups = {lane: self._groups(lane) for lane in range(lanes) if (lane - start - worker) % step == 0}
        groups_read = dict.fromkeys(groups, 0)
        batch_index = start + worker
        while True:
            lane, group = batch_index % lanes, batch_index // lanes
            while groups_read[lane] < group:
                next(groups[lane])
                groups_read[lane] += 1
            rows = next(groups[lane])
            groups_read[lane] += 1
            rng = random.Random(f"{self.seed}-{self.rank}-{batch_index}")
            augmentation_seed = rng.getrandbits(63)
            torch.manual_seed(augmentation_seed)  # per-image augmentation draws from torch's global generator
            items = [decode_example(row, self.decode, rng) for row in rows]
            batch = collate(items, self.tokenizer, self.max_length, self.decode.with_labels, self.damage_log)
            # Batched augmentation in the training step seeds itself with this (`BatchMultiViewAugmentation`).
            batch["augmentation_seed"] = augmentation_seed
            yield batch
            batch_index += workers


class _RawExamples(torch.utils.data.IterableDataset):
    """Evaluation: this rank's rows once, in order; decoded in the workers (split by `datasets`)."""

    def __init__(self, stream: IterableDataset, decode: DecodeConfig):
        super().__init__()
        self.stream, self.decode = stream, decode

    def __iter__(self):
        rng = random.Random(0)
        for example in self.stream:
            yield decode_example(example, self.decode, rng)


class EvalDataLoader(torch.utils.data.DataLoader):
    """A `DataLoader` whose `health` (`DataHealth`) sums the batches iterated so far (what evaluation skipped)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.health = DataHealth("evaluation")

    def __iter__(self):
        for batch in super().__iter__():
            self.health.update(batch)
            yield batch


def eval_dataloader(
    spec: SourceSpec,
    decode: DecodeConfig,
    tokenizer,
    max_length: int,
    batch_size: int,
    rank: int,
    world_size: int,
    num_workers: int = 0,
) -> EvalDataLoader:
    """The evaluation split for this rank (`split_dataset_by_node`, no shuffling), decoded once; damage is skipped
    and counted as in training, in `loader.health`."""
    stream = split_dataset_by_node(open_source(spec), rank=rank, world_size=world_size)
    workers = min(num_workers, stream.num_shards)
    return EvalDataLoader(
        _RawExamples(stream, decode),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=partial(
            collate, tokenizer=tokenizer, max_length=max_length, with_labels=True, damage_log=DamageLog()
        ),
    )


__all__ = [
    "FORMATS",
    "RAW_FEATURES",
    "SAMPLE_DAMAGE",
    "SHARD_DAMAGE",
    "DataError",
    "DamageLog",
    "DataHealth",
    "DecodeConfig",
    "EvalDataLoader",
    "LabelVocabulary",
    "Sample",
    "Skipped",
    "SourceSpec",
    "TrainStream",
    "build_lanes",
    "build_stream",
    "collate",
    "decode_example",
    "decode_image",
    "detect_format",
    "eval_dataloader",
    "iter_texts",
    "load_class_names",
    "open_source",
    "read_sample",
]
