"""Exact large-batch contrastive learning under gradient accumulation (GradCache; Gao et al., 2021).

A contrastive loss does not split over micro-batches: each sample's negatives are the whole batch. Plain
accumulation (`micro_batch`) therefore trains a `k x per_device x world` batch as `k` losses of `per_device x world`
samples each. `full_batch` trains it as one loss over all of them, with the towers' activations of one micro-batch
in memory at a time (the loss itself holds this rank's `k x per_device` rows against all `k x per_device x world`
columns, as one batch of that size would):

1. **Cache.** Every micro-batch goes through the model without gradient; its embeddings are kept and the random
   state the forward pass starts from (CPU and accelerator generators: dropout, drop-path) is recorded.
2. **Loss, once.** `model.contrastive_loss` runs on all cached embeddings (gathered across ranks with gradient, as
   always) and is back-propagated as far as the embeddings: the gradient of each embedding is cached.
3. **Re-run.** Each micro-batch goes through the model again, with gradient, from its recorded random state, and
   the cached embedding gradients are back-propagated through it (`<embedding, cached gradient>` as surrogate
   loss). Gradient synchronisation between processes happens only in the last one.

Random state and (for BatchNorm) running statistics are put back to what one pass over the micro-batches leaves,
so the step equals, to rounding, the one loss computed over the graphs of `k` forward passes kept in memory; for
models whose layers do not mix samples (every model here except MS-CLIP's BatchNorm stem and branch), that is
one forward pass over the whole batch. open_clip's `--accum-freq` evaluates and back-propagates the whole loss once
per re-run micro-batch (`k` times: the temperature receives `k` times its gradient) and does not restore the random
state; here the loss is computed once and dropout is exact (`benchmarks/large_batch.py` measures both).

The temperatures (`logit_scale`, `logit_offset`) are used by the loss, outside the towers' forward, so their
gradient arrives in step 2, not in the synchronised backward of step 3. Each engine gets it reduced across ranks
exactly once through its own mechanism:

- single process and DDP: parameters are whole tensors, the loss runs on the unwrapped model and its backward
  accumulates the temperatures' gradient locally (DDP ignores a backward that no synchronised forward prepared).
  DDP reduces a parameter only when its gradient hook fires in the synchronised backward, so the last re-run adds
  a zero-valued term `0 * sum(parameter)` for each parameter the loss used; the reducer then averages the gradient
  those parameters hold, once, with all others.
- FSDP2: outside a forward the parameters are shards (DTensors), so the loss runs as a registered FSDP forward
  method of the root module (`sharding.register_forward_methods`), which unshards them; its backward accumulates
  their unsharded gradient, and the root group reduce-scatters it with its other gradients in the last,
  synchronised backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ...losses import text_identity_keys
from .accumulation_modes import FULL_BATCH
from .sharding import gradient_sync, is_fsdp2, register_forward_methods


@dataclass
class RandomState:
    """The torch generators a forward pass draws from: the CPU one and the accelerator's (dropout, drop-path)."""

    cpu: torch.Tensor
    device: torch.device
    device_state: torch.Tensor | None

    @classmethod
    def capture(cls, device: torch.device | str) -> RandomState:
        device = torch.device(device)
        device_state = None if device.type == "cpu" else cls._generators(device).get_rng_state(*cls._index(device))
        return cls(torch.get_rng_state(), device, device_state)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.device_state is not None:
            self._generators(self.device).set_rng_state(self.device_state, *self._index(self.device))

    @staticmethod
    def _generators(device: torch.device):
        return torch.get_device_module(device.type)  # torch.cuda, torch.xpu, torch.mps, ...

    @staticmethod
    def _index(device: torch.device) -> tuple:
        return () if device.type == "mps" else (device,)  # MPS has one device and no index argument


@contextlib.contextmanager
def restored_buffers(module: nn.Module) -> Iterator[None]:
    """Puts `module`'s buffers (BatchNorm running statistics) back as they were when the block ends: for forward
    passes that look ahead and must leave the model as it was."""
    saved = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@dataclass
class CachedMicroBatch:
    """One micro-batch after step 1: its model inputs, its loss metadata, its random state and its embeddings.

    Args:
        inputs (`dict`): keyword arguments of the model's forward (no labels: a forward given labels computes a loss).
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class ids, with `config.use_labels`.
        text_keys (`torch.LongTensor` of shape `(batch_size,)`, *optional*): with `config.mask_duplicate_texts`.
        random_state ([`RandomState`]): the generators' state before the forward pass.
        image_view_embeds (`torch.Tensor` of shape `(batch_size, num_views, projection_dim)`): without gradient.
        text_embeds (`torch.Tensor` of shape `(batch_size, projection_dim)`): without gradient.
    """

    inputs: dict
    labels: torch.Tensor | None
    text_keys: torch.Tensor | None
    random_state: RandomState
    image_view_embeds: torch.Tensor
    text_embeds: torch.Tensor


