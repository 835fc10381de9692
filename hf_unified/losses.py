"""Contrastive losses shared by every method, exact under data parallelism.

Every loss here follows one recipe (open_clip's ``local_loss=True`` + ``gather_with_grad=True``):

1. each rank L2-normalises its own ``n_local`` rows;
2. the rows are all-gathered **with gradient** (``torch.distributed.nn.functional.all_gather``) into the
   ``N_global`` columns;
3. each rank computes the loss of its own rows against all columns (memory ``O(n_local x N_global)``, or
   ``O(K x N_global)`` in blocks of ``K`` rows: :func:`contrastive_objective`'s ``chunk_size``);
4. the local sum is divided by the global number of terms and multiplied by the world size
   (:func:`global_mean`), so that the data-parallel *average* of the per-rank losses, and of their gradients,
   equals the loss and gradient of one process holding the whole global batch.

A single process is the world-size-1 case of the same code: nothing is gathered and :func:`global_mean` is a
plain mean. ``accelerate``'s ``gather`` carries no gradient and cannot replace step 2.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


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


# How an anchor's candidates are scored ([`multi_positive_loss`]); the config's `contrastive_loss` takes these.
MULTI_POSITIVE_VARIANTS = ("mp_nce", "supcon", "infonce", "sigmoid")


# What `intra_domain_pairs` may be: neither intra-domain pair, both, image-image only, text-text only.
INTRA_DOMAIN_PAIRS = (False, True, "image", "text")


def intra_domain_flags(intra_domain_pairs: bool | str) -> tuple[bool, bool]:
    """`(image-image pairs count, text-text pairs count)` of an `intra_domain_pairs` value (`INTRA_DOMAIN_PAIRS`)."""
    if isinstance(intra_domain_pairs, bool):
        return intra_domain_pairs, intra_domain_pairs
    if intra_domain_pairs not in INTRA_DOMAIN_PAIRS:
        raise ValueError(
            f"intra_domain_pairs must be one of {INTRA_DOMAIN_PAIRS} (both, neither, image-image only, text-text "
            f"only), got {intra_domain_pairs!r}"
        )
    return intra_domain_pairs == "image", intra_domain_pairs == "text"


def _check_variant(variant: str) -> None:
    if variant not in MULTI_POSITIVE_VARIANTS:
        raise ValueError(f"variant must be one of {MULTI_POSITIVE_VARIANTS}, got {variant!r}")


def _row_losses(
    logits: torch.Tensor, positives: torch.Tensor, keep: torch.Tensor | None, variant: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Each anchor row's loss, the number of terms the rows add to the mean, the row statistic the gradient needs
    ([`_logit_gradient`]) and each candidate column's share of the loss; see [`multi_positive_loss`] for the
    variants.

    Args:
        logits (`torch.Tensor` of shape `(rows, candidates)`): scaled similarities.
        positives (`torch.BoolTensor` of shape `(rows, candidates)`): the candidate shares the anchor's group.
        keep (`torch.BoolTensor` of shape `(rows, candidates)` or None): False for excluded candidates (the anchor
            itself, masked duplicates); None: every candidate counts.

    Returns:
        `(loss per row of shape (rows,), number of terms of shape (), log-normaliser of shape (rows,) or None, loss
        per column of shape (candidates,))`. The log-normaliser is the log-sum-exp over the row's candidates
        (`"supcon"`, `"infonce"`) or over its negatives only (`"mp_nce"`); `"sigmoid"` has none (every pair is its
        own binary term). The loss per column is the sum of the anchor-candidate terms of the column (SupCon's
        weighted by `1 / |P(a)|`), detached: the rows' losses and the columns' add up to the same total, split by
        anchor or by candidate ([`contrastive_objective`]'s `return_terms` groups the columns by domain pair).
    """
    if keep is not None:
        positives = positives & keep
    if variant == "sigmoid":
        per_pair = -F.logsigmoid(torch.where(positives, logits, -logits))  # -log sigmoid(z s), z = +1 / -1
        if keep is not None:
            per_pair = per_pair.masked_fill(~keep, 0)
        count = logits.new_full((), logits.shape[0], dtype=torch.long)
        return per_pair.sum(dim=1), count, None, per_pair.detach().sum(dim=0)
    # Left-out candidates are filled with the dtype's lowest finite value, not -inf: exp() of it is exactly 0 next to
    # any real logit, and a row with nothing left (an MP-NCE anchor without negatives: its terms are 0) keeps a
    # finite log-normaliser, so its gradient is 0 rather than NaN.
    lowest = torch.finfo(logits.dtype).min
    left_out = positives if variant == "mp_nce" else None
    if keep is not None:
        left_out = ~keep if left_out is None else left_out | ~keep
    log_normaliser = torch.logsumexp(logits if left_out is None else logits.masked_fill(left_out, lowest), dim=1)
    if variant == "mp_nce":
        # -log(exp(s_p) / (exp(s_p) + sum_n exp(s_n))) for every positive p.
        per_pair = (torch.logaddexp(logits, log_normaliser[:, None]) - logits).masked_fill(~positives, 0)
        return per_pair.sum(dim=1), positives.sum(), log_normaliser, per_pair.detach().sum(dim=0)
    per_pair = (log_normaliser[:, None] - logits).masked_fill(~positives, 0)  # -log softmax of each positive
    num_positives = positives.sum(dim=1)
    if variant == "infonce":
        return per_pair.sum(dim=1), num_positives.sum(), log_normaliser, per_pair.detach().sum(dim=0)
    # SupCon: the mean over the anchor's positives; an anchor without positives adds no term.
    with _without_autocast(logits.device):  # a matrix-vector product, which autocast would round to 16 bits
        positive_share = 1 / num_positives.clamp_min(1).to(per_pair.dtype)
        column_loss = positive_share @ per_pair.detach()  # each column's terms, weighted by 1 / |P(a)| of its anchor
    return per_pair.sum(dim=1) / num_positives.clamp_min(1), (num_positives > 0).sum(), log_normaliser, column_loss


