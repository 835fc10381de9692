"""Widget examples for a model card, chosen for the model's data, with the outputs the model really gives.

- A model trained by `training/train.py` (its folder has `training_args.json`) shows images from the start of its
  evaluation split (`eval_data`), of different classes, with its class names (`class_names_file`) as the candidate
  labels. The images are uploaded with the model (`widget/eval-<i>.png`, at most 512 px a side), so the widget needs
  nothing else. The rows are read, checked and decoded as evaluation reads them (`training.data.read_sample`, under
  the run's `max_image_pixels` and `max_aspect_ratio`): damaged, oversized and out-of-range samples are skipped and
  logged, as evaluation skips them.
- A model without a training record (a converted release checkpoint, an ImageNet-scale model) shows the Hub's usual
  photo examples (`mishig/sample_images`), read through the Hub endpoint to compute their outputs.

Each example's static `output:` is computed by running the model folder through the zero-shot pipeline with its
default hypothesis template, i.e. what a hosted widget or the Inference Endpoint handler would answer. An example
whose image cannot be read (offline, evaluation shards moved) gets no `output:`, and the reason is logged.
"""

from __future__ import annotations

import io
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, hf_hub_download
from PIL import Image

from ..image_processing import load_image

logger = logging.getLogger(__name__)

WIDGET_DIR = "widget"
PHOTO_DATASET = "mishig/sample_images"
PHOTO_EXAMPLES = (
    ("cat-dog-music.png", ("playing music", "playing sports"), "Cat & Dog"),
    ("football-match.jpg", ("football", "basketball", "tennis"), "Football match"),
)
MAX_EXAMPLES = 2
MAX_LABELS = 8  # a widget shows a handful of labels; larger class lists are cut around the example's own class
SCORE_DIGITS = 4
EXAMPLE_ROWS = 200  # rows of the evaluation split searched for examples of different classes
WIDGET_IMAGE_SIDE = 512  # an example image is shrunk to fit this square before it is uploaded


@dataclass
class WidgetExample:
    """One widget entry: where the image is served from, its labels, and (when known) the model's answer."""

    src: str
    candidate_labels: list[str]
    title: str
    image: Image.Image | None = None
    path_in_repo: str | None = None  # set when the image is uploaded with the model
    output: list[dict] | None = None

    def metadata(self) -> dict:
        entry = {"src": self.src, "candidate_labels": ", ".join(self.candidate_labels), "example_title": self.title}
        if self.output is not None:
            entry["output"] = self.output
        return entry


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The Hub URL to talk to: `endpoint`, else `HF_ENDPOINT` read now, else huggingface.co."""
    # huggingface_hub reads HF_ENDPOINT once at import; read it again so that a value set later is honoured.
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _resolve_url(repo_path: str, filename: str, revision: str, endpoint: str | None) -> str:
    return f"{resolve_endpoint(endpoint)}/{repo_path}/resolve/{revision}/{filename}"


def _labels_around(class_names: list[str], label: int) -> list[str]:
    if len(class_names) <= MAX_LABELS:
        return list(class_names)
    start = min(max(label - MAX_LABELS // 2, 0), len(class_names) - MAX_LABELS)
    return class_names[start : start + MAX_LABELS]


def eval_split_examples(training_args: dict, repo_id: str, revision: str, endpoint: str | None) -> list[WidgetExample]:
    """Images of different classes from the start of the run's evaluation split, with its class names.

    Raises:
        ValueError: the run recorded no labelled evaluation split or class names, or they cannot be read here.
    """
    from hf_unified.training import data as data_lib

    eval_data, label_column = training_args.get("eval_data"), training_args.get("eval_label_column")
    names = data_lib.load_class_names(training_args.get("class_names_file"))
    if not eval_data or not names or label_column in (None, "", "none"):
        raise ValueError(
            "the run recorded no labelled evaluation split with class names (eval_data, class_names_file, "
            "eval_label_column)"
        )
    class_names = [synonyms[0] for synonyms in names]
    spec = data_lib.SourceSpec(
        path=eval_data,
        image_column=training_args.get("eval_image_column") or "jpg",
        text_column=None,
        label_column=label_column,
        format=training_args.get("eval_format") or None,
        split=training_args.get("eval_split") or "validation",
    )
    # Rows are read, checked and decoded exactly as evaluation reads them (`data.read_sample`, under the run's
    # `max_image_pixels` / `max_aspect_ratio`): a damaged or oversized sample is skipped and logged, never the end of
    # the final save.
    limits = {
        key: training_args[key]
        for key in ("max_image_pixels", "max_aspect_ratio")
        if isinstance(training_args.get(key), (int, float)) and not isinstance(training_args.get(key), bool)
    }
    decode = data_lib.DecodeConfig(image_transform=None, class_names=names, **limits)
    damage_log, rng = data_lib.DamageLog(), random.Random(0)
    examples, seen = [], set()
    for row in data_lib.open_source(spec).take(EXAMPLE_ROWS):
        sample = data_lib.read_sample(row, decode, rng)
        if isinstance(sample, data_lib.Skipped):
            damage_log.report(sample)
            continue
        if sample.label in seen:
            continue
        seen.add(sample.label)
        path = f"{WIDGET_DIR}/eval-{len(examples)}.png"
        image = sample.image.copy()
        image.thumbnail((WIDGET_IMAGE_SIDE, WIDGET_IMAGE_SIDE))  # what a widget shows; the repository stays small
        examples.append(
            WidgetExample(
                src=_resolve_url(repo_id, path, revision, endpoint),
                candidate_labels=_labels_around(class_names, sample.label),
                title=f"{class_names[sample.label]} (evaluation split)",
                image=image,
                path_in_repo=path,
            )
        )
        if len(examples) == MAX_EXAMPLES:
            break
    if not examples:
        raise ValueError(f"the evaluation split {eval_data!r} yielded no labelled image")
    return examples


def photo_examples(endpoint: str | None) -> list[WidgetExample]:
    """The Hub's usual photo examples, their images read through the Hub (None where that fails)."""
    examples = []
    for filename, labels, title in PHOTO_EXAMPLES:
        example = WidgetExample(
            _resolve_url(f"datasets/{PHOTO_DATASET}", filename, "main", endpoint), list(labels), title
        )
        try:
            path = hf_hub_download(PHOTO_DATASET, filename, repo_type="dataset", endpoint=resolve_endpoint(endpoint))
            example.image = load_image(path)
        except Exception as error:  # offline or unreachable: the example stays, without a static output
            logger.warning("widget example %s: image not readable (%s); no static output for it", filename, error)
        examples.append(example)
    return examples