def _loss_parameters(loss: torch.Tensor, exclude: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The leaf tensors with gradient the autograd graph of `loss` reaches (the temperatures), minus `exclude`."""
    excluded = {id(t) for t in exclude}
    leaves, seen, pending = [], set(), [loss.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad node
        if variable is not None and id(variable) not in excluded:
            leaves.append(variable)
        pending.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def _concat(tensors: list[torch.Tensor | None], name: str) -> torch.Tensor | None:
    present = [t is not None for t in tensors]
    if not any(present):
        return None
    if not all(present):
        raise ValueError(f"every micro-batch of a step must carry {name}, or none: {present.count(False)} lack it")
    return torch.cat(tensors)


class FullBatchStep:
    """`gradient_accumulation_mode: full_batch`: one contrastive loss over the whole `k x per_device x world` batch
    of an optimizer step, one micro-batch's activations at a time (see the module docstring for the three passes).

    Called as `step(model, micro_batches, accelerator) -> (loss, loss_terms)` like every step strategy:
    `micro_batches` are the `gradient_accumulation_steps` model-input dicts of this rank (on the device; `labels`
    included with `config.use_labels`), `model` the prepared (DDP, FSDP2 or plain) model. Gradients are accumulated
    into the parameters, synchronised between processes on the last re-run only; the detached loss of the step (this
    rank's share, as `forward(..., return_loss=True).loss`) and its terms by domain pair (as `.loss_terms`, of the
    same one loss) are returned. Clipping and the optimizer step stay with the caller.
    """

    name = FULL_BATCH
    deepspeed_unsupported = (
        "it counts backward passes as its own accumulation steps, and ZeRO-3 partitions the temperatures outside "
        "forward"
    )

    def __call__(self, model: nn.Module, micro_batches: list[dict], accelerator) -> tuple[torch.Tensor, torch.Tensor]:
        if not micro_batches:
            raise ValueError("full_batch accumulation needs at least one micro-batch per step, got none")
        if getattr(accelerator, "gradient_accumulation_steps", 1) != 1:
            raise ValueError(
                f"the Accelerator was built with gradient_accumulation_steps={accelerator.gradient_accumulation_steps}"
                ": the step strategy does the accumulation, so accelerator.backward must not also divide the loss; "
                "build the Accelerator without gradient_accumulation_steps"
            )
        if is_fsdp2(model):
            register_forward_methods(model)
        unwrapped = accelerator.unwrap_model(model)
        config = unwrapped.config

        # 1. Cache: embeddings and random state of every micro-batch; whatever the look-ahead changes in the buffers
        # (BatchNorm running statistics) is put back, so that step 3 updates them as often as one pass would.
        cache = []
        with restored_buffers(unwrapped), torch.no_grad(), gradient_sync(model, accelerator, enabled=False):
            for micro_batch in micro_batches:
                cache.append(self._embed(model, micro_batch, config, accelerator.device))
        after_step = RandomState.capture(accelerator.device)

        # 2. The loss over the whole batch, back-propagated as far as the embeddings (and into the temperatures).
        image_view_embeds = torch.cat([c.image_view_embeds for c in cache]).requires_grad_()
        text_embeds = torch.cat([c.text_embeds for c in cache]).requires_grad_()
        labels = _concat([c.labels for c in cache], "labels")
        text_keys = _concat([c.text_keys for c in cache], "text keys")
        with gradient_sync(model, accelerator, enabled=False):
            with accelerator.autocast():
                loss, loss_terms = unwrapped.contrastive_loss(
                    image_view_embeds, text_embeds, labels, text_keys, return_terms=True
                )
            # Whole-tensor engines: the parameters the loss used must be touched by the synchronised backward.
            touched = [] if is_fsdp2(model) else _loss_parameters(loss, (image_view_embeds, text_embeds))
            accelerator.backward(loss)  # applies the fp16 loss scale once; the cached gradients carry it on
        sizes = [c.text_embeds.shape[0] for c in cache]
        view_grads = image_view_embeds.grad.split(sizes)
        text_grads = text_embeds.grad.split(sizes)
        del image_view_embeds, text_embeds

        # 3. Re-run each micro-batch from its random state and back-propagate its cached embedding gradients.
        for index, (cached, view_grad, text_grad) in enumerate(zip(cache, view_grads, text_grads)):
            last = index == len(cache) - 1
            cached.random_state.restore()
            with gradient_sync(model, accelerator, enabled=last):
                outputs = model(**cached.inputs)
                surrogate = (outputs.image_view_embeds * view_grad).sum() + (outputs.text_embeds * text_grad).sum()
                if last:
                    surrogate = surrogate + sum(0 * parameter.sum() for parameter in touched)
                surrogate.backward()
            cache[index] = None  # free this micro-batch's inputs and embeddings
        after_step.restore()
        return loss.detach(), loss_terms

    @staticmethod
    def _embed(model: nn.Module, micro_batch: dict, config, device: torch.device) -> CachedMicroBatch:
        inputs = dict(micro_batch)
        labels = inputs.pop("labels", None)
        text_keys = None
        if config.mask_duplicate_texts:
            text_keys = text_identity_keys(inputs["input_ids"], inputs.get("attention_mask"))
        random_state = RandomState.capture(device)
        outputs = model(**inputs)
        return CachedMicroBatch(
            inputs,
            labels,
            text_keys,
            random_state,
            outputs.image_view_embeds.detach(),
            outputs.text_embeds.detach(),
        )


__all__ = ["CachedMicroBatch", "FullBatchStep", "RandomState", "restored_buffers"]
