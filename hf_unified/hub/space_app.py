"""Gradio demo of a zero-shot image classification model (pushed as a Space's `app.py`).

This file is copied byte for byte into the Space, beside `handler.py` (the Inference Endpoints handler, which reads,
bounds and answers every request) and `image_processing.py` (bounded decoding, `to_rgb`); `space_config.json` names
the model and whether it needs the repository's own code (`trust_remote_code`). It imports only gradio, transformers,
torch, Pillow and those two files, never `hf_unified`. Launched as a script it serves on `GRADIO_SERVER_NAME` /
`GRADIO_SERVER_PORT` (gradio's variables).

Every bad request (an image too large or too thin, not an image, too many or too long labels, a template with other
fields) is answered with the handler's message as a `gradio.Error`, which the page shows, and the app goes on serving.
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
from handler import DEFAULT_HYPOTHESIS_TEMPLATE, BadRequest, EndpointHandler, ModelFailure

CONFIG = json.loads(Path(__file__).with_name("space_config.json").read_text())

handler = EndpointHandler(CONFIG["model_id"], trust_remote_code=CONFIG["trust_remote_code"])


class UploadedImage(gr.Image):
    """gradio's image input, handing the app the uploaded file's path (or the data URI an API client sent) without
    decoding it: gradio would decode the whole image first, convert it with PIL's clipping `convert("RGB")` and
    answer an oversized one with its generic error; the handler decodes it with the limits checked first."""

    def get_block_name(self) -> str:
        return "image"  # the page draws it with gradio's own image component

    def preprocess(self, payload) -> str | None:
        if payload is None:
            return None
        if payload.path is None and payload.url and payload.url.startswith("data:"):
            return payload.url
        return payload.path


def classify(image: str | None, labels: str, hypothesis_template: str = DEFAULT_HYPOTHESIS_TEMPLATE) -> dict:
    """Scores of the comma-separated `labels` for the uploaded image (a file path, or a data URI), as the zero-shot
    pipeline gives them."""
    if image is None:
        raise gr.Error("Upload an image first.")
    try:
        inputs = image if image.startswith("data:") else Path(image).read_bytes()
        answer = handler.classify(inputs, labels, hypothesis_template or None)
    except (BadRequest, ModelFailure) as error:
        raise gr.Error(str(error)) from None
    return {entry["label"]: float(entry["score"]) for entry in answer}


demo = gr.Interface(
    fn=classify,
    inputs=[
        UploadedImage(label="Image"),
        gr.Textbox(label="Candidate labels (comma-separated)", value=CONFIG.get("example_labels", "")),
        gr.Textbox(label="Hypothesis template", value=DEFAULT_HYPOTHESIS_TEMPLATE),
    ],
    outputs=gr.Label(label="Scores"),
    title=CONFIG.get("title") or f"Zero-shot image classification: {CONFIG['model_id']}",
    description=CONFIG.get("description", ""),
    api_name="classify",
    flagging_mode="never",
)

if __name__ == "__main__":
    demo.launch()
