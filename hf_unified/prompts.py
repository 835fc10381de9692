"""Prompt templates and zero-shot classifiers.

UniCL turns image-label data into image-text data by putting the class name into a template drawn at random, and
classifies zero-shot with the mean of all templates' normalised text embeddings.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

# CLIP's 80 ImageNet templates (Radford et al., 2021).
OPENAI_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# UniCL's 81: the bare class name first, then CLIP's 80 (data/imagenet/constants.py, same set).
UNICL_TEMPLATES = ("{}.",) + OPENAI_IMAGENET_TEMPLATES


def class_prompt(class_name: str | Sequence[str], templates: Sequence[str] = UNICL_TEMPLATES, rng=random) -> str:
    """A random prompt for a class, as UniCL builds its image-label training text: a template drawn at random, then
    (for a list of synonyms) a name drawn at random, with commas dropped and '+' made a space as in the official code.
    The training data's class prompts come from here (`training.data.decoding.read_sample`)."""
    template = rng.choice(list(templates))
    if not isinstance(class_name, str):
        class_name = rng.choice(list(class_name))
    return template.format(class_name.replace(",", "").replace("+", " "))


@torch.no_grad()
def build_zero_shot_classifier(
    model,
    processor,
    class_names: Sequence[str],
    templates: Sequence[str] = UNICL_TEMPLATES,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Zero-shot classifier weights: for each class, the mean of the L2-normalised embeddings of all its prompts,
    re-normalised.

    Args:
        model: any model of this package (or `CLIPModel`): needs `get_text_features` returning `pooler_output`.
        processor: its processor or tokenizer (called with `text=`).
        class_names: `C` class names.
        templates: format strings with one `{}`.
        batch_size: prompts embedded per forward pass.

    Returns:
        `[C, D]` unit-norm class embeddings; `logits = scale * image_embeds @ weights.T`.
    """
    if not class_names:
        raise ValueError("class_names is empty")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("templates must be a non-empty list of format strings with one '{}'")
    device = device or next(model.parameters()).device
    prompts = [template.format(name) for name in class_names for template in templates]
    tokenize = getattr(processor, "tokenizer", processor)
    embeddings = []
    for start in range(0, len(prompts), batch_size):
        inputs = tokenize(prompts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
        features = model.get_text_features(**{k: v.to(device) for k, v in inputs.items()}).pooler_output
        embeddings.append(torch.nn.functional.normalize(features.float(), dim=-1))
    per_prompt = torch.cat(embeddings).view(len(class_names), len(templates), -1)
    return torch.nn.functional.normalize(per_prompt.mean(dim=1), dim=-1)


__all__ = ["OPENAI_IMAGENET_TEMPLATES", "UNICL_TEMPLATES", "build_zero_shot_classifier", "class_prompt"]
