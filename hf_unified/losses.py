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
    """Symmetric InfoNCE (CLIP) over the global batch; row `i` of both inputs is a positive pair.

    The one-view, pairs-only, cross-modal case of [`contrastive_objective`].

    Args:
        image_embeds (`torch.Tensor` of shape `(n_local, dim)`): L2-normalised image embeddings of this rank.
        text_embeds (`torch.Tensor` of shape `(n_local, dim)`): L2-normalised text embeddings of this rank.
        logit_scale (`torch.Tensor` of shape `()` or `(1,)`): multiplicative scale (already exponentiated).

    Returns:
        `torch.Tensor` of shape `()`: this rank's share of `(CE(image->text) + CE(text->image)) / 2` averaged over
        the global batch.
    """
    _check_pair(image_embeds, text_embeds)
    return contrastive_objective(image_embeds[:, None], text_embeds, logit_scale)


def unicl_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """UniCL's bidirectional target-aware loss (Yang et al., 2022) over the global batch.

    `T[i, j] = 1` when items `i` and `j` share a label; each row of `T` is normalised to sum to one and used as the
    soft target of a cross-entropy over `logits = scale * u @ v.T`, in both directions:
    `L = (SoftCE(logits, T) + SoftCE(logits.T, T.T)) / 2`. That is SupCon's L_out over the other modality, so this
    is the one-view, cross-modal, label-positive case of [`contrastive_objective`]. With all-unique labels it is
    [`clip_loss`].

    Args:
        image_embeds (`torch.Tensor` of shape `(n_local, dim)`): L2-normalised image embeddings of this rank.
        text_embeds (`torch.Tensor` of shape `(n_local, dim)`): L2-normalised text embeddings of this rank.
        labels (`torch.LongTensor` of shape `(n_local,)`): class ids; `-1` marks an image-text pair (a label of its
            own).
        logit_scale (`torch.Tensor` of shape `()` or `(1,)`): multiplicative scale (already exponentiated).

    Returns:
        `torch.Tensor` of shape `()`: this rank's share of the loss averaged over the global batch.
    """
    _check_pair(image_embeds, text_embeds)
    return contrastive_objective(image_embeds[:, None], text_embeds, logit_scale, labels=labels)


def unique_pair_labels(labels: torch.Tensor, offset: int) -> torch.Tensor:
    """Gives every image-text pair (label `-1`) a label no other item has.

    Class ids are `>= 0`; pair `i` of the global batch becomes `-1 - i`, unique across ranks without knowing the
    largest class id (the paper offsets past it; any unique value is the same target matrix).

    Args:
        labels (`torch.LongTensor` of shape `(n,)`): class ids, `-1` for image-text pairs.
        offset (`int`): global index of `labels[0]`.
    """
    positions = torch.arange(offset, offset + labels.shape[0], device=labels.device)
    return torch.where(labels < 0, -1 - positions, labels)


MULTI_POSITIVE_VARIANTS = ("mp_nce", "supcon", "infonce")


