"""The contrastive losses against naive references (SigLIP's against transformers' `SiglipModel`), in one process
and across two (gloo)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from hf_unified.losses import clip_loss, contrastive_objective, multi_positive_loss, unicl_loss


def _embeds(n: int, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return image, text


def naive_unicl(image, text, labels, scale):
    """The paper's formula, one row at a time."""
    n = labels.shape[0]
    unique = labels.clone()
    for i in range(n):
        if labels[i] < 0:
            unique[i] = 10_000 + i
    logits = scale * image @ text.T
    total_i2t = total_t2i = 0.0
    for i in range(n):
        positives = [j for j in range(n) if unique[j] == unique[i]]
        log_p_i2t = logits[i].log_softmax(0)
        log_p_t2i = logits[:, i].log_softmax(0)
        total_i2t += -sum(log_p_i2t[j] for j in positives) / len(positives)
        total_t2i += -sum(log_p_t2i[j] for j in positives) / len(positives)
    return (total_i2t / n + total_t2i / n) / 2


def test_clip_loss_matches_cross_entropy():
    image, text = _embeds(6)
    scale = torch.tensor(7.0, dtype=torch.float64)
    logits = scale * image @ text.T
    targets = torch.arange(6)
    expected = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    torch.testing.assert_close(clip_loss(image, text, scale), expected)


def test_unicl_with_unique_labels_is_clip():
    image, text = _embeds(8)
    scale = torch.tensor(2.718281828, dtype=torch.float64)
    for labels in (torch.full((8,), -1), torch.arange(8), torch.tensor([5, -1, 3, -1, 0, 9, -1, 1])):
        assert abs(unicl_loss(image, text, labels, scale) - clip_loss(image, text, scale)) < 1e-6


def test_unicl_with_shared_labels_matches_naive_reference():
    image, text = _embeds(8, seed=1)
    scale = torch.tensor(5.0, dtype=torch.float64)
    labels = torch.tensor([2, 2, -1, 0, 2, 0, -1, 7])
    expected = naive_unicl(image, text, labels, scale)
    torch.testing.assert_close(unicl_loss(image, text, labels, scale), torch.as_tensor(expected))
    # Sharing labels must change the loss, or the test above could not fail.
    assert abs(unicl_loss(image, text, labels, scale) - clip_loss(image, text, scale)) > 1e-3


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(labels=torch.zeros(3, dtype=torch.long)), "labels must be"),
        (dict(labels=torch.zeros(4)), "integer"),
        (dict(text=torch.zeros(3, 8)), "pair up"),
    ],
)
def test_bad_loss_inputs_raise(bad, message):
    image, text = _embeds(4)
    args = dict(image=image, text=text, labels=torch.zeros(4, dtype=torch.long)) | bad
    with pytest.raises(ValueError, match=message):
        unicl_loss(args["image"], args["text"], args["labels"], torch.tensor(1.0))


def naive_multi_positive(logits, positives, candidates, variant):
    pair_losses, anchor_losses = [], []
    for a in range(logits.shape[0]):
        pos = [c for c in range(logits.shape[1]) if positives[a, c] and candidates[a, c]]
        neg = [c for c in range(logits.shape[1]) if candidates[a, c] and not positives[a, c]]
        every = pos + neg
        if variant == "sigmoid":
            terms = [-F.logsigmoid(logits[a, p]) for p in pos] + [-F.logsigmoid(-logits[a, n]) for n in neg]
            anchor_losses.append(sum(terms))
            continue
        per_anchor = []
        for p in pos:
            if variant == "mp_nce":
                denominator = torch.exp(logits[a, p]) + sum(torch.exp(logits[a, n]) for n in neg)
            else:
                denominator = sum(torch.exp(logits[a, c]) for c in every)
            term = -torch.log(torch.exp(logits[a, p]) / denominator)
            pair_losses.append(term)
            per_anchor.append(term)
        if per_anchor:
            anchor_losses.append(sum(per_anchor) / len(per_anchor))
    if variant == "supcon":
        return sum(anchor_losses) / len(anchor_losses)
    if variant == "sigmoid":
        return sum(anchor_losses) / logits.shape[0]  # every anchor counts
    return sum(pair_losses) / len(pair_losses)


