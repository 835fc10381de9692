"""Widget examples for a model card, with the outputs the model really gives.

- A trained model shows images of its own data: its trainer hands the card labelled images of different classes
  (`labelled_examples`; the training code reads them from the run's evaluation split, damaged and oversized samples
  skipped as evaluation skips them), shown with the run's class names as the candidate labels. The images are
  uploaded with the model (`widget/eval-<i>.png`, at most 512 px a side), so the widget needs nothing else; a card
  rendered again, or a native export's card, carries them over (`model_card.card_examples`).
- A model without a training record (a converted release checkpoint) shows the Hub's usual photo examples
  (`mishig/sample_images`), read through the Hub endpoint to compute their outputs.

Each example's static `output:` is computed by running the model folder through the zero-shot pipeline with its
default hypothesis template (`compute_outputs`), i.e. what a hosted widget or the Inference Endpoint handler would
answer. An example whose image cannot be read (offline) gets no `output:`, and the reason is logged. Nothing here
reads training data: this subpackage never imports `hf_unified.training`.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, hf_hub_download, hf_hub_url
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
WIDGET_IMAGE_SIDE = 512  # an example image is shrunk to fit this square before it is uploaded


@dataclass
class WidgetExample:
    """One widget entry: its labels, title, image (when read), and where the image is served from: uploaded with the
    model (`path_in_repo`, linked at the repository the card is rendered for) or an address of its own (`src`)."""

    candidate_labels: list[str]
    title: str
    image: Image.Image | None = None
    path_in_repo: str | None = None
    src: str | None = None
    output: list[dict] | None = None

    def metadata(self, model_id: str, endpoint: str | None = None) -> dict:
        """The card's `widget:` entry, its image linked at `model_id`'s copy when it is uploaded with the model."""
        src = self.src
        if self.path_in_repo is not None:
            src = hf_hub_url(model_id, self.path_in_repo, endpoint=resolve_endpoint(endpoint))
        entry = {"src": src, "candidate_labels": ", ".join(self.candidate_labels), "example_title": self.title}
        if self.output is not None:
            entry["output"] = self.output
        return entry


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The Hub URL to talk to: `endpoint`, else `HF_ENDPOINT` read now, else huggingface.co."""
    # huggingface_hub reads HF_ENDPOINT once at import; read it again so that a value set later is honoured.
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _labels_around(class_names: Sequence[str], label: int) -> list[str]:
    if len(class_names) <= MAX_LABELS:
        return list(class_names)
    start = min(max(label - MAX_LABELS // 2, 0), len(class_names) - MAX_LABELS)
    return list(class_names[start : start + MAX_LABELS])


def labelled_examples(
    samples: Iterable[tuple[Image.Image, int]], class_names: Sequence[str], source: str = "evaluation split"
) -> list[WidgetExample]:
    """Up to `MAX_EXAMPLES` examples of different classes: the first image of each class among `samples` (`(image,
    label)` pairs, read until enough are found), uploaded with the model (`widget/eval-<i>.png`, shrunk to fit
    `WIDGET_IMAGE_SIDE`), with the class names around its own as candidate labels (outputs not computed)."""
    examples, seen = [], set()
    for image, label in samples:
        if label in seen or not 0 <= label < len(class_names):
            continue
        seen.add(label)
        shown = image.copy()
        shown.thumbnail((WIDGET_IMAGE_SIDE, WIDGET_IMAGE_SIDE))  # what a widget shows; the repository stays small
        examples.append(
            WidgetExample(
                candidate_labels=_labels_around(class_names, label),
                title=f"{class_names[label]} ({source})",
                image=shown,
                path_in_repo=f"{WIDGET_DIR}/eval-{len(examples)}.png",
            )
        )
        if len(examples) == MAX_EXAMPLES:
            break
    return examples


def photo_examples(endpoint: str | None) -> list[WidgetExample]:
    """The Hub's usual photo examples, their images read through the Hub (None where that fails)."""
    endpoint = resolve_endpoint(endpoint)
    examples = []
    for filename, labels, title in PHOTO_EXAMPLES:
        src = hf_hub_url(PHOTO_DATASET, filename, repo_type="dataset", endpoint=endpoint)
        example = WidgetExample(list(labels), title, src=src)
        try:
            path = hf_hub_download(PHOTO_DATASET, filename, repo_type="dataset", endpoint=endpoint)
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


def image_bytes(example: WidgetExample) -> bytes:
    buffer = io.BytesIO()
    example.image.save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = [
    "MAX_EXAMPLES",
    "PHOTO_EXAMPLES",
    "WIDGET_DIR",
    "WidgetExample",
    "compute_outputs",
    "image_bytes",
    "labelled_examples",
    "photo_examples",
    "resolve_endpoint",
]