def _multi_positive_terms(
    logits: torch.Tensor, positive_mask: torch.Tensor, candidate_mask: torch.Tensor, variant: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of this rank's loss terms, their count) for [`multi_positive_loss`]; see there for the variants."""
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
        negative_lse = torch.logsumexp(negatives, dim=1, keepdim=True)  # [R, 1]; -inf when there is no negative
        per_pair = torch.logaddexp(logits, negative_lse) - logits  # [R, C]
        return per_pair.masked_fill(~positives, 0).sum(), positives.sum()
    log_prob = logits - torch.logsumexp(masked, dim=1, keepdim=True)
    per_pair = (-log_prob).masked_fill(~positives, 0)
    if variant == "infonce":
        return per_pair.sum(), positives.sum()
    num_positives = positives.sum(dim=1)
    has_positive = num_positives > 0
    per_anchor = per_pair.sum(dim=1)[has_positive] / num_positives[has_positive]
    return per_anchor.sum(), has_positive.sum()


def multi_positive_loss(
    logits: torch.Tensor,
    positive_mask: torch.Tensor,
    candidate_mask: torch.Tensor,
    variant: str = "mp_nce",
) -> torch.Tensor:
    """Contrastive loss of anchors that have several positives.

    For anchor `a` with positives `P(a)` and negatives `N(a) = candidates \\ P(a)`:

    - `"mp_nce"` (UniCLIP's MP-NCE): every positive competes against the negatives only,
      `-log(exp(s_ap) / (exp(s_ap) + sum_{n in N(a)} exp(s_an)))`, averaged over all positive pairs;
    - `"infonce"`: every positive competes against all candidates (other positives included),
      `-log(exp(s_ap) / sum_{c} exp(s_ac))`, averaged over all positive pairs;
    - `"supcon"` (SupCon's L_out): `-1/|P(a)| sum_p log(exp(s_ap) / sum_c exp(s_ac))`, averaged over anchors.

    With one positive per anchor the three are the same loss.

    Args:
        logits (`torch.Tensor` of shape `(num_anchors, num_candidates)`):
            Scaled similarities of this rank's anchors against all candidates.
        positive_mask (`torch.BoolTensor` of shape `(num_anchors, num_candidates)`):
            True where the candidate is a positive of the anchor.
        candidate_mask (`torch.BoolTensor` of shape `(num_anchors, num_candidates)`):
            False for the anchor itself and anything the anchor must ignore.
        variant (`str`): one of `"mp_nce"`, `"supcon"`, `"infonce"`.

    Returns:
        `torch.Tensor` of shape `()`: this rank's share of the global mean (see [`global_mean`]).
    """
    return global_mean(*_multi_positive_terms(logits, positive_mask, candidate_mask, variant))


def similarity_logits(
    cosine: torch.Tensor,
    domain_pair: int | torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """The (domain-dependent) similarity `scale[D] * (cos - offset[D])`.

    Args:
        cosine (`torch.Tensor` of shape `(rows, columns)`): cosine similarities.
        domain_pair (`int` or `torch.LongTensor` broadcastable to `cosine`): domain-pair index per entry,
            `IMAGE_IMAGE`, `IMAGE_TEXT` or `TEXT_TEXT`.
        scale (`torch.Tensor` of shape `(3,)`, `(1,)` or `()`): multiplicative scale per domain pair, or one shared.
        offset (`torch.Tensor` of shape `(3,)`, *optional*): similarity offset per domain pair.
    """
    scale = scale.reshape(-1)
    shifted = cosine if offset is None else cosine - offset[domain_pair]
    return (scale[domain_pair] if scale.numel() > 1 else scale[0]) * shifted


# Domain of an embedding and index of an unordered domain pair (= the sum of the two domains) in the per-pair
# scales and offsets.
IMAGE_DOMAIN, TEXT_DOMAIN = 0, 1
IMAGE_IMAGE, IMAGE_TEXT, TEXT_TEXT = 0, 1, 2
DOMAIN_PAIRS = ("image-image", "image-text", "text-text")


def contrastive_objective(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    text_keys: torch.Tensor | None = None,
    intra_domain_pairs: bool = False,
    variant: str = "supcon",
) -> torch.Tensor:
    """The one contrastive objective of this package, of which CLIP, UniCL and UniCLIP are points.

    Each of the `n` items of this rank has `V` image views and one text: `(V + 1) n` embeddings in one space. An
    anchor is any of them; its candidates are the embeddings of the other domain (CLIP, UniCL) or of both domains
    (`intra_domain_pairs`, UniCLIP's universal space), never itself. Its positives are the candidates of the same item
    or, with `labels`, of any item with the same label (UniCL's target matrix; `-1` = a label of its own). With
    `text_keys`, a text candidate equal to the anchor's own text (identical captions) is neither a positive nor a
    negative. The similarity is `scale[D] * (cos - offset[D])` for the domain pair `D` (one shared scale and no offset
    for CLIP and UniCL). The loss terms are those of [`multi_positive_loss`] (`variant`), averaged over the global
    batch:

    - CLIP: `V = 1`, no labels, cross-domain, any variant (one positive per anchor);
    - UniCL: `V = 1`, labels, cross-domain, `"supcon"` (its target-normalised cross-entropy);
    - UniCLIP: `V = 2`, no labels, `intra_domain_pairs`, per-pair scales and offsets, `"mp_nce"`.

    Exact under data parallelism: all ranks' embeddings are gathered with gradient and each rank scores its own
    anchors against all candidates (memory `O(n_local x N_global)`).

    Args:
        image_embeds (`torch.Tensor` of shape `(n_local, num_views, dim)`): L2-normalised image-view embeddings.
        text_embeds (`torch.Tensor` of shape `(n_local, dim)`): L2-normalised text embeddings; text `i` belongs to
            the views of image `i`.
        scale (`torch.Tensor` of shape `(3,)`, `(1,)` or `()`): multiplicative similarity scale per domain pair
            (image-image, image-text, text-text), or one shared.
        offset (`torch.Tensor` of shape `(3,)`, *optional*): similarity offset per domain pair.
        labels (`torch.LongTensor` of shape `(n_local,)`, *optional*): class ids, `-1` for an item that is only
            its own positive; None: every item is only its own positive.
        text_keys (`torch.LongTensor` of shape `(n_local,)`, *optional*): equal for identical texts
            ([`text_identity_keys`]); None: no duplicate masking.
        intra_domain_pairs (`bool`): whether image-image and text-text pairs are candidates too.
        variant (`str`): `"supcon"`, `"mp_nce"` or `"infonce"` ([`multi_positive_loss`]).

    Returns:
        `torch.Tensor` of shape `()`: this rank's share of the global mean loss.
    """
    if image_embeds.ndim != 3 or text_embeds.ndim != 2:
        raise ValueError(
            "image_embeds must be [batch, views, dim] and text_embeds [batch, dim]; got "
            f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}"
        )
    n_local, num_views, dim = image_embeds.shape
    if text_embeds.shape != (n_local, dim):
        raise ValueError(
            f"text_embeds must be [{n_local}, {dim}] to pair with image views {tuple(image_embeds.shape)}; got "
            f"{tuple(text_embeds.shape)}"
        )
    device = image_embeds.device
    if labels is None:
        labels = torch.full((n_local,), -1, dtype=torch.long, device=device)
    elif labels.ndim != 1 or labels.shape[0] != n_local:
        raise ValueError(
            f"labels must be [batch] = [{n_local}] class ids (-1 for image-text pairs); "
            f"got shape {tuple(labels.shape)}"
        )
    elif labels.dtype.is_floating_point:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if text_keys is not None and text_keys.shape != (n_local,):
        raise ValueError(f"text_keys must be [batch] = [{n_local}]; got shape {tuple(text_keys.shape)}")

    all_views, offset_rows = gather_with_grad(image_embeds)
    all_texts, _ = gather_with_grad(text_embeds)
    n_global = all_views.shape[0]
    groups = unique_pair_labels(labels.to(device), offset_rows)  # [n_local]
    all_groups = _gather_no_grad(groups)  # [N_global]
    view_groups, all_view_groups = groups.repeat_interleave(num_views), all_groups.repeat_interleave(num_views)
    views, candidate_views = image_embeds.reshape(-1, dim), all_views.reshape(-1, dim)  # [n V, D], [N V, D]

    # Candidates that are not negatives: the anchor itself, and (with text_keys) other items' identical texts.
    text_is_duplicate = None
    if text_keys is not None:
        keys, all_keys = text_keys.to(device), _gather_no_grad(text_keys.to(device))
        text_is_duplicate = (keys[:, None] == all_keys[None, :]) & (groups[:, None] != all_groups[None, :])
    local_rows = torch.arange(offset_rows, offset_rows + n_local, device=device)

    def block(anchors, anchor_groups, candidates, candidate_groups, pair, exclude=None):
        logits = similarity_logits(anchors @ candidates.T, pair, scale, offset)
        positives = anchor_groups[:, None] == candidate_groups[None, :]
        keep = torch.ones_like(positives) if exclude is None else ~exclude
        return logits, positives, keep

    # Image-view anchors: [image-image |] image-text; text anchors: text-image [| text-text].
    image_rows = [
        block(views, view_groups, all_texts, all_groups, IMAGE_TEXT, _repeat_rows(text_is_duplicate, num_views))
    ]
    text_rows = [block(text_embeds, groups, candidate_views, all_view_groups, IMAGE_TEXT)]
    if intra_domain_pairs:
        view_columns = (local_rows[:, None] * num_views + torch.arange(num_views, device=device)).reshape(-1)
        is_self_view = torch.arange(n_global * num_views, device=device)[None, :] == view_columns[:, None]
        image_rows.insert(0, block(views, view_groups, candidate_views, all_view_groups, IMAGE_IMAGE, is_self_view))
        is_self_text = torch.arange(n_global, device=device)[None, :] == local_rows[:, None]
        if text_is_duplicate is not None:
            is_self_text = is_self_text | text_is_duplicate
        text_rows.append(block(text_embeds, groups, all_texts, all_groups, TEXT_TEXT, is_self_text))

    total, count = 0, 0
    for rows in (image_rows, text_rows):
        logits, positives, keep = (torch.cat(parts, dim=1) for parts in zip(*rows))
        row_sum, row_count = _multi_positive_terms(logits, positives, keep, variant)
        total, count = total + row_sum, count + row_count
    return global_mean(total, count)


def _repeat_rows(mask: torch.Tensor | None, times: int) -> torch.Tensor | None:
    """`[n, C]` -> `[n * times, C]`, each row repeated (one per image view of the item)."""
    return None if mask is None else mask.repeat_interleave(times, dim=0)


def text_identity_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A key per text, equal for identical token sequences, comparable across batches and ranks.

    A polynomial hash of the attended token ids (int64 arithmetic wraps, which is fine for a hash); padding does not
    change it.

    Args:
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): token ids.
        attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*): 1 on real tokens.

    Returns:
        `torch.LongTensor` of shape `(batch_size,)`.
    """
    ids = input_ids.long() + 1
    if attention_mask is not None:
        ids = ids * attention_mask.long()
    powers = torch.full((ids.shape[1],), 1_000_003, dtype=torch.long, device=ids.device).cumprod(0)
    return (ids * powers).sum(dim=1)
