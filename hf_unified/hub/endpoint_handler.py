"""Inference Endpoints custom handler for a zero-shot image classification model (pushed as `handler.py`).

Hugging Face Inference Endpoints load `handler.py` from the repository root, with the repository folder on
`sys.path`, and call `EndpointHandler(path)(data)`. This file is copied byte for byte into every pushed hf-unified
custom-code folder (and into the demo Space, whose app serves through it), so it imports only what the endpoint has
(transformers, torch, Pillow) and the repository's own `image_processing.py` (bounded decoding, `to_rgb`), never
`hf_unified`. The model is loaded with the zero-shot pipeline and the repository's own code (`trust_remote_code=True`:
the code sits next to this file).

Request:

    {"inputs": <image: PIL image, raw bytes or a base64 string (a data URI is fine)>,
     "parameters": {"candidate_labels": ["cat", "dog"] or "cat, dog",
                    "hypothesis_template": "This is a photo of {}."}}   # optional; the pipeline's default

Response: `[{"label": ..., "score": ...}, ...]` sorted by decreasing score, exactly what
`pipeline("zero-shot-image-classification")` returns. A request that cannot be served answers
`{"error": "<what is wrong>. <what to send>"}` and the server goes on serving: images over `MAX_IMAGE_PIXELS` or
`MAX_ASPECT_RATIO` (`image_processing`) are refused from their header, before decoding or resizing; labels and
templates are bounded (`MAX_CANDIDATE_LABELS`, `MAX_TEXT_CHARS`, the text tower's positions) before tokenising; and
whatever else fails inside the model, a tokenizer's Rust panic included, becomes an error answer.
"""

from __future__ import annotations

import base64
import binascii
import logging
import string
from typing import Any

from PIL import Image
from transformers import pipeline

try:  # the repository's own Hub code, beside this file
    from image_processing import ImageTooLarge, UnreadableImage, load_image
except ImportError as error:
    raise ImportError(
        "handler.py needs the image_processing.py of hf-unified (with load_image) beside it, and that folder on "
        "sys.path (Inference Endpoints put the repository folder there): re-save the model with the current "
        f"hf-unified and push it again ({error})"
    ) from error

logger = logging.getLogger(__name__)

DEFAULT_HYPOTHESIS_TEMPLATE = "This is a photo of {}."
# Bounds of one request. A zero-shot request scores a handful of labels; a large class list belongs in a script that
# embeds it once. No label or template needs more characters than a text tower reads (77 tokens for CLIP's).
MAX_CANDIDATE_LABELS = 100
MAX_TEXT_CHARS = 1000
REQUEST_FORMAT = (
    'Send {"inputs": <image as bytes or a base64 string>, '
    '"parameters": {"candidate_labels": ["label 1", "label 2"], "hypothesis_template": "This is a photo of {}."}}'
)


class BadRequest(ValueError):
    """The request cannot be served; the message says which field is wrong and what it should be."""


class ModelFailure(RuntimeError):
    """Something failed inside the model or its tokenizer on a request that passed the checks; the message names
    the error, and the server goes on serving."""


def read_image(inputs: Any) -> Image.Image:
    """`data["inputs"]` as a decoded RGB image: a PIL image (opened or decoded), encoded image bytes, or those bytes
    base64-encoded (plain or as a `data:<type>;base64,<data>` URI). Checked against the size limits before decoding."""
    if isinstance(inputs, str):
        inputs = _base64_bytes(inputs)
    if not isinstance(inputs, (bytes, bytearray, Image.Image)):
        raise BadRequest(f"inputs must be an image, got {type(inputs).__name__}")
    try:
        return load_image(inputs)
    except ImageTooLarge as error:
        raise BadRequest(f"inputs is too large an image to classify: {error}") from None
    except UnreadableImage as error:
        size = f"{len(inputs)} bytes: " if isinstance(inputs, (bytes, bytearray)) else ""
        raise BadRequest(f"inputs is not a readable image ({size}{error})") from None


def _base64_bytes(text: str) -> bytes:
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma:
            raise BadRequest("inputs is a data: URI without the comma before its data: 'data:image/png;base64,<data>'")
        if not header.endswith(";base64"):
            raise BadRequest(f"inputs is a data: URI that is not base64 ({header[:60]!r}): use ';base64,'")
    try:
        return base64.b64decode("".join(text.split()), validate=True)  # line breaks are common in base64 text
    except (binascii.Error, ValueError):
        raise BadRequest("inputs is a string but not base64-encoded image bytes") from None


