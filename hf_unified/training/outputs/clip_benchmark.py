"""LAION's CLIP_benchmark on any hf-unified model (or any saved folder with `get_image_features` /
`get_text_features`, transformers' `CLIPModel` included).

CLIP_benchmark's loaders return `(model, transform, tokenizer)` where `model.encode_image(images)` and
`model.encode_text(tokens)` give (un-normalised) embeddings, `transform` maps a PIL image to a tensor and `tokenizer`
maps a list of strings to token ids with `.to(device)`. [`load_hf_unified`] returns exactly that, and [`register`]
adds it to CLIP_benchmark as `--model_type hf_unified`:

```bash
pip install clip-benchmark
python -m hf_unified.training.outputs.clip_benchmark eval --model_type hf_unified --model outputs/unicl-tiny \\
    --pretrained none --dataset cifar10 --dataset_root data/cifar10
```

Images go through the model's own processor (its evaluation preprocessing), texts through its tokenizer;
augmentation-aware models embed un-augmented images (identity parameters), as in our own evaluation.
"""

from __future__ import annotations

import torch
from torch import nn


class CLIPBenchmarkModel(nn.Module):
    """`encode_image` / `encode_text` over a model's `get_image_features` / `get_text_features`.

    Args:
        model (`PreTrainedModel`): any model of this package (or `CLIPModel`).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(batch_size, 3, height, width)` -> `(batch_size, projection_dim)` image embeddings."""
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output

    def encode_text(self, tokens) -> torch.Tensor:
        """The tokenizer's output (input ids and attention mask) -> `(batch_size, projection_dim)` text embeddings."""
        return self.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask")
        ).pooler_output


class CLIPBenchmarkTokenizer:
    """A list of strings -> a `BatchEncoding` (padded, truncated to the tokenizer's length), movable with `.to`."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, texts: list[str]):
        return self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")


class CLIPBenchmarkTransform:
    """A PIL image -> `(3, height, width)` pixel values, with the model's own image processor."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


def load_hf_unified(
    model_name: str, pretrained: str | None = None, cache_dir: str | None = None, device: str = "cpu", **kwargs
):
    """CLIP_benchmark's loader interface: `(model, transform, tokenizer)` for a saved folder or Hub id.

    `pretrained` is CLIP_benchmark's checkpoint-name argument; hf-unified folders carry their weights, so it must be
    empty or `"none"` (a revision is given through `kwargs`, e.g. `revision="main"`).
    """
    from transformers import AutoModel, AutoProcessor

    import hf_unified  # noqa: F401  (registers the Auto classes)

    if pretrained not in (None, "", "none", "None"):
        raise ValueError(
            f"pretrained={pretrained!r}: an hf-unified folder carries its own weights; pass --pretrained none"
        )
    model = AutoModel.from_pretrained(model_name, cache_dir=cache_dir, **kwargs).to(device)
    processor = AutoProcessor.from_pretrained(model_name, cache_dir=cache_dir, **kwargs)
    return (
        CLIPBenchmarkModel(model),
        CLIPBenchmarkTransform(processor.image_processor),
        CLIPBenchmarkTokenizer(processor.tokenizer),
    )


def register() -> None:
    """Adds `hf_unified` to CLIP_benchmark's model types (its command line and `load_clip`)."""
    from clip_benchmark import models

    models.TYPE2FUNC["hf_unified"] = load_hf_unified
    if "hf_unified" not in models.MODEL_TYPES:
        models.MODEL_TYPES.append("hf_unified")  # the same list object the CLI's --model_type choices hold


def main() -> None:
    """`python -m hf_unified.training.outputs.clip_benchmark ...`: CLIP_benchmark's own command line, with
    `hf_unified`."""
    register()
    from clip_benchmark import cli

    cli.main()


if __name__ == "__main__":
    main()


__all__ = ["CLIPBenchmarkModel", "CLIPBenchmarkTokenizer", "CLIPBenchmarkTransform", "load_hf_unified", "register"]
