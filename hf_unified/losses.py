"""Contrastive losses shared by every method, exact under data parallelism.

Every loss here follows one recipe (open_clip's ``local_loss=True`` + ``gather_with_grad=True``):

1. each rank L2-normalises its own ``n_local`` rows;
2. the rows are all-gathered **with gradient** (``torch.distributed.nn.functional.all_gather``) into the
   ``N_global`` columns;
3. each rank computes the loss of its own rows against all columns (memory ``O(n_local x N_global)``);
4. the local sum is divided by the global number of terms and multiplied by the world size
   (:func:`global_mean`), so that the data-parallel *average* of the per-rank losses, and of their gradients,
   equals the loss and gradient of one process holding the whole global batch.

A single process is the world-size-1 case of the same code: nothing is gathered and :func:`global_mean` is a
plain mean. ``accelerate``'s ``gather`` carries no gradient and cannot replace step 2.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gathers ``local`` from every rank, keeping the autograd graph.

    Ranks may hold different numbers of rows (the last batch of an epoch, an uneven stream): rows are padded to
    the largest count for the collective and the padding is dropped again.

    Args:
        local: ``[n_local, ...]`` this rank's rows.

    Returns:
        ``([N_global, ...] rows of all ranks in rank order, offset of this rank's first row)``. The backward pass
        sends each rank the gradient of its own rows, summed over every rank that used them.
    """
    if not _distributed():
        return local, 0
    from torch.distributed.nn.functional import all_gather

    world_size, rank = dist.get_world_size(), dist.get_rank()
    count = torch.tensor([local.shape[0]], device=local.device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    largest = max(counts)
    if local.shape[0] < largest:
        padding = local.new_zeros((largest - local.shape[0], *local.shape[1:]))
        local = torch.cat([local, padding])
    gathered = all_gather(local)
    rows = torch.cat([part[:n] for part, n in zip(gathered, counts)])
    return rows, sum(counts[:rank])


def _gather_no_grad(local: torch.Tensor) -> torch.Tensor:
    """All-gathers integer metadata (labels, pair ids), which carries no gradient."""
    if not _distributed():
        return local
    return gather_with_grad(local)[0]


def global_mean(local_sum: torch.Tensor, local_count: int | torch.Tensor) -> torch.Tensor:
    """Turns a rank's sum of loss terms into its share of the global mean.

    Returns ``local_sum * world_size / global_count``. Data-parallel training averages gradients (and we average
    logged losses) over ranks, which multiplies by ``1 / world_size`` again, giving exactly
    ``sum_over_all_terms / global_count``, also when ranks hold different numbers of terms.
    """
    count = torch.as_tensor(local_count, dtype=torch.float64, device=local_sum.device)
    if not _distributed():
        return local_sum / count.clamp_min(1).to(local_sum.dtype)
    global_count = count.clone()
    dist.all_reduce(global_count)
    scale = dist.get_world_size() / global_count.clamp_min(1)
    return local_sum * scale.to(local_sum.dtype)


def _check_pair(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> None:
    if image_embeds.ndim != 2 or text_embeds.ndim != 2:
        raise ValueError(
            f"image_embeds and text_embeds must be [batch, dim]; got {tuple(image_embeds.shape)} and "
            f"{tuple(text_embeds.shape)}"
        )
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            "image_embeds and text_embeds must pair up row by row; got shapes "
            f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}"
        )


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) over the global batch; row ``i`` of both inputs is a positive pair.

    Args:
        image_embeds: ``[n_local, D]`` L2-normalised image embeddings of this rank.
        text_embeds: ``[n_local, D]`` L2-normalised text embeddings of this rank.
        logit_scale: ``[]`` multiplicative scale (already exponentiated).

    Returns:
        ``[]`` this rank's share of ``(CE(image->text) + CE(text->image)) / 2`` averaged over the global batch.
    """
    _check_pair(image_embeds, text_embeds)
    all_images, offset = gather_with_grad(image_embeds)
    all_texts, _ = gather_with_grad(text_embeds)
    targets = torch.arange(offset, offset + image_embeds.shape[0], device=image_embeds.device)
    logits_per_image = logit_scale * image_embeds @ all_texts.T
    logits_per_text = logit_scale * text_embeds @ all_images.T
    local_sum = F.cross_entropy(logits_per_image, targets, reduction="sum") + F.cross_entropy(
        logits_per_text, targets, reduction="sum"
    )
    return global_mean(local_sum / 2, image_embeds.shape[0])


def unique_pair_labels(labels: torch.Tensor, offset: int) -> torch.Tensor:
    """Gives every image-text pair (label ``-1``) a label no other item has.

    Class ids are ``>= 0``; pair ``i`` of the global batch becomes ``-1 - i``, unique across ranks without knowing
    the largest class id (the paper offsets past it; any unique value is the same target matrix).

    Args:
        labels: ``[n]`` class ids, ``-1`` for image-text pairs.
        offset: global index of ``labels[0]``.
    """
    positions = torch.arange(offset, offset + labels.shape[0], device=labels.device)
    return torch.where(labels < 0, -1 - positions, labels)


def unicl_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """UniCL's bidirectional target-aware loss (Yang et al., 2022) over the global batch.

    ``T[i, j] = 1`` when items ``i`` and ``j`` share a label; each row of ``T`` is normalised to sum to one and used
    as the soft target of a cross-entropy over ``logits = scale * u @ v.T``, in both directions:
    ``L = (SoftCE(logits, T) + SoftCE(logits.T, T.T)) / 2``. With all-unique labels this is :func:`clip_loss`.

    Args:
        image_embeds: ``[n_local, D]`` L2-normalised image embeddings of this rank.
        text_embeds: ``[n_local, D]`` L2-normalised text embeddings of this rank.
        labels: ``[n_local]`` integer class ids; ``-1`` marks an image-text pair (its own unique label).
        logit_scale: ``[]`` multiplicative scale (already exponentiated).

    Returns:
        ``[]`` this rank's share of the loss averaged over the global batch.
    """
    _check_pair(image_embeds, text_embeds)
    if labels.ndim != 1 or labels.shape[0] != image_embeds.shape[0]:
        raise ValueError(
            f"labels must be [batch] = [{image_embeds.shape[0]}] class ids (-1 for image-text pairs); "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    all_images, offset = gather_with_grad(image_embeds)
    all_texts, _ = gather_with_grad(text_embeds)
    local_labels = unique_pair_labels(labels, offset)
    all_labels = _gather_no_grad(local_labels)
    # T is symmetric, so the rows of T.T that belong to this rank's texts are the same rows as for its images.
    targets = (local_labels[:, None] == all_labels[None, :]).to(image_embeds.dtype)
    targets = targets / targets.sum(dim=1, keepdim=True)
    logits_per_image = logit_scale * image_embeds @ all_texts.T
    logits_per_text = logit_scale * text_embeds @ all_images.T
    image_to_text = -(targets * logits_per_image.log_softmax(dim=1)).sum()
    text_to_image = -(targets * logits_per_text.log_softmax(dim=1)).sum()
    return global_mean((image_to_text + text_to_image) / 2, image_embeds.shape[0])


MULTI_POSITIVE_VARIANTS = ("mp_nce", "supcon", "infonce")


def multi_positive_loss(
    logits: torch.Tensor,
    positive_mask: torch.Tensor,
    candidate_mask: torch.Tensor,
    variant: str = "mp_nce",
) -> torch.Tensor:
    """Contrastive loss of anchors that have several positives.

    For anchor ``a`` with positives ``P(a)`` and negatives ``N(a) = candidates \\ P(a)``:

    - ``"mp_nce"`` (UniCLIP's MP-NCE): every positive competes against the negatives only,
      ``-log(exp(s_ap) / (exp(s_ap) + sum_{n in N(a)} exp(s_an)))``, averaged over all positive pairs;
    - ``"infonce"``: every positive competes against all candidates (other positives included),
      ``-log(exp(s_ap) / sum_{c} exp(s_ac))``, averaged over all positive pairs;
    - ``"supcon"`` (SupCon's L_out): ``-1/|P(a)| sum_p log(exp(s_ap) / sum_c exp(s_ac))``, averaged over anchors.

    Args:
        logits: ``[R, C]`` scaled similarities of this rank's ``R`` anchors against all ``C`` candidates.
        positive_mask: ``[R, C]`` bool, True where the candidate is a positive of the anchor.
        candidate_mask: ``[R, C]`` bool, False for the anchor itself and anything the anchor must ignore.
        variant: one of ``"mp_nce"``, ``"supcon"``, ``"infonce"``.

    Returns:
        ``[]`` this rank's share of the global mean (see :func:`global_mean`).
    """
    if variant not in MULTI_POSITIVE_VARIANTS:
        raise ValueError(f"variant must be one of {MULTI_POSITIVE_VARIANTS}, got {variant!r}")
    if logits.ndim != 2 or positive_mask.shape != logits.shape or candidate_mask.shape != logits.shape:
        raise ValueError(
            "logits, positive_mask and candidate_mask must share one [anchors, candidates] shape; got "
            f"{tuple(logits.shape)}, {tuple(positive_mask.shape)}, {tuple(candidate_mask.shape)}"
        )
    positives = positive_mask & candidate_mask
    masked = logits.masked_fill(~candidate_mask, float("-inf"))
    if variant == "mp_nce":
        negatives = masked.masked_fill(positives, float("-inf"))
        negative_lse = torch.logsumexp(negatives, dim=1, keepdim=True)  # [R, 1]
        per_pair = torch.logaddexp(logits, negative_lse) - logits  # [R, C]
        local_sum = per_pair.masked_fill(~positives, 0).sum()
        return global_mean(local_sum, positives.sum())
    log_prob = logits - torch.logsumexp(masked, dim=1, keepdim=True)
    per_pair = (-log_prob).masked_fill(~positives, 0)
    if variant == "infonce":
        return global_mean(per_pair.sum(), positives.sum())
    num_positives = positives.sum(dim=1)
    has_positive = num_positives > 0
    per_anchor = per_pair.sum(dim=1)[has_positive] / num_positives[has_positive]
    return global_mean(per_anchor.sum(), has_positive.sum())