def read_labels(labels: Any) -> list[str]:
    """`parameters.candidate_labels`: a list of strings or one comma-separated string -> the non-blank labels."""
    if isinstance(labels, str):
        labels = labels.split(",")
    if not isinstance(labels, (list, tuple)) or not all(isinstance(label, str) for label in labels):
        shown = repr(labels) if len(repr(labels)) <= 200 else repr(labels)[:200] + "..."
        raise BadRequest(f"candidate_labels must be a list of strings or one comma-separated string, got {shown}")
    labels = [label.strip() for label in labels if label.strip()]
    if not labels:
        raise BadRequest("candidate_labels is empty: give at least one label")
    if len(labels) > MAX_CANDIDATE_LABELS:
        raise BadRequest(f"candidate_labels has {len(labels)} labels; at most {MAX_CANDIDATE_LABELS} are scored")
    for label in labels:
        if len(label) > MAX_TEXT_CHARS:
            raise BadRequest(
                f"candidate label {label[:40]!r}... is {len(label):,} characters; at most {MAX_TEXT_CHARS} are read"
            )
    return labels


def read_template(template: Any) -> str:
    """`parameters.hypothesis_template` (default `DEFAULT_HYPOTHESIS_TEMPLATE`): a string with exactly one `{}`
    where the label goes and no other field or format spec (the pipeline calls `template.format(label)`)."""
    if template is None:
        return DEFAULT_HYPOTHESIS_TEMPLATE
    if not isinstance(template, str):
        problem = f"got a {type(template).__name__}"
    elif len(template) > MAX_TEXT_CHARS:
        problem = f"got {len(template):,} characters, more than the {MAX_TEXT_CHARS} read"
    else:
        try:
            fields = [field[1:] for field in string.Formatter().parse(template) if field[1] is not None]
            problem = None if fields in ([("", "", None)], [("0", "", None)]) else f"got {template!r}"
        except ValueError as error:  # a lone '{' or '}'
            problem = f"got {template!r} ({error})"
    if problem is not None:
        raise BadRequest(
            "hypothesis_template must be a string with one '{}' where the label goes and no other field (write "
            f"literal braces as '{{{{' and '}}}}'); {problem}"
        )
    return template


class EndpointHandler:
    """Zero-shot image classification with the model in `path` (the endpoint's copy of this repository).

    Args:
        path: the model folder (or Hub id).
        trust_remote_code: load the model's own code; an endpoint of an hf-unified folder needs it (the code sits
            beside this file), a native transformers model does not.
    """

    def __init__(self, path: str = "", trust_remote_code: bool = True):
        self.classifier = pipeline(
            "zero-shot-image-classification", model=path or ".", trust_remote_code=trust_remote_code
        )
        config = self.classifier.model.config
        positions = getattr(getattr(config, "text_config", None) or config, "max_position_embeddings", None)
        limits = [n for n in (positions, self.classifier.tokenizer.model_max_length) if n and n < 1_000_000]
        self.max_text_tokens = min(limits) if limits else None

    def classify(self, image: Any, labels: Any, template: Any = None) -> list[dict[str, Any]]:
        """The pipeline's answer for one image and its labels, each read and bounded as a request's field is.

        Raises:
            BadRequest: a field is wrong; the message says which and why.
            ModelFailure: anything that failed inside the model or its tokenizer on a request that passed the checks.
        """
        image, labels, template = read_image(image), read_labels(labels), read_template(template)
        try:
            self.check_text_length(labels, template)
            return self.classifier(image, candidate_labels=labels, hypothesis_template=template)
        except BadRequest:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # noqa: BLE001 - a Rust panic (pyo3's PanicException) is a BaseException
            logger.exception("a zero-shot request failed inside the model")
            raise ModelFailure(f"the model failed on this request ({type(error).__name__}: {error})") from None

    def check_text_length(self, labels: list[str], template: str) -> None:
        """Refuses a hypothesis longer than the text tower's positions (the pipeline does not truncate, and the
        tower would fail on it)."""
        if self.max_text_tokens is None:
            return
        hypotheses = [template.format(label) for label in labels]
        for label, ids in zip(labels, self.classifier.tokenizer(hypotheses)["input_ids"]):
            if len(ids) > self.max_text_tokens:
                raise BadRequest(
                    f"the hypothesis of candidate label {label[:40]!r} is {len(ids)} tokens; the model reads at most "
                    f"{self.max_text_tokens}: shorten the label or the hypothesis_template"
                )

    def __call__(self, data: dict[str, Any]) -> list[dict[str, Any]] | dict[str, str]:
        try:
            if not isinstance(data, dict) or "inputs" not in data:
                raise BadRequest("the request has no 'inputs'")
            parameters = {} if data.get("parameters") is None else data["parameters"]
            if not isinstance(parameters, dict):
                raise BadRequest(f"parameters must be an object, got {type(parameters).__name__}")
            return self.classify(
                data["inputs"], parameters.get("candidate_labels"), parameters.get("hypothesis_template")
            )
        except BadRequest as error:
            return {"error": f"{error}. {REQUEST_FORMAT}"}
        except ModelFailure as error:
            return {"error": str(error)}
