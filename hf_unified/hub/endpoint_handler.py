"""Inference Endpoints custom handler for a zero-shot image classification model (pushed as `handler.py`).

Hugging Face Inference Endpoints load `handler.py` from the repository root and call
`EndpointHandler(path)(data)`. This file is copied byte for byte into every pushed hf-unified custom-code folder, so
it imports only what the endpoint has (transformers, torch, Pillow) and never `hf_unified`. The model is loaded with
the zero-shot pipeline and the repository's own code (`trust_remote_code=True`: the code sits next to this file).

Request:

    {"inputs": <image: PIL image, raw bytes or a base64 string (a data URI is fine)>,
     "parameters": {"candidate_labels": ["cat", "dog"] or "cat, dog",
                    "hypothesis_template": "This is a photo of {}."}}   # optional; the pipeline's default

Response: `[{"label": ..., "score": ...}, ...]` sorted by decreasing score, exactly what
`pipeline("zero-shot-image-classification")` returns; a request that cannot be served answers
`{"error": "<what is wrong and what to send instead>"}`.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from PIL import Image, UnidentifiedImageError
from transformers import pipeline

DEFAULT_HYPOTHESIS_TEMPLATE = "This is a photo of {}."
REQUEST_FORMAT = (
    'send {"inputs": <image as bytes or a base64 string>, '
    '"parameters": {"candidate_labels": ["label 1", "label 2"], "hypothesis_template": "This is a photo of {}."}}'
)


class BadRequest(ValueError):
    """The request cannot be served; the message says which field is wrong and what to send."""


def read_image(inputs: Any) -> Image.Image:
    """`data["inputs"]` as an RGB image: a PIL image, encoded image bytes, or those bytes base64-encoded."""
    if isinstance(inputs, Image.Image):
        return inputs.convert("RGB")
    if isinstance(inputs, str):
        encoded = inputs.split(",", 1)[1] if inputs.startswith("data:") else inputs
        try:
            inputs = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"inputs is a string but not base64-encoded image bytes; {REQUEST_FORMAT}") from None
    if not isinstance(inputs, (bytes, bytearray)):
        raise BadRequest(f"inputs must be an image, got {type(inputs).__name__}; {REQUEST_FORMAT}")
    try:
        image = Image.open(io.BytesIO(inputs))
        image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise BadRequest(f"inputs is not a readable image ({len(inputs)} bytes: {error}); {REQUEST_FORMAT}") from None
    return image.convert("RGB")


def read_parameters(parameters: Any) -> tuple[list[str], str]:
    """`data["parameters"]` -> (candidate labels, hypothesis template)."""
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"parameters must be an object, got {type(parameters).__name__}; {REQUEST_FORMAT}")
    labels = parameters.get("candidate_labels")
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",")]
    if not isinstance(labels, (list, tuple)) or not all(isinstance(label, str) for label in labels):
        raise BadRequest(
            f"parameters.candidate_labels must be a list of strings or one comma-separated string, got {labels!r}; "
            f"{REQUEST_FORMAT}"
        )
    labels = [label for label in labels if label.strip()]
    if not labels:
        raise BadRequest(f"parameters.candidate_labels is empty: give at least one label; {REQUEST_FORMAT}")
    template = parameters.get("hypothesis_template", DEFAULT_HYPOTHESIS_TEMPLATE)
    if not isinstance(template, str) or "{}" not in template:
        raise BadRequest(
            f"parameters.hypothesis_template must be a string with one '{{}}' where the label goes, got {template!r}"
        )
    return labels, template


class EndpointHandler:
    """Zero-shot image classification with the model in `path` (the endpoint's copy of this repository)."""

    def __init__(self, path: str = ""):
        self.classifier = pipeline("zero-shot-image-classification", model=path or ".", trust_remote_code=True)

    def __call__(self, data: dict[str, Any]) -> list[dict[str, Any]] | dict[str, str]:
        try:
            if not isinstance(data, dict) or "inputs" not in data:
                raise BadRequest(f"the request has no 'inputs'; {REQUEST_FORMAT}")
            image = read_image(data["inputs"])
            labels, template = read_parameters(data.get("parameters"))
        except BadRequest as error:
            return {"error": str(error)}
        return self.classifier(image, candidate_labels=labels, hypothesis_template=template)
