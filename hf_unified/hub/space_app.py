"""Gradio demo of a zero-shot image classification model (pushed as a Space's `app.py`).

This file is copied byte for byte into the Space; `space_config.json` beside it names the model and whether it needs
the repository's own code (`trust_remote_code`). It imports only gradio, transformers, torch and Pillow, never
`hf_unified`. Launched as a script it serves on `GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT` (gradio's variables).
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
from transformers import pipeline

CONFIG = json.loads(Path(__file__).with_name("space_config.json").read_text())
DEFAULT_HYPOTHESIS_TEMPLATE = "This is a photo of {}."

classifier = pipeline(
    "zero-shot-image-classification", model=CONFIG["model_id"], trust_remote_code=CONFIG["trust_remote_code"]
)


def classify(image, labels: str, hypothesis_template: str = DEFAULT_HYPOTHESIS_TEMPLATE) -> dict[str, float]:
    """Scores of the comma-separated `labels` for `image` (a PIL image), as the zero-shot pipeline gives them."""
    if image is None:
        raise gr.Error("Upload an image first.")
    candidates = [label.strip() for label in (labels or "").split(",") if label.strip()]
    if not candidates:
        raise gr.Error("Give at least one label, for example: cat, dog, car")
    if "{}" not in (hypothesis_template or ""):
        raise gr.Error("The hypothesis template needs '{}' where the label goes, e.g. 'This is a photo of {}.'")
    answer = classifier(image.convert("RGB"), candidate_labels=candidates, hypothesis_template=hypothesis_template)
    return {entry["label"]: float(entry["score"]) for entry in answer}


demo = gr.Interface(
    fn=classify,
    inputs=[
        gr.Image(type="pil", label="Image"),
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
