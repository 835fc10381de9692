"""The one objective: every combination of labels x views x one space x similarity x variant (SigLIP's sigmoid loss
included) against a loop reference, across two processes (densely and in blocks of rows), and trained end to end on
every model (UniCL labels on MS-CLIP, UniCLIP views on MS-CLIP, UniCLIP with UniCL labels, SigLIP, ...)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import MSCLIP_TINY, batch, tiny_model

from hf_unified.configuration_contrastive import OBJECTIVE_PRESETS
from hf_unified.losses import (
    MULTI_POSITIVE_VARIANTS,
    clip_loss,
    contrastive_objective,
    text_identity_keys,
    unicl_loss,
)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def naive_objective(views, texts, scale, offset, labels, keys, intra, variant):
    """Straight from the definition, one anchor and one candidate at a time (float64, Python loops).

    Embeddings are `(item, domain, vector)` with domain 0 = image view, 1 = text; a pair's group is its label, or
    its own index when the label is -1; a text candidate whose key equals the anchor item's text key, from another
    group, is ignored. `"sigmoid"`: `-log sigmoid(+-s)` for every candidate, summed, over the number of anchors.
    """
    n, num_views, _ = views.shape
    rows = [(i, 0, views[i, v]) for i in range(n) for v in range(num_views)] + [(i, 1, texts[i]) for i in range(n)]
    group = [labels[i] if labels is not None and labels[i] >= 0 else -1 - i for i in range(n)]
    scale = [float(s) for s in scale.reshape(-1)]
    offset = None if offset is None else [float(o) for o in offset.reshape(-1)]
    pair_terms, anchor_terms = [], []
    for a, (item, domain, vector) in enumerate(rows):
        candidates = []
        for c, (other, other_domain, other_vector) in enumerate(rows):
            if c == a or (not intra and other_domain == domain):
                continue
            if keys is not None and other_domain == 1 and keys[other] == keys[item] and group[other] != group[item]:
                continue
            pair = domain + other_domain
            s = scale[pair] if len(scale) > 1 else scale[0]
            o = 0.0 if offset is None else offset[pair] if len(offset) > 1 else offset[0]
            candidates.append((group[other] == group[item], s * (float(vector @ other_vector) - o)))
        positives = [sim for positive, sim in candidates if positive]
        negatives = [sim for positive, sim in candidates if not positive]
        if variant == "sigmoid":
            anchor_terms.append(-sum(map(_log_sigmoid, positives)) - sum(_log_sigmoid(-x) for x in negatives))
            continue
        every = sum(math.exp(sim) for _, sim in candidates)
        terms = []
        for sim in positives:
            if variant == "mp_nce":
                terms.append(-math.log(math.exp(sim) / (math.exp(sim) + sum(math.exp(x) for x in negatives))))
            else:
                terms.append(-math.log(math.exp(sim) / every))
        pair_terms += terms
        if terms:
            anchor_terms.append(sum(terms) / len(terms))
    if variant in ("supcon", "sigmoid"):
        return sum(anchor_terms) / len(anchor_terms)
    return sum(pair_terms) / len(pair_terms)


def embeddings(n, views, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, views, dim, generator=generator, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=-1)
    return image, text


LABELS = [2, -1, 2, 0, -1, 0]
KEYS = [7, 7, 3, 5, 5, 9]  # items 0/1 and 3/4 have identical texts


# The similarity: one scale; one scale and one offset (SigLIP's bias); a scale and an offset per domain pair.
SIMILARITIES = ("one", "one+offset", "per-pair")


def similarity(kind: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if kind == "per-pair":
        return torch.tensor([3.0, 5.0, 2.0], dtype=torch.float64), torch.tensor([0.4, -0.1, 0.3], dtype=torch.float64)
    return torch.tensor([4.0], dtype=torch.float64), torch.tensor(
        [0.3], dtype=torch.float64
    ) if kind == "one+offset" else None


@pytest.mark.parametrize(
    "views, labels, keys, intra, kind, variant",
    [
        (views, labels, keys, intra, kind, variant)
        for views, labels, keys, intra, kind, variant in itertools.product(
            (1, 2), (None, LABELS), (None, KEYS), (False, True), SIMILARITIES, MULTI_POSITIVE_VARIANTS
        )
        # per-pair offsets on the CLIP point are covered by the other rows, and one shared offset changes no softmax
        # (test_one_offset_changes_only_the_sigmoid_loss); keep the grid small
        if not (kind == "per-pair" and not intra and keys is None and labels is None and views == 1)
        and (kind != "one+offset" or variant == "sigmoid")
    ],
)
def test_every_combination_matches_the_loop_reference(views, labels, keys, intra, kind, variant):
    image, text = embeddings(6, views, seed=views + 2 * intra)
    scale, offset = similarity(kind)
    labels_t = None if labels is None else torch.tensor(labels)
    keys_t = None if keys is None else torch.tensor(keys)
    loss = contrastive_objective(image, text, scale, offset, labels_t, keys_t, intra, variant)
    expected = naive_objective(image, text, scale, offset, labels, keys, intra, variant)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_one_offset_changes_only_the_sigmoid_loss():
    image, text = embeddings(6, 2, seed=4)
    labels, scale = torch.tensor(LABELS), torch.tensor([4.0], dtype=torch.float64)

    def loss(offset, variant):
        return contrastive_objective(image, text, scale, offset, labels, intra_domain_pairs=True, variant=variant)

    shifted = torch.tensor([0.7], dtype=torch.float64)
    for variant in ("supcon", "mp_nce", "infonce"):  # every logit of a row moves by the same constant
        torch.testing.assert_close(loss(shifted, variant), loss(None, variant))
    assert abs(loss(shifted, "sigmoid").item() - loss(None, "sigmoid").item()) > 0.1


def test_the_named_points_are_the_methods_losses():
    image, text = embeddings(6, 1, seed=3)
    scale = torch.tensor([5.0], dtype=torch.float64)
    labels = torch.tensor(LABELS)
    # CLIP: symmetric cross-entropy; UniCL: the soft-target one (both also checked against their formulas in
    # test_losses.py); with one positive per anchor every variant is CLIP.
    logits = scale * image[:, 0] @ text.T
    targets = torch.arange(6)
    clip = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    for variant in ("supcon", "mp_nce", "infonce"):
        torch.testing.assert_close(contrastive_objective(image, text, scale, variant=variant), clip)
    torch.testing.assert_close(clip_loss(image[:, 0], text, scale), clip)
    assert unicl_loss(image[:, 0], text, labels, scale).item() == pytest.approx(
        naive_objective(image, text, scale, None, LABELS, None, False, "supcon"), rel=1e-10
    )


def test_duplicate_masking_changes_the_loss_only_when_texts_repeat():
    image, text = embeddings(6, 2, seed=5)
    scale, offset = torch.tensor([3.0, 5.0, 2.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    unique, repeated = torch.arange(6), torch.tensor(KEYS)

    def loss(keys):
        return contrastive_objective(image, text, scale, offset, text_keys=keys, intra_domain_pairs=True)

    torch.testing.assert_close(loss(unique), loss(None))
    assert abs(loss(repeated).item() - loss(None).item()) > 1e-4


def test_text_identity_keys_ignore_padding_and_tell_texts_apart():
    ids = torch.tensor([[5, 6, 9, 9], [5, 6, 9, 0], [5, 7, 9, 9], [6, 5, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0]])
    keys = text_identity_keys(ids, mask).tolist()
    assert keys[0] == keys[1] and len({keys[0], keys[2], keys[3]}) == 3


# ---------------------------------------------------------------------------------------------------------------
# Two processes against one holding the global batch


def _distributed_worker(rank, world_size, port, result_file, splits):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        out = {}
        for name, (image, text, kwargs) in _cases().items():
            start = sum(splits[:rank])
            rows = slice(start, start + splits[rank])
            local_kwargs = {k: v[rows] if k in ("labels", "text_keys") else v for k, v in kwargs.items()}
            leaves = _leaves(image[rows], text[rows], local_kwargs)
            loss, terms = contrastive_objective(leaves[0], leaves[1], **local_kwargs, return_terms=True)
            loss.backward()
            value = loss.detach().clone()
            dist.all_reduce(value)
            out[f"{name}/loss"] = np.array(value.item() / world_size)
            dist.all_reduce(terms)  # the loss's terms by domain pair, averaged over the ranks as the trainer logs them
            out[f"{name}/terms"] = (terms / world_size).numpy()
            # DDP averages gradients: the embeddings' rows are this rank's, the similarity parameters replicated.
            for index, leaf in enumerate(leaves):
                out[f"{name}/grad{index}"] = (leaf.grad / world_size).numpy()
        np.savez(result_file, **out)
        dist.barrier()  # leave together: gloo aborts a rank whose peer is already gone
    finally:
        dist.destroy_process_group()


def _leaves(image, text, kwargs):
    """Fresh leaves of the embeddings and (replacing them in `kwargs`) of the scale and the offset."""
    for name in ("scale", "offset"):
        if kwargs.get(name) is not None:
            kwargs[name] = kwargs[name].clone().requires_grad_()
    parameters = [kwargs[name] for name in ("scale", "offset") if kwargs.get(name) is not None]
    return [image.clone().requires_grad_(), text.clone().requires_grad_(), *parameters]


def _cases():
    """(image views, texts, objective arguments) of the global batch; the ranks run them with their `chunk_size`,
    one process holding the whole batch densely."""
    image, text = embeddings(7, 2, seed=11)
    scale = torch.tensor([3.0, 5.0, 2.0], dtype=torch.float64)
    offset = torch.tensor([0.4, -0.1, 0.3], dtype=torch.float64)
    labels, keys = torch.tensor([1, -1, 1, 4, -1, 4, 1]), torch.tensor([3, 3, 8, 2, 5, 5, 6])
    uniclip_unicl = dict(scale=scale, offset=offset, labels=labels, text_keys=keys, intra_domain_pairs=True)
    return {
        "uniclip+unicl": (image, text, dict(uniclip_unicl, variant="mp_nce")),
        "uniclip+unicl, blocks of 2": (image, text, dict(uniclip_unicl, variant="mp_nce", chunk_size=2)),
        "uniclip+unicl sigmoid, blocks of 1": (image, text, dict(uniclip_unicl, variant="sigmoid", chunk_size=1)),
        "unicl-views": (image, text, dict(scale=scale[:1], labels=labels, variant="supcon")),
        "unicl-views, blocks of 3": (
            image,
            text,
            dict(scale=scale[:1], labels=labels, variant="supcon", chunk_size=3),
        ),
        "clip-keys": (image[:, :1], text, dict(scale=scale[:1], text_keys=keys, variant="infonce")),
        "siglip+unicl": (
            image[:, :1],
            text,
            dict(scale=scale[:1], offset=offset[:1], labels=labels, variant="sigmoid"),
        ),
        "siglip-keys, blocks of 3": (
            image[:, :1],
            text,
            dict(scale=scale[:1], offset=offset[:1], text_keys=keys, variant="sigmoid", chunk_size=3),
        ),
    }


def test_two_processes_equal_one_process(run_gloo_workers):
    splits = [4, 3]  # uneven on purpose
    results = run_gloo_workers(_distributed_worker, 2, splits)
    for name, (image, text, kwargs) in _cases().items():
        kwargs = dict(kwargs, chunk_size=0)  # the reference: one process, dense
        leaves = _leaves(image, text, kwargs)
        loss, terms = contrastive_objective(leaves[0], leaves[1], **kwargs, return_terms=True)
        loss.backward()
        for rank_result in results:
            assert rank_result[f"{name}/loss"] == pytest.approx(loss.item(), rel=1e-12), name
            np.testing.assert_allclose(
                rank_result[f"{name}/terms"], terms.numpy(), rtol=1e-12, atol=1e-15, err_msg=name
            )
        for index, leaf in enumerate(leaves):
            parts = [r[f"{name}/grad{index}"] for r in results]
            # embeddings: each rank holds its rows; scale and offset: the ranks' (averaged) gradients add up
            got = np.concatenate(parts) if index < 2 else np.sum(parts, axis=0)
            np.testing.assert_allclose(got, leaf.grad.numpy(), rtol=1e-9, atol=1e-13, err_msg=f"{name}: grad{index}")


# ---------------------------------------------------------------------------------------------------------------
# Every model trains with every objective


COMBINATIONS = [
    ("msclip", "unicl"),  # MS-CLIP's shared stack with UniCL's labels
    ("msclip", "uniclip"),  # MS-CLIP with UniCLIP's views, augmentation-aware head, one space, MP-NCE
    ("uniclip", "uniclip+unicl"),  # UniCLIP whose positives come from labels
    ("unicl", "uniclip"),  # the UniCL model type with UniCLIP's objective
    ("uniclip", "clip"),
    ("msclip", "siglip+unicl"),  # MS-CLIP with SigLIP's sigmoid loss (one scale, one offset) and label positives
]


@pytest.mark.parametrize("model_type, objective", COMBINATIONS)
def test_every_model_trains_with_every_objective(model_type, objective):
    preset = OBJECTIVE_PRESETS[objective]
    model = tiny_model(model_type, seed=1, **preset).train()
    views = preset["num_views"] if preset["augmentation_aware"] else 0
    inputs = batch(6, views=views, seed=3, labels=[0, 1, 0, 2, -1, 1] if preset["use_labels"] else None)
    # The model's loss is the objective over its own embeddings.
    outputs = model(**inputs, return_loss=True)
    keys = (
        text_identity_keys(inputs["input_ids"], inputs["attention_mask"]) if preset["mask_duplicate_texts"] else None
    )
    expected = model.contrastive_loss(outputs.image_view_embeds, outputs.text_embeds, inputs.get("labels"), keys)
    torch.testing.assert_close(outputs.loss, expected)
    assert outputs.image_view_embeds.shape == (6, max(views, 1), model.config.projection_dim)
    # ... and it falls.
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(**inputs, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_objective_presets_are_config_points():
    from hf_unified import MSCLIPConfig, UniCLConfig

    config = MSCLIPConfig.from_objective("uniclip", **MSCLIP_TINY)
    assert (config.num_views, config.augmentation_aware, config.intra_domain_pairs) == (2, True, True)
    assert config.shared_sublayers == ["attention", "mlp"] and config.early_specialization  # tower defaults stay
    assert UniCLConfig.from_objective("clip").use_labels is False
    with pytest.raises(ValueError, match="unknown objective"):
        UniCLConfig.from_objective("triplet")


@pytest.mark.parametrize("model_type", ["unicl", "uniclip", "msclip"])
def test_siglip_is_a_config_point_of_every_model_with_one_scale_and_one_offset(model_type):
    model = tiny_model(model_type, **OBJECTIVE_PRESETS["siglip"])
    config = model.config
    assert (config.num_views, config.domain_similarity, config.contrastive_loss) == (1, False, "sigmoid")
    # SigLIP's initialisation: t = exp(logit_scale) = 10 and b = -t * logit_offset = -10.
    assert model.logit_scale.exp().tolist() == pytest.approx([10.0])
    assert (-model.logit_scale.exp() * model.logit_offset).tolist() == pytest.approx([-10.0])
    # The logits the model returns are SigLIP's t * cos + b.
    inputs = {k: v for k, v in batch(3).items() if k != "labels"}
    with torch.no_grad():
        out = model(**inputs)
    torch.testing.assert_close(out.logits_per_image, 10.0 * out.image_embeds @ out.text_embeds.T - 10.0)
    assert type(config).from_objective("siglip+unicl").use_labels is True


def test_the_loss_config_fields_are_checked():
    from hf_unified import UniCLConfig

    for bad in (-1, True):
        with pytest.raises(ValueError, match="loss_chunk_size"):
            UniCLConfig(loss_chunk_size=bad)
    with pytest.raises(ValueError, match="contrastive_loss"):
        UniCLConfig(contrastive_loss="hinge")
    with pytest.raises(ValueError, match="logit_offset_init_value"):
        UniCLConfig(similarity_offset=True, logit_offset_init_value=[1.0, 1.0])
    # Without domain similarity the one similarity is the image-text one: a per-pair value gives that entry.
    one = UniCLConfig(
        similarity_offset=True, logit_scale_init_value=[1.0, 2.0, 3.0], logit_offset_init_value=[0, 1, 0]
    )
    assert (one.logit_scale_init(), one.logit_offset_init()) == ([2.0], [1.0])
    assert UniCLConfig(contrastive_loss="sigmoid", loss_chunk_size=0).loss_chunk_size == 0


def test_calibrated_offsets_are_the_mean_cosines_of_different_items():
    model = tiny_model("uniclip")
    inputs = batch(4, views=2)
    with torch.no_grad():
        out = model(**inputs)
    views, texts = out.image_view_embeds.double(), out.text_embeds.double()
    ii = [
        float(views[i, a] @ views[j, b]) for i in range(4) for j in range(4) if i != j for a in (0, 1) for b in (0, 1)
    ]
    it = [float(views[i, a] @ texts[j]) for i in range(4) for j in range(4) if i != j for a in (0, 1)]
    tt = [float(texts[i] @ texts[j]) for i in range(4) for j in range(4) if i != j]
    means = model.calibrate_logit_offsets(out.image_view_embeds, out.text_embeds)
    expected = [sum(x) / len(x) for x in (ii, it, tt)]
    assert means == pytest.approx(expected, abs=1e-6)
    assert model.logit_offset.tolist() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="domain_similarity"):
        tiny_model("unicl").calibrate_logit_offsets(out.image_view_embeds, out.text_embeds)