def compute_outputs(folder: Path, examples: list[WidgetExample]) -> None:
    """Fills each readable example's `output` with the zero-shot pipeline's answer for the model in `folder`."""
    readable = [example for example in examples if example.image is not None]
    if not readable:
        return
    from transformers import pipeline

    import hf_unified  # noqa: F401  (registers the custom classes: no trust_remote_code needed here)

    classifier = pipeline("zero-shot-image-classification", model=str(folder), device="cpu")
    for example in readable:
        try:
            answer = classifier(example.image, candidate_labels=example.candidate_labels)
        except (ValueError, RuntimeError, IndexError) as error:
            # What a hosted widget would hit too (e.g. a hypothesis longer than the text tower's positions: the
            # pipeline does not truncate). The example stays, without an output that the model cannot give.
            logger.warning("widget example %r: the pipeline fails on it (%s); no static output", example.title, error)
            continue
        example.output = [{"label": a["label"], "score": round(float(a["score"]), SCORE_DIGITS)} for a in answer]


def widget_examples(
    folder: Path, training_args: dict | None, repo_id: str, revision: str = "main", endpoint: str | None = None
) -> list[WidgetExample]:
    """The widget examples of the model in `folder` (module docstring), outputs computed."""
    if training_args is not None:
        try:
            examples = eval_split_examples(training_args, repo_id, revision, endpoint)
        except Exception as error:  # noqa: BLE001 - examples are optional: no failure of theirs may end a save
            logger.warning(
                "no widget examples: the evaluation split cannot be read here (%s: %s)", type(error).__name__, error
            )
            return []
    else:
        examples = photo_examples(endpoint)
    compute_outputs(folder, examples)
    return examples


def image_bytes(example: WidgetExample) -> bytes:
    buffer = io.BytesIO()
    example.image.save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = [
    "PHOTO_EXAMPLES",
    "WIDGET_DIR",
    "WidgetExample",
    "compute_outputs",
    "image_bytes",
    "resolve_endpoint",
    "widget_examples",
]
