"""Zero-shot classification and image-text retrieval over a whole evaluation set, across ranks.

Each rank embeds its share of the evaluation stream; the embeddings, labels and captions are gathered from every
rank (`Accelerator.gather_for_metrics`, padded so ranks may hold different counts) and the metrics are computed on
the full set, so a 1-process and an N-process run report the same numbers.

- Zero-shot: class embeddings from prompt templates (`prompts.build_zero_shot_classifier`), top-1/top-5 accuracy
  computed with an `evaluate.Metric` (`TopKAccuracy`, defined here so it works offline).
- Retrieval: recall@{1,5,10} image->text and text->image. Items whose captions are identical are interchangeable
  (generated or templated captions repeat), so a retrieved caption counts as correct when its text equals the
  query image's caption, and for text->image any image whose caption equals the query counts.

Across processes every rank first takes rank 0's buffers (`sharding.synchronize_buffers`: BatchNorm statistics
drift apart between ranks in training), so every rank evaluates the model that is saved. A model sharded with FSDP2
runs collectives in each forward pass, so every rank must call it equally often: ranks then run their shares of the
evaluation set in lockstep (`sharding.lockstep`), a rank that has run out repeating its last batch, whose outputs
are discarded.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import torch
import torch.nn.functional as F

from ...prompts import build_zero_shot_classifier
from ..engine.sharding import is_fsdp2, lockstep, synchronize_buffers


class TopKAccuracy(evaluate.Metric):
    """Top-k accuracy from per-class scores: `compute(predictions=scores [N, C], references=labels [N], k=5)`."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Fraction of examples whose label is among the k highest-scoring classes.",
            citation="",
            inputs_description="predictions: [N, C] scores; references: [N] int labels; k: int",
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k: int = 1) -> dict:
        scores = torch.tensor(predictions)
        labels = torch.tensor(references)
        k = min(k, scores.shape[1])
        hits = (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
        return {f"top{k}_accuracy": hits.float().mean().item()}


def gather_rows(accelerator, rows: torch.Tensor) -> torch.Tensor:
    """Concatenates every rank's `[n_rank, ...]` rows in rank order; ranks may hold different counts."""
    if accelerator is None or accelerator.num_processes == 1:
        return rows
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = accelerator.gather_for_metrics(count).tolist()
    padded = accelerator.pad_across_processes(rows, dim=0)
    gathered = accelerator.gather_for_metrics(padded)
    width = padded.shape[0]
    return torch.cat([gathered[i * width : i * width + n] for i, n in enumerate(counts)])


def zero_shot_accuracy(
    image_embeds: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict:
    """Top-k accuracy of `[N, D]` normalised image embeddings against `[C, D]` class embeddings."""
    scores = image_embeds.float() @ classifier.float().T
    results = {}
    for k in ks:
        metric = TopKAccuracy()
        results.update(metric.compute(predictions=scores.tolist(), references=labels.tolist(), k=k))
    return results


def retrieval_recall(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, texts: Sequence[str], ks: Sequence[int] = (1, 5, 10)
) -> dict:
    """Recall@k both ways for `N` pairs (`image_embeds[i]` with `text_embeds[i]`, caption `texts[i]`)."""
    n = image_embeds.shape[0]
    if n != text_embeds.shape[0] or n != len(texts):
        raise ValueError(f"retrieval needs as many images as texts, got {n}, {text_embeds.shape[0]}, {len(texts)}")
    ids = {text: i for i, text in enumerate(dict.fromkeys(texts))}
    caption_id = torch.tensor([ids[text] for text in texts])
    same_caption = caption_id[:, None] == caption_id[None, :]  # [N, N]
    similarity = image_embeds.float() @ text_embeds.float().T
    results = {}
    for k in ks:
        k_eff = min(k, n)
        top_texts = similarity.topk(k_eff, dim=1).indices  # image -> text
        top_images = similarity.T.topk(k_eff, dim=1).indices  # text -> image
        i2t = same_caption.gather(1, top_texts).any(dim=1).float().mean().item()
        t2i = same_caption.gather(1, top_images).any(dim=1).float().mean().item()
        results[f"image_to_text_R@{k}"] = i2t
        results[f"text_to_image_R@{k}"] = t2i
    return results


@torch.no_grad()
def embed_dataset(model, dataloader, accelerator=None) -> dict:
    """Normalised image and text embeddings, labels and captions of this rank's evaluation batches, gathered
    from every rank (in lockstep, see the module docstring). Batches are `data.collate` outputs."""
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    images, texts_embeds, labels, texts, skipped = [], [], [], [], 0

    def usable_batches():
        nonlocal skipped
        for batch in dataloader:
            skipped += batch["num_skipped"]
            if "pixel_values" in batch:  # not a batch whose every sample was damaged
                yield batch

    batches = usable_batches()
    # Only a sharded model needs the lockstep: a replicated one runs no collective, and may have ranks without data.
    for batch, real in lockstep(batches, device) if is_fsdp2(model) else ((batch, True) for batch in batches):
        image = model.get_image_features(pixel_values=batch["pixel_values"].to(device)).pooler_output
        text = model.get_text_features(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).pooler_output
        if not real:  # a repeated batch keeps a sharded model's collectives in step; its outputs are not data
            continue
        images.append(F.normalize(image.float(), dim=-1))
        texts_embeds.append(F.normalize(text.float(), dim=-1))
        labels.append(batch["labels"].to(device))
        texts.extend(batch["texts"])
    width = model.config.projection_dim
    local = {
        "image_embeds": torch.cat(images) if images else torch.zeros(0, width, device=device),
        "text_embeds": torch.cat(texts_embeds) if texts_embeds else torch.zeros(0, width, device=device),
        "labels": torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device),
    }
    gathered = {name: gather_rows(accelerator, value).cpu() for name, value in local.items()}
    if accelerator is not None and accelerator.num_processes > 1:
        texts = accelerator.gather_for_metrics(texts, use_gather_object=True)
        skipped = sum(accelerator.gather_for_metrics([skipped], use_gather_object=True))
    gathered["texts"] = list(texts)
    gathered["num_skipped"] = skipped
    return gathered


def evaluate_model(
    model,
    dataloader,
    tokenizer,
    class_names: Sequence[Sequence[str]] | None,
    templates: Sequence[str],
    accelerator=None,
    retrieval: bool = True,
) -> dict:
    """Zero-shot top-1/top-5 (when class names and labels exist) and retrieval R@1/5/10 on the whole eval set.

    Args:
        model: the unwrapped model (`get_image_features` / `get_text_features`), sharded or not; every rank calls
            this (buffers are synchronised from rank 0 first).
        class_names: per class a list of names; the first name is used for the prompts.
        retrieval: compute retrieval recall (needs real captions: off for label-only evaluation sets, whose
            texts are class prompts).
    """
    was_training = model.training
    model.eval()
    synchronize_buffers(model)
    data = embed_dataset(model, dataloader, accelerator)
    results = {"num_examples": len(data["texts"]), "num_skipped": data["num_skipped"]}
    if results["num_examples"] == 0:
        raise ValueError("the evaluation set yielded no usable examples")
    labelled = data["labels"] >= 0
    if class_names and labelled.any():
        classifier = build_zero_shot_classifier(model, tokenizer, [names[0] for names in class_names], templates)
        accuracy = zero_shot_accuracy(data["image_embeds"][labelled], data["labels"][labelled], classifier.cpu())
        results.update({f"zero_shot_{name}": value for name, value in accuracy.items()})
        results["zero_shot_chance"] = 1.0 / len(class_names)
    if retrieval:
        results.update(retrieval_recall(data["image_embeds"], data["text_embeds"], data["texts"]))
    model.train(was_training)
    return results


__all__ = ["TopKAccuracy", "embed_dataset", "evaluate_model", "gather_rows", "retrieval_recall", "zero_shot_accuracy"]
