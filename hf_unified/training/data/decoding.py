"""Decoding for the dual encoders' training and evaluation data: one raw row -> a checked sample -> model inputs;
samples -> a batch.

The sources (`sources.py`) stream undecoded `{image, text, label}` rows mixed, shuffled and split per rank by
`datasets`; this module checks and decodes one row (`read_sample`), runs the image transform on it
(`decode_example`, in DataLoader workers) and collates batches (`collate`); `stream.py` cuts the rows into batches.

Damaged data never stops a run. A sample that cannot be used (undecodable image, an image over `max_image_pixels`
or `max_aspect_ratio` (refused from its header, before decoding or resizing), caption that is not UTF-8 or is longer
than `max_caption_chars`, label that is not an integer or is outside the class list, a stray tar member, a missing
value: the kinds are `health.SAMPLE_DAMAGE`) is skipped and counted by kind; a shard that cannot be opened or
ends early is read up to where it broke, named, and the stream goes on with the next one. A column name that a
source lacks raises `ValueError` when the source is opened, before any training step.

The interface for a trainer. Every collated batch (`collate`, from `stream.TrainStream` and
`stream.eval_dataloader`) holds

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

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ...image_processing import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, ImageTooLarge, load_image
from ...prompts import class_prompt
from .health import SHARD_DAMAGE, DamageLog, Skipped


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


class ImageFields:
    """Names the output of an image transform as the batch fields it gives, the one output an image transform of
    the pipeline has (`DecodeConfig.image_transform`).

    Args:
        transform: takes the decoded RGB PIL image; returns one tensor, or one tensor per name.
        names: the batch field of each output, in order.

    `ImageFields(v2.Compose([...]))` gives `{"pixel_values": [C, H, W]}`;
    `ImageFields(MultiViewAugmentation(...), VIEW_FIELDS)` gives `{"pixel_values": [V, C, H, W],
    "augmentation_params": [V, P]}`.
    """

    def __init__(self, transform: Callable, names: Sequence[str] = ("pixel_values",)):
        if not names:
            raise ValueError("ImageFields needs at least one field name")
        self.transform, self.names = transform, tuple(names)

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        outputs = self.transform(image)
        outputs = (outputs,) if len(self.names) == 1 else tuple(outputs)
        if len(outputs) != len(self.names):
            raise ValueError(
                f"{type(self.transform).__name__} returned {len(outputs)} outputs for the fields {list(self.names)}"
            )
        return dict(zip(self.names, outputs))

    def __repr__(self) -> str:
        return f"ImageFields({self.transform!r}, {list(self.names)})"


# The fields of a per-image multi-view augmentation (`augmentation.MultiViewAugmentation` returns them in this order).
VIEW_FIELDS = ("pixel_values", "augmentation_params")


@dataclass
class DecodeConfig:
    """What a worker does to one raw example; picklable so DataLoader workers get a copy.

    `image_transform` takes the decoded RGB PIL image and returns the sample's image fields, a mapping of field name
    to tensor, stacked into the batch as they are (`collate`):

    - `{"pixel_values": [C, H, W]}`: a single-view transform (`ImageFields(v2.Compose(...))`) or an evaluation
      processor (`builders.ProcessorTransform`);
    - `{"pixel_values": [V, C, H, W], "augmentation_params": [V, P]}`: a per-image multi-view augmentation
      (`ImageFields(augmentation.MultiViewAugmentation(...), VIEW_FIELDS)`);
    - `{"images": uint8 [3, H, W], "image_sizes": [2], "resized_image_sizes": [2]}`: `batch_augmentation.ImageCanvas`,
      from which `BatchMultiViewAugmentation` makes the views on the training device (the workers then only decode).

    It may be None where only `read_sample` runs (the model card's example images keep the PIL image).

    `max_image_pixels` (default 64,000,000) and `max_aspect_ratio` (default 20) bound every image before it is decoded
    (from the size in its header): an image past either is skipped as `oversized_image` (`image_processing`).
    """

    image_transform: Callable | None
    class_names: list[list[str]] | None = None
    templates: Sequence[str] = ("{}.",)
    label_vocabulary: LabelVocabulary | None = None
    with_labels: bool = True  # UniCL: give labels (-1 = image-text pair) to the loss
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
        text = class_prompt(config.class_names[label], config.templates, rng)
    return Sample(image, text, -1 if label is None else label, mapped)


def decode_example(example: dict, config: DecodeConfig, rng: random.Random) -> dict | Skipped:
    """One raw row (`sources.RAW_FEATURES`) -> model inputs (`read_sample`, then the image transform), or a
    `Skipped` record saying why it gives none."""
    sample = read_sample(example, config, rng)
    if isinstance(sample, Skipped):
        return sample
    fields = config.image_transform(sample.image)
    if not isinstance(fields, Mapping):
        given = f"a tensor ({type(fields).__name__})" if torch.is_tensor(fields) else f"a {type(fields).__name__}"
        raise TypeError(
            f"DecodeConfig.image_transform must return the sample's image fields as a mapping (e.g. "
            f"{{'pixel_values': tensor}}), got {given}: wrap a transform that returns tensors in "
            "ImageFields(transform, names)"
        )
    return {"text": sample.text, "label": sample.label, "mapped": sample.mapped, **fields}


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


__all__ = [
    "VIEW_FIELDS",
    "DecodeConfig",
    "ImageFields",
    "LabelVocabulary",
    "Sample",
    "collate",
    "decode_example",
    "decode_image",
    "load_class_names",
    "read_sample",
]
