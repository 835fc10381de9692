"""The data a run trains and evaluates on: raw rows streamed from shards, decoded in DataLoader workers, collated.

- `sources`: the raw `{image, text, label}` rows of every format (webdataset shards, parquet, imagefolder, Hub
  datasets), mixed, shuffled and split per rank by `datasets`; damage becomes a row, never an exception;
- `health`: the kinds of damage, their counters (`DataHealth`) and the rate-limited log;
- `decoding`: one raw row -> a checked, decoded sample (`read_sample`, class prompts from `prompts.class_prompt`)
  -> its image fields (`DecodeConfig.image_transform`, one output shape: `ImageFields`); batches (`collate`);
- `stream`: the training stream (`TrainStream`, exactly resumable) and the evaluation loader;
- `view_recipe` (the strength of UniCLIP's views, torch-free), `augmentation` (views with their parameter vectors, one
  image at a time) and `batch_augmentation` (the same views on whole batches, on the training device);
- `synthetic_data`: the embedded shapes data set.

The pipeline's names are importable from here (`from hf_unified.training import data; data.TrainStream`); the
augmentations and the shapes data are imported as modules.
"""

from .decoding import (
    VIEW_FIELDS,
    DecodeConfig,
    ImageFields,
    LabelVocabulary,
    Sample,
    collate,
    decode_example,
    decode_image,
    load_class_names,
    read_sample,
)
from .health import SAMPLE_DAMAGE, SHARD_DAMAGE, DamageLog, DataError, DataHealth, Skipped
from .sources import (
    FORMATS,
    RAW_FEATURES,
    SourceSpec,
    build_lanes,
    build_stream,
    detect_format,
    iter_texts,
    open_source,
)
from .stream import EvalDataLoader, TrainStream, eval_dataloader

__all__ = [
    "FORMATS",
    "RAW_FEATURES",
    "SAMPLE_DAMAGE",
    "SHARD_DAMAGE",
    "VIEW_FIELDS",
    "DataError",
    "DamageLog",
    "DataHealth",
    "DecodeConfig",
    "ImageFields",
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
