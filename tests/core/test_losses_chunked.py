"""The objective in blocks of anchor rows (`contrastive_objective(..., chunk_size=K)`): the dense path's value and
gradients for every variant and combination, no `anchors x candidates` tensor ever built, any precision, through the
model's config. (Two processes in blocks equal one dense process: `test_objective.py`.)"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from hf_unified import losses
from hf_unified.losses import MULTI_POSITIVE_VARIANTS, contrastive_objective

LABELS = [2, -1, 2, 0, -1, 0, 2]
KEYS = [7, 7, 3, 5, 5, 9, 3]  # items 0/1 and 3/4 have identical texts, and 2/6 (which share a label)


def _inputs(n: int, views: int, dim: int = 8, seed: int = 0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, views, dim, generator=generator, dtype=dtype), dim=-1)
    text = F.normalize(torch.randn(n, dim, generator=generator, dtype=dtype), dim=-1)
    return image, text


def _similarity(kind: str, dtype=torch.float64):
    if kind == "per-pair":
        return torch.tensor([3.0, 5.0, 2.0], dtype=dtype), torch.tensor([0.4, -0.1, 0.3], dtype=dtype)
    return torch.tensor([4.0], dtype=dtype), torch.tensor([0.3], dtype=dtype) if kind == "one+offset" else None


def _value_and_gradients(image, text, scale, offset, **kwargs) -> list[torch.Tensor]:
    """The loss and its gradients with respect to the embeddings, the scale and the offset."""
    leaves = [image.clone().requires_grad_(), text.clone().requires_grad_(), scale.clone().requires_grad_()]
    if offset is not None:
        leaves.append(offset.clone().requires_grad_())
    loss = contrastive_objective(leaves[0], leaves[1], leaves[2], leaves[3] if offset is not None else None, **kwargs)
    return [loss.detach(), *torch.autograd.grad(loss, leaves)]


def _assert_same(chunked: list[torch.Tensor], dense: list[torch.Tensor], message: str) -> None:
    for name, got, expected in zip(("loss", "image", "text", "scale", "offset"), chunked, dense):
        # 1e-9 relative; the absolute floor only serves gradients that are zero in exact arithmetic (a shared
        # offset under a softmax), which both paths give as rounding noise.
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-13, msg=f"{message}: {name}")


@pytest.mark.parametrize("variant", MULTI_POSITIVE_VARIANTS)
def test_chunked_equals_dense_for_every_combination(variant):
    """Views x labels x duplicate texts x one space x similarity, in uneven blocks of 3 rows, float64."""
    # One shared offset changes no softmax (test_objective.py); the sigmoid loss is where it counts.
    similarities = ("one", "one+offset", "per-pair") if variant == "sigmoid" else ("one", "per-pair")
    for views, labels, keys, intra, kind in itertools.product(
        (1, 2), (None, LABELS), (None, KEYS), (False, True), similarities
    ):
        image, text = _inputs(7, views, seed=views + 2 * intra)
        scale, offset = _similarity(kind)
        kwargs = dict(
            labels=None if labels is None else torch.tensor(labels),
            text_keys=None if keys is None else torch.tensor(keys),
            intra_domain_pairs=intra,
            variant=variant,
        )
        dense = _value_and_gradients(image, text, scale, offset, chunk_size=0, **kwargs)
        chunked = _value_and_gradients(image, text, scale, offset, chunk_size=3, **kwargs)
        _assert_same(chunked, dense, f"views={views} labels={labels} keys={keys} intra={intra} similarity={kind}")


@pytest.mark.parametrize("chunk_size", [1, 5, 1000])
def test_any_block_size_gives_the_dense_loss(chunk_size):
    """One row a block, blocks that do not divide the rows, and one block holding every row."""
    image, text = _inputs(6, 2, seed=3)
    scale, offset = _similarity("per-pair")
    kwargs = dict(labels=torch.tensor(LABELS[:6]), text_keys=torch.tensor(KEYS[:6]), intra_domain_pairs=True)
    for variant in ("mp_nce", "sigmoid"):
        dense = _value_and_gradients(image, text, scale, offset, variant=variant, chunk_size=0, **kwargs)
        chunked = _value_and_gradients(image, text, scale, offset, variant=variant, chunk_size=chunk_size, **kwargs)
        _assert_same(chunked, dense, f"{variant}, blocks of {chunk_size}")


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an operation returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def _largest_tensor(chunk_size, variant="mp_nce"):
    """UniCLIP with labels and duplicate texts: 24 items x (2 views + 1 text), 4-d embeddings. Image anchors: 48
    views against 72 candidates (3456 logits); the largest O(N x dim) tensor has 72 x 4 = 288 elements."""
    image, text = _inputs(24, 2, dim=4, seed=5)
    image.requires_grad_()
    text.requires_grad_()
    scale, offset = _similarity("per-pair")
    scale.requires_grad_()
    labels, keys = torch.arange(24) % 5 - 1, torch.arange(24) % 7
    with LargestTensor() as probe:
        loss = contrastive_objective(
            image, text, scale, offset, labels, keys, intra_domain_pairs=True, variant=variant, chunk_size=chunk_size
        )
        loss.backward()
    return probe.largest


@pytest.mark.parametrize("variant", ["mp_nce", "sigmoid"])
def test_no_anchors_by_candidates_tensor_is_built_in_blocks(variant):
    anchors_by_candidates = 48 * 72
    assert _largest_tensor(0, variant) >= anchors_by_candidates  # the probe sees the dense matrices
    # Blocks of 2 rows: 2 x 72 = 144 logits; the embeddings and their gradients (72 x 4) are the largest tensors.
    assert _largest_tensor(2, variant) <= 72 * 4


def test_the_automatic_block_size_chunks_large_sides(monkeypatch):
    cpu = torch.device("cpu")
    assert losses._rows_per_block(2048, 2048, None, cpu) is None  # 2^22 logits: dense
    assert losses._rows_per_block(4096, 4096, None, cpu) == 256  # blocks of 2^20 logits
    assert losses._rows_per_block(1024, 65536, None, cpu) == 64  # ... of at least 64 rows
    assert losses._rows_per_block(4096, 4096, 100, cpu) == 100 and losses._rows_per_block(8, 8, 0, cpu) is None
    # The default at work: blocks where the side is large, dense where it is not.
    monkeypatch.setattr(losses, "AUTO_BLOCK_LOGITS_CPU", 4 * 72)
    monkeypatch.setattr(losses, "MIN_ROWS_PER_BLOCK", 2)
    monkeypatch.setattr(losses, "AUTO_DENSE_LOGITS_CPU", 4 * 72)
    assert _largest_tensor(None) <= 72 * 4  # blocks of 4 rows on both sides (48 and 24 anchors x 72 candidates)
    monkeypatch.setattr(losses, "AUTO_DENSE_LOGITS_CPU", 48 * 72)
    assert _largest_tensor(None) >= 48 * 72  # small enough to stay dense


def test_low_precision_embeddings_and_autocast_are_scored_in_float32():
    image, text = _inputs(8, 2, seed=7, dtype=torch.float32)
    scale, offset = _similarity("per-pair", dtype=torch.float32)
    kwargs = dict(intra_domain_pairs=True, variant="mp_nce")
    reference = _value_and_gradients(image, text, scale, offset, chunk_size=0, **kwargs)
    low = _value_and_gradients(image.bfloat16(), text.bfloat16(), scale, offset, chunk_size=3, **kwargs)
    assert [g.dtype for g in low[1:3]] == [torch.bfloat16, torch.bfloat16]  # gradients in the inputs' dtype
    torch.testing.assert_close(low[0], reference[0], rtol=2e-2, atol=0)  # only the inputs' rounding differs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = _value_and_gradients(image, text, scale, offset, chunk_size=3, **kwargs)
    for got, expected in zip(autocast, reference):  # autocast leaves the blocks in float32
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad", [-1, True, 2.5])
def test_a_bad_chunk_size_is_named(bad):
    image, text = _inputs(3, 1)
    with pytest.raises(ValueError, match="chunk_size must be None"):
        contrastive_objective(image, text, torch.tensor([1.0]), chunk_size=bad)


def test_the_model_scores_its_loss_in_blocks_of_loss_chunk_size():
    from tiny_models import batch, tiny_model

    from hf_unified.configuration_contrastive import OBJECTIVE_PRESETS

    inputs = batch(6, views=2, seed=2, labels=[0, 1, 0, 2, -1, 1])
    results = []
    for chunk_size in (0, 2):
        model = tiny_model("uniclip", seed=1, loss_chunk_size=chunk_size, **OBJECTIVE_PRESETS["uniclip+unicl"])
        model.train()
        loss = model(**inputs, return_loss=True).loss
        loss.backward()
        results.append((loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}))
    (dense_loss, dense_grads), (chunked_loss, chunked_grads) = results
    torch.testing.assert_close(chunked_loss, dense_loss)
    assert chunked_grads.keys() == dense_grads.keys() and "logit_offset" in dense_grads
    for name, grad in dense_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
