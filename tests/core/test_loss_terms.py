"""The loss split by domain pair (`contrastive_objective(..., return_terms=True)`, `ContrastiveOutput.loss_terms`):
each anchor-candidate term counted for the domain pair of its anchor and candidate, against a loop reference for
every variant, densely and in blocks of rows, by hand on a tiny case and on the models (across two processes:
test_objective.test_two_processes_equal_one_process)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import batch, tiny_model

from hf_unified.configuration_contrastive import OBJECTIVE_PRESETS
from hf_unified.losses import (
    DOMAIN_PAIRS,
    IMAGE_IMAGE,
    IMAGE_TEXT,
    INTRA_DOMAIN_PAIRS,
    MULTI_POSITIVE_VARIANTS,
    TEXT_TEXT,
    contrastive_objective,
    intra_domain_flags,
)

LABELS = [2, -1, 2, 0, -1, 0]
KEYS = [7, 7, 3, 5, 5, 9]  # items 0/1 and 3/4 have identical texts
SCALE = torch.tensor([3.0, 5.0, 2.0], dtype=torch.float64)
OFFSET = torch.tensor([0.4, -0.1, 0.3], dtype=torch.float64)


def embeddings(n: int, views: int, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, views, dim, generator=generator, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=-1)
    return image, text


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def naive_terms(views, texts, labels, keys, intra, variant) -> list[float]:
    """Each domain pair's share of the loss, one anchor and one candidate at a time (float64, Python loops): a term
    counts for the pair of its anchor and its candidate (a softmax variant's term for its positive, SupCon's with
    weight 1 / |P(a)|, the sigmoid loss's for every candidate), and each pair's sum is divided by the loss's count
    (positive pairs for MP-NCE and InfoNCE, anchors with a positive for SupCon, anchors for the sigmoid loss)."""
    n, num_views, _ = views.shape
    intra_flags = intra_domain_flags(intra)  # image-image, text-text
    rows = [(i, 0, views[i, v]) for i in range(n) for v in range(num_views)] + [(i, 1, texts[i]) for i in range(n)]
    group = [labels[i] if labels is not None and labels[i] >= 0 else -1 - i for i in range(n)]
    sums, count = [0.0, 0.0, 0.0], 0
    for a, (item, domain, vector) in enumerate(rows):
        candidates = []  # (domain pair, positive, logit)
        for c, (other, other_domain, other_vector) in enumerate(rows):
            if c == a or (other_domain == domain and not intra_flags[domain]):
                continue
            if keys is not None and other_domain == 1 and keys[other] == keys[item] and group[other] != group[item]:
                continue
            pair = domain + other_domain
            logit = float(SCALE[pair]) * (float(vector @ other_vector) - float(OFFSET[pair]))
            candidates.append((pair, group[other] == group[item], logit))
        positives = [(pair, logit) for pair, positive, logit in candidates if positive]
        negatives = [logit for _, positive, logit in candidates if not positive]
        if variant == "sigmoid":
            for pair, positive, logit in candidates:
                sums[pair] += _softplus(-logit if positive else logit)  # -log sigmoid(+-logit)
            count += 1
            continue
        every = math.log(sum(math.exp(logit) for *_, logit in candidates))
        weight = 1 / len(positives) if variant == "supcon" and positives else 1.0
        for pair, logit in positives:
            if variant == "mp_nce":
                term = -math.log(math.exp(logit) / (math.exp(logit) + sum(math.exp(x) for x in negatives)))
            else:
                term = every - logit
            sums[pair] += weight * term
        count += (1 if positives else 0) if variant == "supcon" else len(positives)
    return [value / count for value in sums]


@pytest.mark.parametrize(
    "views, labels, keys, intra, variant",
    list(itertools.product((1, 2), (None, LABELS), (None, KEYS), INTRA_DOMAIN_PAIRS, MULTI_POSITIVE_VARIANTS)),
)
def test_terms_match_the_loop_reference_and_sum_to_the_loss(views, labels, keys, intra, variant):
    image, text = embeddings(6, views, seed=views + 2 * INTRA_DOMAIN_PAIRS.index(intra))
    labels_t = None if labels is None else torch.tensor(labels)
    keys_t = None if keys is None else torch.tensor(keys)
    arguments = (image, text, SCALE, OFFSET, labels_t, keys_t, intra, variant)
    alone = contrastive_objective(*arguments, chunk_size=0)
    loss, terms = contrastive_objective(*arguments, chunk_size=0, return_terms=True)
    assert torch.equal(loss, alone)  # asking for the terms does not change the loss
    assert terms.shape == (len(DOMAIN_PAIRS),) and not terms.requires_grad
    np.testing.assert_allclose(terms.numpy(), naive_terms(image, text, labels, keys, intra, variant), rtol=1e-10)
    torch.testing.assert_close(terms.sum(), loss, rtol=1e-12, atol=1e-14)
    image_image, text_text = intra_domain_flags(intra)
    if not image_image:  # CLIP, UniCL, SigLIP, or UniCLIP without image-image pairs: no image-image term
        assert terms[IMAGE_IMAGE] == 0
    if not text_text:
        assert terms[TEXT_TEXT] == 0
    # In blocks of rows (the chunked forward), the same loss and the same terms.
    chunked_loss, chunked_terms = contrastive_objective(*arguments, chunk_size=2, return_terms=True)
    torch.testing.assert_close(chunked_loss, loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(chunked_terms, terms, rtol=1e-12, atol=1e-15)
    assert not chunked_terms.requires_grad


def test_gradients_are_those_of_the_loss_alone():
    image, text = embeddings(6, 2, seed=3)
    for chunk_size in (0, 2):
        gradients = []
        for return_terms in (False, True):
            leaves = [image.clone().requires_grad_(), text.clone().requires_grad_(), SCALE.clone().requires_grad_()]
            out = contrastive_objective(
                *leaves,
                OFFSET,
                torch.tensor(LABELS),
                intra_domain_pairs=True,
                variant="mp_nce",
                chunk_size=chunk_size,
                return_terms=return_terms,
            )
            (out[0] if return_terms else out).backward()
            gradients.append([leaf.grad for leaf in leaves])
        for without_terms, with_terms in zip(*gradients):
            assert torch.equal(without_terms, with_terms)


def test_mp_nce_terms_of_two_items_by_hand():
    """2 items of 2 views and a text each, one space, one scale: every embedding's positives are the other two of
    its item, its negatives the 3 of the other item; MP-NCE's term of anchor a and positive p is
    log(1 + sum_n exp(s_an) / exp(s_ap)), 12 positive pairs in all, none of them text-text."""
    image, text = embeddings(2, 2, seed=9)
    scale = torch.tensor([4.0], dtype=torch.float64)
    loss, terms = contrastive_objective(
        image, text, scale, intra_domain_pairs=True, variant="mp_nce", chunk_size=0, return_terms=True
    )
    view = {(i, k): image[i, k] for i in range(2) for k in range(2)}

    def s(x, y):
        return 4.0 * float(x @ y)

    def term(anchor, positive, negatives):
        return math.log(1 + sum(math.exp(s(anchor, n)) for n in negatives) / math.exp(s(anchor, positive)))

    image_image = image_text = 0.0
    for i, k in itertools.product(range(2), range(2)):
        j = 1 - i  # the other item
        negatives = [view[j, 0], view[j, 1], text[j]]
        image_image += term(view[i, k], view[i, 1 - k], negatives)  # the other view of the item
        image_text += term(view[i, k], text[i], negatives)  # the item's text
    for i in range(2):
        j = 1 - i
        negatives = [view[j, 0], view[j, 1], text[j]]
        image_text += term(text[i], view[i, 0], negatives) + term(text[i], view[i, 1], negatives)
    assert terms.tolist() == pytest.approx([image_image / 12, image_text / 12, 0.0], rel=1e-12)
    assert loss.item() == pytest.approx((image_image + image_text) / 12, rel=1e-12)

    # The sigmoid loss counts negatives too: its text-text share is the two texts' binary term, from either end,
    # over the 6 anchors.
    _, sigmoid_terms = contrastive_objective(
        image, text, scale, intra_domain_pairs=True, variant="sigmoid", chunk_size=0, return_terms=True
    )
    assert sigmoid_terms[TEXT_TEXT].item() == pytest.approx(2 * _softplus(s(text[0], text[1])) / 6, rel=1e-12)


@pytest.mark.parametrize("objective", ["clip", "unicl", "uniclip", "uniclip+unicl", "siglip"])
def test_the_model_output_carries_the_terms(objective):
    preset = OBJECTIVE_PRESETS[objective]
    model = tiny_model("uniclip" if preset["augmentation_aware"] else "unicl", seed=1, **preset).train()
    views = preset["num_views"] if preset["augmentation_aware"] else 0
    inputs = batch(6, views=views, seed=3, labels=[0, 1, 0, 2, -1, 1] if preset["use_labels"] else None)
    outputs = model(**inputs, return_loss=True)
    assert outputs.loss_terms.shape == (3,) and not outputs.loss_terms.requires_grad
    torch.testing.assert_close(outputs.loss_terms.sum(), outputs.loss.detach())
    keys = model._text_keys(inputs["input_ids"], inputs["attention_mask"])
    loss, terms = model.contrastive_loss(
        outputs.image_view_embeds, outputs.text_embeds, inputs.get("labels"), keys, return_terms=True
    )
    torch.testing.assert_close(loss, outputs.loss)
    torch.testing.assert_close(terms, outputs.loss_terms)
    if not preset["intra_domain_pairs"]:
        torch.testing.assert_close(outputs.loss_terms[IMAGE_TEXT], outputs.loss.detach())
    # CLIPOutput's tuple layout is kept: the loss, then the logits.
    as_tuple = outputs.to_tuple()
    assert as_tuple[0] is outputs.loss and as_tuple[1] is outputs.logits_per_image
    # No loss, no terms.
    assert model(**{k: v for k, v in inputs.items() if k != "labels"}).loss_terms is None


def test_intra_domain_pairs_one_at_a_time_and_a_clear_error_for_anything_else():
    """`"image"` keeps the image-image pairs and drops the text-text ones, `"text"` the other way round: with labels
    (so that both pairs have positives) each one's own term is the one that both have, and the one it drops is 0."""
    image, text = embeddings(6, 2, seed=5)
    labels = torch.tensor(LABELS)
    _, both = contrastive_objective(image, text, SCALE, OFFSET, labels, None, True, "supcon", return_terms=True)
    _, images = contrastive_objective(image, text, SCALE, OFFSET, labels, None, "image", "supcon", return_terms=True)
    _, texts = contrastive_objective(image, text, SCALE, OFFSET, labels, None, "text", "supcon", return_terms=True)
    assert images[IMAGE_IMAGE] > 0 and images[TEXT_TEXT] == 0
    assert texts[TEXT_TEXT] > 0 and texts[IMAGE_IMAGE] == 0
    assert both[IMAGE_IMAGE] > 0 and both[TEXT_TEXT] > 0
    with pytest.raises(ValueError, match=r"intra_domain_pairs must be one of .* got 'both'"):
        contrastive_objective(image, text, SCALE, OFFSET, intra_domain_pairs="both")