def _logit_gradient(
    logits: torch.Tensor,
    positives: torch.Tensor,
    keep: torch.Tensor | None,
    variant: str,
    log_normaliser: torch.Tensor | None,
) -> torch.Tensor:
    """The gradient of the sum of [`_row_losses`] with respect to `logits`, in closed form from the rows' saved
    log-normalisers (the chunked objective's backward pass; the dense path gets the same from autograd).

    Args: as [`_row_losses`], and `log_normaliser` (`torch.Tensor` of shape `(rows,)`) as it returned.

    Returns:
        `torch.Tensor` of shape `(rows, candidates)`, zero on excluded candidates.
    """
    if keep is not None:
        positives = positives & keep
    if variant == "sigmoid":
        gradient = torch.where(positives, -torch.sigmoid(-logits), torch.sigmoid(logits))  # -z sigmoid(-z s)
    elif variant == "mp_nce":
        # Terms softplus(lse_N - s_p): positive p is pulled by sigmoid(lse_N - s_p), negative n pushed by its softmax
        # among the negatives times the row's total pull, exp(s_n - lse_N) * sum_p sigmoid(lse_N - s_p).
        normaliser = log_normaliser[:, None]
        pull = torch.sigmoid(normaliser - logits).masked_fill_(~positives, 0)
        not_negative = positives if keep is None else positives | ~keep
        push = torch.exp(logits - normaliser).masked_fill_(not_negative, 0)
        return push.mul_(pull.sum(dim=1, keepdim=True)).sub_(pull)
    else:
        # Each positive's -log softmax: the row's softmax times its number of terms, minus the targets; SupCon
        # divides both by the anchor's number of positives.
        num_positives = positives.sum(dim=1, keepdim=True)
        gradient = torch.exp(logits - log_normaliser[:, None])
        if variant == "infonce":
            gradient.mul_(num_positives).sub_(positives.to(logits.dtype))
        else:
            gradient.mul_(num_positives > 0).sub_(positives.to(logits.dtype) / num_positives.clamp_min(1))
    if keep is not None:
        gradient.masked_fill_(~keep, 0)
    return gradient


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
    - `"supcon"` (SupCon's L_out): `-1/|P(a)| sum_p log(exp(s_ap) / sum_c exp(s_ac))`, averaged over anchors;
    - `"sigmoid"` (SigLIP's): every candidate is one binary term, `-log sigmoid(s_ap)` for a positive and
      `-log sigmoid(-s_an)` for a negative, summed over the row and averaged over anchors.

    With one positive per anchor the first three are the same loss.

    Args:
        logits (`torch.Tensor` of shape `(num_anchors, num_candidates)`):
            Scaled similarities of this rank's anchors against all candidates.
        positive_mask (`torch.BoolTensor` of shape `(num_anchors, num_candidates)`):
            True where the candidate is a positive of the anchor.
        candidate_mask (`torch.BoolTensor` of shape `(num_anchors, num_candidates)`):
            False for the anchor itself and anything the anchor must ignore.
        variant (`str`): one of `"mp_nce"`, `"supcon"`, `"infonce"`, `"sigmoid"`.

    Returns:
        `torch.Tensor` of shape `()`: this rank's share of the global mean (see [`global_mean`]).
    """
    _check_variant(variant)
    if logits.ndim != 2 or positive_mask.shape != logits.shape or candidate_mask.shape != logits.shape:
        raise ValueError(
            "logits, positive_mask and candidate_mask must share one [anchors, candidates] shape; got "
            f"{tuple(logits.shape)}, {tuple(positive_mask.shape)}, {tuple(candidate_mask.shape)}"
        )
    row_loss, count, _, _ = _row_losses(logits, positive_mask, candidate_mask, variant)
    return global_mean(row_loss.sum(), count)


def _per_domain_pair(values: torch.Tensor, domain_pair: int | torch.Tensor) -> torch.Tensor:
    """`values[domain_pair]` for per-domain-pair values of shape `(3,)`; the one value for shape `(1,)` or `()`."""
    values = values.reshape(-1)
    return values[domain_pair] if values.numel() > 1 else values[0]


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
        offset (`torch.Tensor` of shape `(3,)`, `(1,)` or `()`, *optional*): similarity offset per domain pair, or
            one shared (SigLIP's bias is `-scale * offset`).
    """
    shifted = cosine if offset is None else cosine - _per_domain_pair(offset, domain_pair)
    return _per_domain_pair(scale, domain_pair) * shifted


# Domain of an embedding and index of an unordered domain pair (= the sum of the two domains) in the per-pair
# scales and offsets.
IMAGE_DOMAIN, TEXT_DOMAIN = 0, 1
IMAGE_IMAGE, IMAGE_TEXT, TEXT_TEXT = 0, 1, 2
DOMAIN_PAIRS = ("image-image", "image-text", "text-text")

# What `chunk_size=None` does with a side of the objective (image anchors, text anchors), by its `anchors x
# candidates` logits. On a CPU (`benchmarks/loss_scaling.py`, one thread): a side of up to 2^22 logits (16 MiB in
# float32) stays dense, where the dense matrices were as fast or faster (the allocator reuses them; above 32 MiB each
# is a fresh mmap whose pages fault in every step); a larger side goes in blocks of 2^20 logits (4 MiB,
# cache-sized: the fastest measured, up to 2x faster than dense), but of at least 64 rows, because every block reads
# the whole candidate matrix again (16 rows against 65536 candidates were slower than 64). On an accelerator both
# limits are 2^24 (64 MiB, fewer kernel launches): a choice, not measured here.
AUTO_DENSE_LOGITS_CPU = 1 << 22
AUTO_BLOCK_LOGITS_CPU = 1 << 20
AUTO_LOGITS_ACCELERATOR = 1 << 24
MIN_ROWS_PER_BLOCK = 64


@dataclasses.dataclass(frozen=True)
class _MaskKeys:
    """What the masks of a tile are built from, one entry per embedding (anchor rows or candidate columns).

    Attributes:
        groups (`torch.LongTensor` of shape `(m,)`): an anchor's positives are the candidates of its group.
        ids (`torch.LongTensor` of shape `(m,)` or None): position among all (gathered) embeddings, to exclude the
            anchor itself; None where rows and columns are different domains.
        text_keys (`torch.LongTensor` of shape `(m,)` or None): the item's text, renumbered `0..` (`-1` on image
            columns, which are never duplicates); a text column with the anchor's key from another group is
            excluded. None: no duplicate masking.
    """

    groups: torch.Tensor
    ids: torch.Tensor | None = None
    text_keys: torch.Tensor | None = None


def _tile(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    column_scale: torch.Tensor,
    column_offset: torch.Tensor | None,
    rows: _MaskKeys,
    columns: _MaskKeys,
    block: slice,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The anchors in `block` against every candidate: one tile of the objective, the only place its logits and
    masks are built (the dense path is one tile of all rows).

    Args:
        anchors (`torch.Tensor` of shape `(rows, dim)`), candidates (`torch.Tensor` of shape `(columns, dim)`).
        column_scale (`torch.Tensor` of shape `(columns,)`), column_offset (`torch.Tensor` of shape `(columns,)` or
            None): each column's domain pair's scale and offset (the anchors are of one domain).
        rows, columns ([`_MaskKeys`]): of all anchors and all candidates.
        block (`slice`): the anchor rows of this tile, `K` of them.

    Returns:
        `(cos - offset, logits, positives, keep)`, each of shape `(K, columns)`; `keep` is None when nothing is
        excluded.
    """
    shifted = anchors[block] @ candidates.T
    if column_offset is not None:
        shifted = shifted - column_offset
    logits = shifted * column_scale
    positives = rows.groups[block, None] == columns.groups
    excluded = None
    if rows.ids is not None:
        excluded = rows.ids[block, None] == columns.ids
    if rows.text_keys is not None:
        duplicate = (rows.text_keys[block, None] == columns.text_keys).logical_and_(~positives)
        excluded = duplicate if excluded is None else excluded.logical_or_(duplicate)
    return shifted, logits, positives, None if excluded is None else excluded.logical_not_()


def _rows_per_block(num_rows: int, num_columns: int, chunk_size: int | None, device: torch.device) -> int | None:
    """The anchor rows of one block, or None for the dense path (see [`contrastive_objective`]'s `chunk_size`)."""
    if chunk_size is not None:
        return None if chunk_size == 0 else chunk_size
    if device.type == "cpu":
        dense_logits, block_logits = AUTO_DENSE_LOGITS_CPU, AUTO_BLOCK_LOGITS_CPU
    else:
        dense_logits = block_logits = AUTO_LOGITS_ACCELERATOR
    if num_rows * num_columns <= dense_logits:
        return None
    return max(MIN_ROWS_PER_BLOCK, block_logits // max(1, num_columns))


def _without_autocast(device: torch.device):
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class _ChunkedRows(torch.autograd.Function):
    """The sum of the loss terms of all anchor rows against all candidates, in blocks of at most `K` rows.

    Forward: each block's tile is built ([`_tile`]), its rows' losses summed ([`_row_losses`]) and the tile freed;
    only one statistic per row is kept, its log-normaliser (the log-sum-exp over its candidates for SupCon and
    InfoNCE, over its negatives for MP-NCE; none for the sigmoid loss). Each column's share of the loss is summed
    over the blocks too and returned beside the total and the number of terms, without gradient. Backward: each
    tile is built again and its logits' gradient follows in closed form from the saved statistics
    ([`_logit_gradient`]); it is turned into the tile's share of the gradients of the anchors, the candidates and
    every column's scale and offset. Rows are independent given their statistic, so value and gradients are those of
    the dense tile, and memory is `O(K x candidates + (anchors + candidates) x dim)`: no `anchors x candidates`
    tensor is ever built.

    Computed in at least float32 with autocast off, so that the backward pass rebuilds exactly the forward's tiles.
    """

    @staticmethod
    def forward(ctx, anchors, candidates, column_scale, column_offset, rows, columns, variant, rows_per_block):
        ctx.dtypes = (anchors.dtype, candidates.dtype, column_scale.dtype)
        dtype = torch.promote_types(torch.promote_types(anchors.dtype, candidates.dtype), torch.float32)
        anchors, candidates, column_scale = anchors.to(dtype), candidates.to(dtype), column_scale.to(dtype)
        column_offset = None if column_offset is None else column_offset.to(dtype)
        total = anchors.new_zeros(())
        count = torch.zeros((), dtype=torch.long, device=anchors.device)
        column_loss = anchors.new_zeros(candidates.shape[0])
        # Written in place: nothing made in the loop outlives its block, so each block reuses the last one's memory
        # (a small tensor kept per block would pin the allocator's heap above every block and grow the process).
        normalisers = None if variant == "sigmoid" else anchors.new_empty(anchors.shape[0])
        with _without_autocast(anchors.device):
            for start in range(0, anchors.shape[0], rows_per_block):
                block = slice(start, start + rows_per_block)
                _, logits, positives, keep = _tile(
                    anchors, candidates, column_scale, column_offset, rows, columns, block
                )
                row_loss, terms, normaliser, block_column_loss = _row_losses(logits, positives, keep, variant)
                total += row_loss.sum()
                count += terms
                column_loss += block_column_loss
                if normalisers is not None:
                    normalisers[block] = normaliser
        ctx.save_for_backward(anchors, candidates, column_scale, column_offset, normalisers)
        ctx.rows, ctx.columns, ctx.variant, ctx.rows_per_block = rows, columns, variant, rows_per_block
        ctx.mark_non_differentiable(count, column_loss)
        return total, count, column_loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total, _grad_count, _grad_column_loss):
        anchors, candidates, column_scale, column_offset, normalisers = ctx.saved_tensors
        needs_anchors, needs_candidates, needs_scale, needs_offset = ctx.needs_input_grad[:4]
        grad_anchors = torch.zeros_like(anchors)
        grad_candidates = torch.zeros_like(candidates)
        grad_scale = column_scale.new_zeros(column_scale.shape)
        grad_offset = column_offset.new_zeros(column_offset.shape) if needs_offset else None
        with _without_autocast(anchors.device):
            for start in range(0, anchors.shape[0], ctx.rows_per_block):
                block = slice(start, start + ctx.rows_per_block)
                shifted, logits, positives, keep = _tile(
                    anchors, candidates, column_scale, column_offset, ctx.rows, ctx.columns, block
                )
                normaliser = None if normalisers is None else normalisers[block]
                gradient = _logit_gradient(logits, positives, keep, ctx.variant, normaliser)
                del logits, positives, keep
                gradient.mul_(grad_total.to(gradient.dtype))  # d loss / d logits
                if needs_scale:
                    grad_scale += shifted.mul_(gradient).sum(dim=0)
                gradient.mul_(column_scale)  # d loss / d cos
                if grad_offset is not None:
                    grad_offset -= gradient.sum(dim=0)
                if needs_anchors:
                    grad_anchors[block] = gradient @ candidates
                if needs_candidates:
                    grad_candidates.addmm_(gradient.T, anchors[block])
        anchors_dtype, candidates_dtype, scale_dtype = ctx.dtypes
        return (
            grad_anchors.to(anchors_dtype) if needs_anchors else None,
            grad_candidates.to(candidates_dtype) if needs_candidates else None,
            grad_scale.to(scale_dtype) if needs_scale else None,
            None if grad_offset is None else grad_offset.to(scale_dtype),
            None,
            None,
            None,
            None,
        )


def contrastive_objective(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    text_keys: torch.Tensor | None = None,
    intra_domain_pairs: bool | str = False,
    variant: str = "supcon",
    chunk_size: int | None = None,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The one contrastive objective of this package, of which CLIP, UniCL, UniCLIP and SigLIP are points.

    Each of the `n` items of this rank has `V` image views and one text: `(V + 1) n` embeddings in one space. An
    anchor is any of them; its candidates are the embeddings of the other domain (CLIP, UniCL) or of both domains
    (`intra_domain_pairs`, UniCLIP's universal space), never itself. Its positives are the candidates of the same item
    or, with `labels`, of any item with the same label (UniCL's target matrix; `-1` = a label of its own). With
    `text_keys`, a text candidate equal to the anchor's own text (identical captions) is neither a positive nor a
    negative. The similarity is `scale[D] * (cos - offset[D])` for the domain pair `D` (one shared scale, and one
    shared offset or none, without domain similarity). The loss terms are those of [`multi_positive_loss`]
    (`variant`), averaged over the global batch:

    - CLIP: `V = 1`, no labels, cross-domain, any softmax variant (one positive per anchor);
    - UniCL: `V = 1`, labels, cross-domain, `"supcon"` (its target-normalised cross-entropy);
    - UniCLIP: `V = 2`, no labels, `intra_domain_pairs`, per-pair scales and offsets, `"mp_nce"`;
    - SigLIP: `V = 1`, no labels, cross-domain, one scale `t` and one offset `o`, `"sigmoid"`.

    The sigmoid loss sums one binary term `-log sigmoid(z * logit)` per admitted anchor-candidate pair (`z = +1` for
    a positive, `-1` for a negative) and divides by the number of anchors. Image anchors and text anchors both
    contribute, so every cross-domain pair is counted once from each end over twice as many anchors (a duplicate
    text is excluded at the image end only, as in the softmax variants). At the CLIP point this is exactly SigLIP's
    `-1/|B| sum_i sum_j log sigmoid(z_ij (t x_i . y_j + b))` with `b = -t * o` (SigLIP's initialisation t = 10,
    b = -10 is `o = 1`).

    Exact under data parallelism: all ranks' embeddings are gathered with gradient and each rank scores its own
    anchors against all candidates (memory `O(n_local x N_global)`, or with `chunk_size` `O(K x N_global)`).

    Args:
        image_embeds (`torch.Tensor` of shape `(n_local, num_views, dim)`): L2-normalised image-view embeddings.
        text_embeds (`torch.Tensor` of shape `(n_local, dim)`): L2-normalised text embeddings; text `i` belongs to
            the views of image `i`.
        scale (`torch.Tensor` of shape `(3,)`, `(1,)` or `()`): multiplicative similarity scale per domain pair
            (image-image, image-text, text-text), or one shared.
        offset (`torch.Tensor` of shape `(3,)`, `(1,)` or `()`, *optional*): similarity offset per domain pair, or
            one shared.
        labels (`torch.LongTensor` of shape `(n_local,)`, *optional*): class ids, `-1` for an item that is only
            its own positive; None: every item is only its own positive.
        text_keys (`torch.LongTensor` of shape `(n_local,)`, *optional*): equal for identical texts
            ([`text_identity_keys`]); None: no duplicate masking.
        intra_domain_pairs (`bool` or `str`): whether image-image and text-text pairs are candidates too: `True`
            both, `False` neither (cross-domain only), `"image"` image-image pairs only, `"text"` text-text pairs only
            (`INTRA_DOMAIN_PAIRS`; the last two separate what each intra-domain pair brings).
        variant (`str`): `"supcon"`, `"mp_nce"`, `"infonce"` or `"sigmoid"` ([`multi_positive_loss`]).
        chunk_size (`int`, *optional*): at most this many anchor rows at a time, in bounded memory with the same
            value and gradients ([`_ChunkedRows`]); `0`: the dense path (each side's `anchors x candidates` logits
            and masks at once, autograd through them); None (default): automatic, dense while a side has at most
            2^22 logits on a CPU and in blocks of 2^20 logits (at least 64 rows) above; 2^24 and 2^24 on an
            accelerator (`AUTO_DENSE_LOGITS_CPU`, `AUTO_BLOCK_LOGITS_CPU`, `MIN_ROWS_PER_BLOCK`,
            `AUTO_LOGITS_ACCELERATOR`).
        return_terms (`bool`): also return the loss split by domain pair.

    Returns:
        `torch.Tensor` of shape `()`: this rank's share of the global mean loss. With `return_terms`, `(loss,
        terms)`: `terms` of shape `(3,)` (image-image, image-text, text-text: `DOMAIN_PAIRS`), detached, sums to
        the loss. Each anchor-candidate term counts for the domain pair of its anchor and candidate (a softmax
        variant's term for its positive's pair, SupCon's with weight `1 / |P(a)|`, the sigmoid loss's binary terms
        of positives and negatives alike), summed from the per-pair terms the loss builds anyway (a column sum per
        tile, dense or in blocks) and divided by the loss's global count ([`global_mean`]), so that the ranks'
        average is that of one process, as for the loss. A pair without candidates (image-image and text-text
        without `intra_domain_pairs`) is 0.
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
    _check_variant(variant)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0):
        raise ValueError(
            f"chunk_size must be None (automatic), 0 (dense) or a positive number of anchor rows; got {chunk_size!r}"
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
    num_all_views = n_global * num_views
    groups = unique_pair_labels(labels.to(device), offset_rows)  # [n_local]
    all_groups = _gather_no_grad(groups)  # [N_global]
    views, candidate_views = image_embeds.reshape(-1, dim), all_views.reshape(-1, dim)  # [n V, D], [N V, D]

    # Mask keys of every embedding, in one numbering: the N V gathered views, then the N texts.
    local_views = torch.arange(offset_rows * num_views, (offset_rows + n_local) * num_views, device=device)
    local_texts = num_all_views + torch.arange(offset_rows, offset_rows + n_local, device=device)
    key_ids = all_key_ids = None
    if text_keys is not None:  # renumbered 0.. so that -1 can mark the image columns
        all_key_ids = torch.unique(_gather_no_grad(text_keys.to(device)), return_inverse=True)[1]  # [N_global]
        key_ids = all_key_ids[offset_rows : offset_rows + n_local]
    view_rows = _MaskKeys(groups.repeat_interleave(num_views), local_views, _repeat(key_ids, num_views))
    text_rows = _MaskKeys(groups, local_texts, key_ids)
    view_columns = (
        candidate_views,
        _MaskKeys(
            all_groups.repeat_interleave(num_views),
            torch.arange(num_all_views, device=device),
            None if all_key_ids is None else all_key_ids.new_full((num_all_views,), -1),
        ),
        IMAGE_DOMAIN,
    )
    text_columns = (
        all_texts,
        _MaskKeys(all_groups, num_all_views + torch.arange(n_global, device=device), all_key_ids),
        TEXT_DOMAIN,
    )

    # Each side: (anchors, their mask keys, their domain, (candidates, their mask keys, their domains)).
    # Image anchors meet the texts, and the views where image-image pairs count (then the anchor's own view is
    # excluded by its id); text anchors meet the views, and the texts where text-text pairs count (then the anchor
    # itself and its duplicates are excluded; otherwise a text anchor needs only the groups).
    image_image, text_text = intra_domain_flags(intra_domain_pairs)
    view_anchor_rows = view_rows if image_image else dataclasses.replace(view_rows, ids=None)
    text_anchor_rows = text_rows if text_text else _MaskKeys(groups)
    sides = [
        (views, view_anchor_rows, IMAGE_DOMAIN, _join_columns([view_columns] * image_image + [text_columns])),
        (text_embeds, text_anchor_rows, TEXT_DOMAIN, _join_columns([view_columns] + [text_columns] * text_text)),
    ]

    total, count, terms = 0, 0, 0
    for anchors, rows, anchor_domain, (candidates, columns, column_domains) in sides:
        column_pairs = anchor_domain + column_domains  # the unordered domain pair's index is the sum
        column_scale = _per_column(scale, column_pairs)
        column_offset = None if offset is None else _per_column(offset, column_pairs)
        rows_per_block = _rows_per_block(anchors.shape[0], candidates.shape[0], chunk_size, device)
        if rows_per_block is None:  # dense: the whole side is one tile, differentiated by autograd
            _, logits, positives, keep = _tile(
                anchors, candidates, column_scale, column_offset, rows, columns, slice(None)
            )
            row_loss, side_count, _, column_loss = _row_losses(logits, positives, keep, variant)
            side_total = row_loss.sum()
        else:
            side_total, side_count, column_loss = _ChunkedRows.apply(
                anchors, candidates, column_scale, column_offset, rows, columns, variant, rows_per_block
            )
        total, count = total + side_total, count + side_count
        if return_terms:  # the anchors are of one domain: a column's domain pair is its candidate's
            terms = terms + column_loss.new_zeros(len(DOMAIN_PAIRS)).index_add_(0, column_pairs, column_loss)
    loss = global_mean(total, count)
    return (loss, global_mean(terms, count)) if return_terms else loss


def _join_columns(
    blocks: list[tuple[torch.Tensor, _MaskKeys, int]],
) -> tuple[torch.Tensor, _MaskKeys, torch.Tensor]:
    """Candidate blocks `(embeddings [m, D], mask keys, domain)` as one: `(candidates [C, D], their mask keys, the
    domain of each column [C])`."""
    if len(blocks) == 1:
        candidates, columns, _ = blocks[0]
    else:
        candidates = torch.cat([embeds for embeds, _, _ in blocks])
        parts = [[getattr(keys, field.name) for _, keys, _ in blocks] for field in dataclasses.fields(_MaskKeys)]
        columns = _MaskKeys(*(None if part[0] is None else torch.cat(part) for part in parts))
    domains = torch.cat([torch.full((embeds.shape[0],), domain, device=embeds.device) for embeds, _, domain in blocks])
    return candidates, columns, domains


def _per_column(values: torch.Tensor, column_pairs: torch.Tensor) -> torch.Tensor:
    """Each column's scale or offset, of shape `(columns,)` (one shared value is expanded, not copied)."""
    return torch.broadcast_to(_per_domain_pair(values, column_pairs), column_pairs.shape)


def _repeat(values: torch.Tensor | None, times: int) -> torch.Tensor | None:
    """`[n]` -> `[n * times]`, each entry repeated (one per image view of the item)."""
    return None if values is None else values.repeat_interleave(times)


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