@pytest.mark.parametrize("variant", ["mp_nce", "supcon", "infonce", "sigmoid"])
def test_multi_positive_loss_matches_loop_reference(variant):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 9, generator=g, dtype=torch.float64) * 3
    positives = torch.rand(6, 9, generator=g) < 0.3
    candidates = torch.rand(6, 9, generator=g) < 0.9
    positives[0, 1] = candidates[0, 1] = True  # at least one positive pair
    expected = naive_multi_positive(logits, positives, candidates, variant)
    torch.testing.assert_close(multi_positive_loss(logits, positives, candidates, variant), torch.as_tensor(expected))


def test_mp_nce_differs_from_supcon_with_several_positives():
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0]], dtype=torch.float64)
    positives = torch.tensor([[True, True, False, False]])
    candidates = torch.ones_like(positives)
    assert multi_positive_loss(logits, positives, candidates, "mp_nce") < multi_positive_loss(
        logits, positives, candidates, "supcon"
    )
    with pytest.raises(ValueError, match="variant"):
        multi_positive_loss(logits, positives, candidates, "triplet")


def test_sigmoid_loss_on_the_clip_point_is_siglips_formula():
    image, text = _embeds(6, seed=2)
    t, b = 10.0, -4.0
    z = 2 * torch.eye(6, dtype=torch.float64) - 1  # +1 on the diagonal (pairs), -1 elsewhere
    siglip = -F.logsigmoid(z * (t * image @ text.T + b)).sum() / 6
    scale, offset = torch.tensor([t], dtype=torch.float64), torch.tensor([-b / t], dtype=torch.float64)
    for chunk_size in (0, 2):
        loss = contrastive_objective(image[:, None], text, scale, offset, variant="sigmoid", chunk_size=chunk_size)
        torch.testing.assert_close(loss, siglip, rtol=1e-12, atol=0)


def test_sigmoid_loss_equals_transformers_siglip_model():
    from transformers import SiglipConfig, SiglipModel

    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = SiglipConfig(
        text_config=dict(vocab_size=50, max_position_embeddings=8, bos_token_id=1, eos_token_id=2, **tower),
        vision_config=dict(image_size=16, patch_size=8, **tower),
    )
    torch.manual_seed(0)
    model = SiglipModel(config).double()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(7.0))
        model.logit_bias.fill_(-3.0)
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 50, (5, 8), generator=generator)
    pixel_values = torch.randn(5, 3, 16, 16, generator=generator, dtype=torch.float64)
    out = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)
    # Our parameterisation: t (cos - o) with b = -t o.
    scale = model.logit_scale.exp()
    ours = contrastive_objective(
        out.image_embeds[:, None], out.text_embeds, scale, -model.logit_bias / scale, variant="sigmoid"
    )
    torch.testing.assert_close(ours, out.loss, rtol=1e-12, atol=0)
    # ... and so are the gradients (of the towers and of t and b).
    expected = torch.autograd.grad(out.loss, list(model.parameters()), retain_graph=True)
    got = torch.autograd.grad(ours, list(model.parameters()))
    for name, want, have in zip([n for n, _ in model.named_parameters()], expected, got):
        torch.testing.assert_close(have, want, rtol=1e-9, atol=1e-12, msg=name)


def test_an_mp_nce_anchor_without_negatives_adds_zero_with_a_finite_gradient():
    image, text = _embeds(4, seed=6)
    labels = torch.zeros(4, dtype=torch.long)  # one class: every candidate is a positive
    for chunk_size in (0, 3):
        leaves = [image.clone().requires_grad_(), text.clone().requires_grad_()]
        loss = contrastive_objective(
            leaves[0][:, None], leaves[1], torch.tensor(5.0), labels=labels, variant="mp_nce", chunk_size=chunk_size
        )
        loss.backward()
        assert loss.item() == 0.0
        assert all(torch.equal(leaf.grad, torch.zeros_like(leaf)) for leaf in leaves), chunk_size


# ---------------------------------------------------------------------------------------------------------------
# Two processes (gloo) against one process holding the whole global batch.


def _global_batch():
    image, text = _embeds(7, seed=11)
    labels = torch.tensor([1, -1, 1, 4, -1, 4, 1])
    g = torch.Generator().manual_seed(5)
    mp_logits_inputs = torch.randn(7, 7, generator=g, dtype=torch.float64)
    return image, text, labels, mp_logits_inputs


def _losses(image, text, labels, features, offset=0):
    """The three losses on this process's rows (features: [n_local, D] embeddings for a multi-positive loss)."""
    from hf_unified.losses import gather_with_grad

    scale = torch.tensor(4.0, dtype=torch.float64)
    all_features, global_offset = gather_with_grad(features)
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 2])  # source pair of each global row
    local_groups = groups[global_offset : global_offset + features.shape[0]]
    logits = 3.0 * features @ all_features.T
    rows = torch.arange(global_offset, global_offset + features.shape[0])
    candidates = torch.ones_like(logits, dtype=torch.bool)
    candidates[torch.arange(features.shape[0]), rows] = False
    positives = local_groups[:, None] == groups[None, :]
    return {
        "clip": clip_loss(image, text, scale),
        "unicl": unicl_loss(image, text, labels, scale),
        "mp_nce": multi_positive_loss(logits, positives, candidates, "mp_nce"),
        "supcon": multi_positive_loss(logits, positives, candidates, "supcon"),
    }


def _worker(rank: int, world_size: int, port: int, result_file: str, splits: list[int]) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        image, text, labels, features = _global_batch()
        start = sum(splits[:rank])
        rows = slice(start, start + splits[rank])
        results = {}
        for name in ("clip", "unicl", "mp_nce", "supcon"):
            leaves = [
                image[rows].clone().requires_grad_(),
                text[rows].clone().requires_grad_(),
                features[rows].clone().requires_grad_(),
            ]
            loss = _losses(leaves[0], leaves[1], labels[rows], leaves[2])[name]
            loss.backward()
            # DDP averages gradients and we average the logged loss over ranks.
            value = loss.detach().clone()
            dist.all_reduce(value)
            results[f"{name}/loss"] = np.array(value.item() / world_size)
            for index, leaf in enumerate(leaves):
                grad = torch.zeros_like(leaf) if leaf.grad is None else leaf.grad / world_size
                results[f"{name}/grad{index}"] = grad.numpy()
        np.savez(result_file, **results)
        dist.barrier()  # leave together: gloo aborts a rank whose peer is already gone
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("splits", [[4, 3]])
def test_two_process_losses_equal_one_process(splits, run_gloo_workers):
    image, text, labels, features = _global_batch()
    expected = {}
    for name in ("clip", "unicl", "mp_nce", "supcon"):
        leaves = [image.clone().requires_grad_(), text.clone().requires_grad_(), features.clone().requires_grad_()]
        loss = _losses(leaves[0], leaves[1], labels, leaves[2])[name]
        loss.backward()
        expected[name] = (loss.item(), [torch.zeros_like(leaf) if leaf.grad is None else leaf.grad for leaf in leaves])

    results = run_gloo_workers(_worker, 2, splits)
    by_rank = {
        rank: {
            name: (float(r[f"{name}/loss"]), [torch.from_numpy(r[f"{name}/grad{i}"]) for i in range(3)])
            for name in expected
        }
        for rank, r in enumerate(results)
    }

    for name, (value, grads) in expected.items():
        for rank in range(2):
            got_value, got_grads = by_rank[rank][name]
            assert abs(got_value - value) < 1e-10, name
            start = sum(splits[:rank])
            for got, full in zip(got_grads, grads):
                torch.testing.assert_close(got, full[start : start + splits[rank]], msg=name)
